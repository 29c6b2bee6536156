"""Headless Chromium (Debian's `chromium`) driven from the command line, for the report tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import running_in_ci

# Quiet, hermetic flags: no network fetches of its own, no first-run UI, a fresh profile per call.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var charts = document.querySelectorAll("svg.chart").length;
  document.body.setAttribute("data-probe",
    "images=" + images.length + " loaded=" + loaded + " charts=" + charts);
});
</script>"""


def chromium_or_skip() -> str:
    """The browser binary; without it the test skips locally and fails in CI (.ci/run installs it)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = "chromium is not installed (apt-get install chromium)"
        if running_in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return binary


def run_chromium(binary: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [binary, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra,
               page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    """Messages the page wrote to the console (errors, CSP violations, failed loads)."""
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


def probe_copy(html: str, destination: Path) -> Path:
    """The page plus a tiny script that records, after load, how many images decoded.

    The report's own CSP forbids scripts, so the copy allows inline scripts; nothing else changes.
    """
    instrumented = html.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    assert instrumented != html, "the report lost its Content-Security-Policy"
    destination.write_text(instrumented.replace("</body>", PROBE + "</body>", 1))
    return destination


def probe_result(dom: str) -> dict[str, int]:
    match = re.search(r'data-probe="([^"]*)"', dom)
    assert match, "the page never fired its load event"
    return {key: int(value) for key, value in (item.split("=") for item in match.group(1).split())}
