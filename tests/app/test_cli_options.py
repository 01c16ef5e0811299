"""One default per shared option across the ``lookalike`` commands: ``--device`` (auto) and ``--indexes``
($LOOKALIKE_INDEXES, else ./indexes), the demo included."""

from __future__ import annotations

import argparse

from app.cli import build_parser
from training.settings import DEFAULT_DEVICE, setting


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, its parser) of every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, (*prefix, name))


def _defaults(parser: argparse.ArgumentParser, dest: str) -> dict[str, object]:
    return {" ".join(words): action.default for words, sub in _commands(parser)
            for action in sub._actions if action.dest == dest}


def test_every_command_defaults_to_the_same_device():
    devices = _defaults(build_parser(), "device")
    devices["train"] = setting("device").default  # train's flags leave no default behind (what was typed counts)
    assert {"index build", "search", "eval", "train"} <= set(devices)
    assert set(devices.values()) == {DEFAULT_DEVICE} == {"auto"}, devices


def test_every_command_takes_the_indexes_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOKALIKE_INDEXES", str(tmp_path))
    roots = _defaults(build_parser(), "indexes")
    assert {"demo", "app", "index build", "search"} <= set(roots)
    assert set(roots.values()) == {str(tmp_path)}, roots
