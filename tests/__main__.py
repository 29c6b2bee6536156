"""The whole test command: lint, type-check, then the test suite.

`python -m tests` is what README.md and .ci/run call. Extra arguments go to pytest.
"""

from __future__ import annotations

import subprocess
import sys


def _run(step: str, command: list[str]) -> int:
    print(f"==> {step}: {' '.join(command)}", flush=True)
    return subprocess.call(command)


def main(pytest_args: list[str]) -> int:
    python = sys.executable
    steps = [
        ("ruff", [python, "-m", "ruff", "check", "."]),
        ("mypy", [python, "-m", "mypy"]),
        ("pytest", [python, "-m", "pytest", *pytest_args]),
    ]
    for step, command in steps:
        code = _run(step, command)
        if code != 0:
            print(f"==> {step} failed with exit code {code}", flush=True)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
