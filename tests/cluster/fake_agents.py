"""In-process fake node agents on loopback: real gRPC servers, canned status replies.

:class:`FakeAgents` serves ``GetCompleteNodeStatus`` on many loopback ports of one
gRPC server (one port = one node address), each answering a node status that lists
its models, or hanging until the agents stop (a node that accepts calls and never
answers). For health sweeps and benchmarks of many nodes without many processes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import grpc

from olol.rpc import node_pb2, node_pb2_grpc

GB = 1_000_000_000


def node_status(models: Iterable[str], *, loaded: Iterable[str] = (), parallel: int = 4,
                disk_total: int = 500 * GB, memory: int = 64 * GB) -> node_pb2.NodeStatus:
    """A healthy node's status reply listing ``models`` (``loaded`` in memory)."""
    models, loaded = list(models), set(loaded)
    status = node_pb2.NodeStatus(hostname="fake", timestamp=1.0)
    status.cpu.CopyFrom(node_pb2.CpuStatus(logical_cores=16, total_percent=10.0))
    status.memory.CopyFrom(node_pb2.MemoryStatus(total_bytes=memory, available_bytes=memory))
    status.disk.CopyFrom(node_pb2.DiskStatus(total_bytes=disk_total,
                                             free_bytes=disk_total - 2 * GB * len(models)))
    status.agent.CopyFrom(node_pb2.AgentStatus(version="fake", parallel=parallel))
    status.ollama.reachable = True
    status.ollama.version = "0.9.0"
    for name in models:
        details = node_pb2.ModelDetails(family="llama", parameter_size="1B",
                                        quantization_level="Q4_K_M")
        status.ollama.models.append(node_pb2.LocalModel(
            name=name, model=name, size=2 * GB, digest=f"sha256:{name}", details=details))
        if name in loaded:
            status.ollama.loaded.append(node_pb2.LoadedModel(
                name=name, model=name, size=2 * GB, size_vram=2 * GB, details=details))
    return status


class _Servicer(node_pb2_grpc.NodeAgentServicer):
    def __init__(self, status: node_pb2.NodeStatus | None, release: threading.Event,
                 hang_s: float) -> None:
        self._status, self._release, self._hang_s = status, release, hang_s

    def GetCompleteNodeStatus(self, request, context):
        if self._status is None:  # a hung node: answers only once the agents stop
            self._release.wait(self._hang_s)
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake agent stopped")
        return self._status


class FakeAgents:
    """``count`` fake agents on loopback ports of one gRPC server.

    :param status: the reply every agent gives (None: every agent hangs).
    :param threads: the server's worker threads (a hung call holds one).
    :param hang_s: how long a hung call waits at most before failing.
    """

    def __init__(self, count: int, status: node_pb2.NodeStatus | None = None, *,
                 threads: int = 16, hang_s: float = 30.0) -> None:
        self._release = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fake-agents")
        self._server = grpc.server(self._pool, maximum_concurrent_rpcs=None)
        node_pb2_grpc.add_NodeAgentServicer_to_server(
            _Servicer(status, self._release, hang_s), self._server)
        self.addresses = []
        for _ in range(count):
            port = self._server.add_insecure_port("127.0.0.1:0")
            if port == 0:
                raise OSError("could not bind a loopback port")
            self.addresses.append(f"127.0.0.1:{port}")
        self._server.start()

    def stop(self) -> None:
        self._release.set()
        self._server.stop(0).wait(5.0)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> FakeAgents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
