"""Every CLI command has help text with an example and a README section (as sqlite-utils' test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from detune.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(name parts, command) of every leaf command (typer's groups duck-type click's)."""
    out = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            out += commands(command, (*prefix, name))
        else:
            out.append(((*prefix, name), command))
    return out


COMMANDS = commands(typer.main.get_command(app))


def test_the_cli_has_its_commands() -> None:
    assert {" ".join(name) for name, _ in COMMANDS} == {
        "train", "tune", "lr-find", "report", "schedule", "ui", "data make-shapes", "data check"}


@pytest.mark.parametrize("name, command", COMMANDS, ids=[" ".join(n) for n, _ in COMMANDS])
def test_command_has_help_with_an_example(name: tuple[str, ...], command: Any) -> None:
    assert command.help and len(command.help.strip().splitlines()[0]) > 20
    result = CliRunner().invoke(app, [*name, "--help"])
    assert result.exit_code == 0 and "Example" in result.stdout
    assert f"detune {' '.join(name)} " in command.help  # the example runs this very command


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS], ids=[" ".join(n) for n, _ in COMMANDS])
def test_command_has_a_readme_section(name: tuple[str, ...]) -> None:
    heading = re.compile(rf"^#+ .*`detune {re.escape(' '.join(name))}`", re.MULTILINE)
    assert heading.search(README), f"README.md has no section headed `detune {' '.join(name)}`"
