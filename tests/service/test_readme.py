"""README's quick start: exactly two commands, the second being what .ci/run runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _quick_start_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)\n```", section, flags=re.DOTALL)
    return [block.strip() for block in blocks if block.strip().startswith("python3 -m venv")]


def test_two_commands_install_and_demo_then_install_and_test() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    demo, test = commands
    assert "pip install -e ." in demo and demo.endswith("memaudit demo")
    assert test.endswith(".venv/bin/python -m tests")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    readme_test = _quick_start_commands()[1]
    ci_line = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    normalised = ci_line.replace(" -q", "").split(" -p no:cacheprovider")[0]
    assert normalised == readme_test
