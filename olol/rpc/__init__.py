"""The node contract: generated gRPC code (``node_pb2``, ``node_pb2_grpc``), its
codegen (``python -m olol.rpc.codegen``) and the coordinator-side client
(:mod:`olol.rpc.client`: ``NodeClient``, ``NodeError``, ``NodeStream``, ``TLSConfig``).

The client is imported lazily so that importing the generated modules alone
stays cheap (the agent only needs those).
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeClient", "NodeError", "NodeStream", "TLSConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from olol.rpc import client

        return getattr(client, name)
    raise AttributeError(f"module 'olol.rpc' has no attribute {name!r}")
