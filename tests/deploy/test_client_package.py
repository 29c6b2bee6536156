"""memaudit-client installs on its own: one top-level package, httpx only, no torch, no server code."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIENT_PROJECT = REPO / "app" / "client"
# httpx and what it imports at run time; linked from this environment because the test runs offline.
HTTPX_STACK = ("httpx", "httpcore", "anyio", "h11", "idna", "certifi", "sniffio", "typing_extensions")


def _run(*command: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=300, cwd=cwd, check=False
    )
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # Built from a copy so no build/ or egg-info litter lands in the checkout.
    _run("cp", "-r", CLIENT_PROJECT, build / "client")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", out, build / "client")
    wheels = list(out.glob("memaudit_client-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def _link_httpx_stack(site_packages: Path, tmp: Path) -> None:
    shelf = tmp / "httpx-stack"
    shelf.mkdir()
    for module in HTTPX_STACK:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (shelf / source.name).symlink_to(source)
    (site_packages / "httpx_stack.pth").write_text(str(shelf) + "\n")


def test_wheel_holds_only_memaudit_client_and_needs_only_httpx(client_wheel: Path) -> None:
    with zipfile.ZipFile(client_wheel) as archive:
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"memaudit_client"}
    assert "memaudit_client/py.typed" in names
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert len(requires) == 1 and requires[0].split()[1].startswith("httpx")


def test_installs_into_a_fresh_venv_without_torch(client_wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # This environment's pip installs into the fresh one (no ensurepip, no network).
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index",
         client_wheel)
    site_packages = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                         .stdout.strip())
    installed = {p.name for p in site_packages.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    assert installed - {"__pycache__", "_distutils_hack", "distutils-precedence.pth"} == {"memaudit_client"}
    _link_httpx_stack(site_packages, tmp_path)
    probe = (
        "import importlib.util, sys\n"
        "import memaudit_client\n"
        "from memaudit_client import MemauditClient, MemauditError\n"
        "MemauditClient('http://127.0.0.1:9').close()\n"
        "leaked = [m for m in ('torch', 'numpy', 'app', 'models', 'workers', 'fastapi', 'sqlalchemy')\n"
        "          if m in sys.modules or importlib.util.find_spec(m) is not None]\n"
        "print(memaudit_client.__file__, leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    result = _run(python, "-I", "-c", probe, cwd=tmp_path)
    assert str(site_packages) in result.stdout
