"""The README's command-line table against the real ``obque COMMAND --help``: every flag
a command has is in its row, and every flag in a row is one the command has."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytest.register_assert_rewrite("broker_proc")

from broker_proc import OBQUE  # noqa: E402

README = Path(__file__).resolve().parents[2] / "README.md"
COMMANDS = ("broker", "init", "push", "work", "inspect", "sweep", "stats", "dead", "demo")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b")


def table_rows() -> dict[str, str]:
    """The first cell of each row of the Command line table, by command."""
    section = README.read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `obque (\w+)(.*?)` \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def help_flags(command: str) -> tuple[set[str], dict[str, str]]:
    """The flags ``obque COMMAND --help`` lists, and each short alias's long flag."""
    done = subprocess.run(
        [OBQUE, command, "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    options = done.stdout.split("Options:", 1)[1]
    aliases = dict(re.findall(r"^\s+(-[a-z]), (--[a-z-]+)", options, re.M))
    return set(FLAG.findall(options)) - {"-h", "--help"}, aliases


def test_the_table_has_a_row_for_every_command() -> None:
    assert sorted(table_rows()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_the_table_row_lists_exactly_the_commands_flags(command: str) -> None:
    cell = table_rows()[command]
    in_table = set(FLAG.findall(cell))
    in_help, aliases = help_flags(command)
    # Every long flag the command has is in its row (or its short alias is).
    covered = in_table | {aliases[f] for f in in_table if f in aliases}
    long_missing = {f for f in in_help if f.startswith("--")} - covered
    assert not long_missing, f"README row of `obque {command}` lacks {sorted(long_missing)}"
    invented = in_table - in_help
    assert not invented, f"README row of `obque {command}` names {sorted(invented)}, not in --help"
