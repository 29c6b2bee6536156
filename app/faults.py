"""Fault points: TEST-ONLY hooks that let the reliability tests pause, kill or break a worker at
an exact step (mid-unit training, the finishing step, the bulk score write, an artifact write).

Inert unless ``MEMAUDIT_FAULT_DIR`` is set, which production never does. A test arms a point by
writing ``<fault_dir>/<name>.arm`` holding an action and an optional ``after=N`` (let N passes
through first). Each time the point acts it appends this process's pid to ``<name>.reached``, which
the test waits for. Actions:

- ``pause``: hold here until the arm file is removed (the test SIGKILLs the worker meanwhile);
- ``kill``: SIGKILL this very process (a unit that keeps killing its worker);
- ``enospc``: raise ``OSError(ENOSPC)``, as a full disk would;
- ``crash``: raise ``RuntimeError`` (a bug, or a corrupt input that fails the same way every time).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from app.settings import get_settings

POINTS = ("unit_epoch", "finish", "score_write_provisional", "score_write_final", "artifact_write")
PAUSE_POLL_S = 0.05


def fault_point(name: str) -> None:
    """Act as armed for ``name``; a no-op (one attribute read) when fault injection is off."""
    directory = get_settings().fault_dir
    if directory is None:
        return
    armed = _armed_action(directory, name)
    if armed is None:
        return
    with (directory / f"{name}.reached").open("a") as reached:
        reached.write(f"{os.getpid()}\n")
    _act(directory / f"{name}.arm", armed, name)


def _armed_action(directory: Path, name: str) -> str | None:
    try:
        words = (directory / f"{name}.arm").read_text().split()
    except FileNotFoundError:
        return None
    if not words:
        return None
    after = int(words[1].removeprefix("after=")) if len(words) > 1 else 0
    passes = directory / f"{name}.passes"
    with passes.open("a") as log:
        log.write("x")
    return words[0] if passes.stat().st_size > after else None


def _act(arm_file: Path, action: str, name: str) -> None:
    if action == "pause":
        while arm_file.exists():
            time.sleep(PAUSE_POLL_S)
    elif action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (fault point {name})")
    elif action == "crash":
        raise RuntimeError(f"injected crash at fault point {name}")
    else:
        raise ValueError(f"fault point {name}: unknown action {action!r}")
