"""Regenerate the node contract's Python code from ``protos/``.

``python -m olol.rpc.codegen`` writes ``node_pb2.py`` and ``node_pb2_grpc.py``
into ``olol/rpc/``; ``--check`` generates into a temporary folder and exits 1
when the committed files differ (stale or hand-edited).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILE = "olol/node/v1/node.proto"
GENERATED = ("node_pb2.py", "node_pb2_grpc.py")

# protoc writes "from olol.node.v1 import node_pb2 as ..." because the .proto
# lives under olol/node/v1/; the generated module lives in olol/rpc/ instead.
_IMPORT_RE = re.compile(r"^from olol\.node\.v1 import node_pb2 as ", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into ``out_dir`` and return the files written there."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory(prefix="olol-protoc-") as tmp:
        include = Path(protoc.__file__).resolve().parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_ROOT / PROTO_FILE),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit status {rc}")
        produced = Path(tmp) / Path(PROTO_FILE).parent
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (produced / name).read_text()
            text = _IMPORT_RE.sub("from . import node_pb2 as ", text)
            target = out_dir / name
            target.write_text(text)
            written.append(target)
        return written


# Lines that name the generator's own version (grpcio-tools stamps its version, protoc
# the protobuf version it targets): they change with every patch release of the tools
# that a fresh install picks up, not with the contract.
_VERSION_LINE_RE = re.compile(
    r"^(GRPC_GENERATED_VERSION = .*|# Protobuf Python Version: .*|    \d+,|    '',)$",
    re.MULTILINE)


def _contract(text: str) -> str:
    """``text`` without the generator's version stamps."""
    return _VERSION_LINE_RE.sub("", text)


def check(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Return the names of committed generated files that differ from a fresh run
    (ignoring the version stamps of the tools that generated them)."""
    with tempfile.TemporaryDirectory(prefix="olol-codegen-check-") as tmp:
        stale = []
        for fresh in generate(Path(tmp)):
            committed = package_dir / fresh.name
            if not committed.exists() or _contract(committed.read_text()) != _contract(
                    fresh.read_text()):
                stale.append(fresh.name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m olol.rpc.codegen", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed files are stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        if stale:
            print("stale generated files: " + ", ".join(stale), file=sys.stderr)
            print("run: python -m olol.rpc.codegen", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    for path in generate(PACKAGE_DIR):
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
