"""``python -m babelclip`` as a user meets it: every command's --help, every option explained."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ("demo", "info", "fetch", "push", "convert", "card")


def _help(*args) -> str:
    out = subprocess.run([sys.executable, "-m", "babelclip", *args, "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return " ".join(out.stdout.split())


def test_top_level_help_lists_every_command():
    text = _help()
    for command in COMMANDS:
        assert command in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_is_explained(command):
    import argparse

    from babelclip.__main__ import build_parser

    text = _help(command)
    assert f"usage: python -m babelclip {command}" in text
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.option_strings and action.option_strings != ["-h", "--help"]:
            assert action.help and action.option_strings[-1] in text, f"{command} {action.option_strings}"
