"""Every command and every option of ``olol`` has help, and an option's help shows its
default (issue 13: ``olol up --help`` had no description and no defaults)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from olol.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: str = "olol") -> Iterator[
        tuple[str, argparse.ArgumentParser, str | None]]:
    """``(command path, its parser, the help its parent lists it with)``, depth first."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        listed = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            yield f"{path} {name}", sub, listed.get(name)
            yield from _commands(sub, f"{path} {name}")


def _default_shown(action: argparse.Action) -> bool:
    default = action.default
    if default is None or default is False or default == [] or default is argparse.SUPPRESS:
        return True
    text = (action.help or "").lower()
    if "default" not in text:
        return False
    if isinstance(default, bool):
        return True  # --x/--no-x: "default on"
    shown = default if isinstance(default, str) else format(default, "g") \
        if isinstance(default, float) else str(default)
    if isinstance(default, tuple):  # a parsed HOST:PORT
        shown = ":".join(str(part) for part in default)
    return shown.lower() in text


def _problems() -> list[str]:
    parser = build_parser()
    problems = []
    for path, sub, listed in [("olol", parser, parser.description), *_commands(parser)]:
        if not (listed or "").strip():
            problems.append(f"{path}: no help line in its parent's list")
        if not (sub.description or "").strip():
            problems.append(f"{path}: no description (the top of its --help)")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.help is argparse.SUPPRESS:
                continue  # secrets: their flag is hidden on purpose
            name = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip():
                problems.append(f"{path} {name}: no help")
            elif action.option_strings and not _default_shown(action):
                problems.append(f"{path} {name}: help does not show its default "
                                f"{action.default!r}")
    return problems


def test_every_command_and_option_has_help_with_its_default():
    problems = _problems()
    assert not problems, "\n".join(problems)


def test_the_walk_sees_every_command_and_can_fail():
    parser = build_parser()
    paths = {path for path, _, _ in _commands(parser)}
    for path in ("olol up", "olol proxy", "olol models pull", "olol jobs wait",
                 "olol maintenance run", "olol node status", "olol db dump", "olol sim"):
        assert path in paths
    bare = argparse.ArgumentParser(prog="x")
    bare.add_argument("--depth", type=int, default=3)
    action = bare._actions[-1]
    assert not _default_shown(action)
    action.help = "how deep (default 3)"
    assert _default_shown(action)
