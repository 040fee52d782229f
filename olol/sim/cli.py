"""``olol sim``: run the Ollama-API simulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

from olol.sim.simulator import DEFAULT_MODELS, SimConfig, Simulator
from olol.sim.spec import SpecError, parse_models_spec, parse_size

log = logging.getLogger(__name__)

RET_OK = 0
RET_BAD_CONFIG = 2
RET_BIND = 3

_SPEC_HELP = """\
models SPEC: comma-separated NAME[:TAG][OPTIONS]; OPTIONS is a bracketed,
comma-separated list of KEY=VALUE or FLAG:
  size=1.3G   bytes on disk (K/M/G/T suffixes)   load=S   load time (s)
  ttft=S      time to first token (s)            tps=N    tokens per second
  dim=N       embedding dimension                ctx=N    context length
  family=F    params=1.2B    quant=Q4_K_M
  flags: embed (embedding model), nothink, notools
example: llama3.2:1b[size=1.3G,load=2,ttft=0.05,tps=40],nomic-embed-text[embed,dim=768]
"""


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _non_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
        return value

    return parse


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except (SpecError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a size like 4G, got {text!r}") from None


def _rate(text: str) -> float:
    """Bytes per second: a number, or a size with a suffix like the other options (200M)."""
    try:
        value = float(text)
    except ValueError:
        try:
            value = float(parse_size(text))
        except (SpecError, ValueError):
            raise argparse.ArgumentTypeError(
                f"expected bytes per second like 200M or 1.5e8, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sim", help="run an Ollama-API simulator (no GPU needed)",
        description="Serve an Ollama-compatible API with simulated models.",
        epilog=_SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 11434),
                   metavar="HOST:PORT", help="address to bind (default 127.0.0.1:11434)")
    p.add_argument("--models", default=DEFAULT_MODELS, metavar="SPEC",
                   help=f"installed models (default {DEFAULT_MODELS!r}; grammar below)")
    p.add_argument("--ttft", type=_non_negative(float), default=0.0, metavar="S",
                   help="seconds to the first token (default 0)")
    p.add_argument("--tokens-per-second", type=_non_negative(float), default=0.0, metavar="N",
                   help="generation speed, 0 = instant (default 0)")
    p.add_argument("--load-time", type=_non_negative(float), default=0.0, metavar="S",
                   help="seconds a model load takes (default 0)")
    p.add_argument("--parallel", type=_non_negative(int), default=4, metavar="N",
                   help="request slots per loaded model (default 4)")
    p.add_argument("--max-loaded", type=_non_negative(int), default=3, metavar="N",
                   help="models loaded at once (default 3)")
    p.add_argument("--max-queue", type=_non_negative(int), default=512, metavar="N",
                   help="waiting requests before 503 (default 512)")
    p.add_argument("--pull-speed", type=_rate, default=0.0, metavar="BPS",
                   help="pull/push speed in bytes per second (K/M/G suffixes), "
                        "0 = instant (default 0)")
    p.add_argument("--disk-bytes", type=_size, default=None, metavar="BYTES",
                   help="simulated disk size (K/M/G/T suffixes); pulls that do not fit fail "
                        "(default unlimited)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        models=parse_models_spec(args.models), ttft=args.ttft,
        tokens_per_second=args.tokens_per_second, load_time=args.load_time,
        parallel=args.parallel, max_loaded=args.max_loaded, max_queue=args.max_queue,
        pull_bytes_per_second=args.pull_speed,
        disk_bytes=getattr(args, "disk_bytes", None))


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns an exit status."""
    try:
        config = build_config(args)
        config.validate()
    except (SpecError, ValueError) as exc:
        log.error("bad configuration: %s", exc)
        print(f"olol sim: {exc}", flush=True)
        return RET_BAD_CONFIG
    host, port = args.listen
    stop = stop or threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()  # only set a flag in the handler

    # Handlers first: a signal that arrives as soon as the port answers must still
    # stop the simulator cleanly.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        sim = Simulator(config, host=host, port=port).start()
    except OSError as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"olol sim: cannot listen on {host}:{port}: {exc}", flush=True)
        return RET_BIND
    print(f"olol sim listening on {sim.url} "
          f"({', '.join(s.name for s in config.models) or 'no models'})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("simulator stopped")
    return RET_OK
