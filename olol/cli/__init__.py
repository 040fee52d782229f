"""The ``olol`` command line.

Each area of the product owns its subcommands: a module listed in
``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its parsers and
sets ``func`` (called with the parsed arguments, returning an exit status).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from olol import __version__

COMMAND_MODULES = [
    "olol.store.cli",
    "olol.sim.cli",
    "olol.agent.cli",
    "olol.cli.proxy",
    "olol.cli.nodes",
    "olol.cli.keys",
    "olol.cli.certs",
    "olol.cli.models",
    "olol.cli.jobs",
    "olol.cli.config",
    "olol.cli.stats",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olol",
        description="One Ollama-compatible endpoint in front of a fleet of Ollama hosts.",
    )
    parser.add_argument("--version", action="version", version=f"olol {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (default INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    describe(parser)
    return parser


def describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its help line as one, so that each
    ``olol ... --help`` opens with what the command does."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        listed = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            line = (listed.get(name) or "").strip()
            if not sub.description and line and line is not argparse.SUPPRESS:
                sub.description = line[0].upper() + line[1:] + ("" if line.endswith(".")
                                                                 else ".")
            describe(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # APScheduler logs every job run at INFO; olol reports job failures itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        # one line; on a terminal it starts after the echoed ^C
        print(("\n" if sys.stderr.isatty() else "") + "olol: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (olol db dump | head): stop quietly, and keep Python's
        # own flush at exit from failing again on the closed pipe
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
