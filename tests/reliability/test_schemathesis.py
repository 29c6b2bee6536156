"""schemathesis against the app's own OpenAPI schema: at least 1000 generated requests (valid and
invalid), zero 5xx, and every response conforms to the schema (status code documented, body matches
its declared model, content type and headers as declared).

In-process ASGI app on the embedded SQLite database (migrated by Alembic), with API keys configured
and a valid key sent, so the generated requests reach the handlers instead of stopping at 401. A
dataset and a finished job exist, so their ids appear among the generated path parameters' examples.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.conftest import ALICE, API_KEYS, bearer
from tests.service.harness import environment
from tests.service.jobdata import digits_subset, npz_bytes, tiny_job

pytestmark = pytest.mark.timeout(300)
EXAMPLES_PER_OPERATION = 80
MIN_CASES = 1000
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    from app.api.main import create_app
    from app.migrate import upgrade_to_head

    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    database = f"sqlite:///{tmp / 'memaudit.db'}"
    env = {
        "MEMAUDIT_DATA_DIR": str(tmp / "data"),
        "MEMAUDIT_DATABASE_URL": database,
        "MEMAUDIT_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
        "MEMAUDIT_API_KEYS": API_KEYS,
        "MEMAUDIT_DATA_ROOT": str(tmp),
        "MEMAUDIT_JOB_RATE_LIMIT": "0",
    }
    with environment(env):
        upgrade_to_head(database)
        app = create_app()
        yield schemathesis.openapi.from_asgi("/openapi.json", app), _finished_job(app)


def _finished_job(app: Any) -> dict[str, str]:
    """A dataset and a job run to success in-process (the worker's functions, called directly)."""
    from fastapi.testclient import TestClient

    from workers import runner

    with TestClient(app) as client:
        upload = client.post(
            "/datasets", files={"file": ("d.npz", npz_bytes(digits_subset(30)))}, headers=bearer(ALICE)
        )
        dataset_id = upload.json()["id"]
        job_id = client.post(
            "/jobs", json=tiny_job({"id": dataset_id}, epochs=1), headers=bearer(ALICE)
        ).json()["id"]
    runner.plan_job(job_id)
    for index in range(3):
        runner.run_unit(job_id, index)
    runner.finish_job(job_id)
    return {"job_id": job_id, "dataset_id": dataset_id}


def _fuzz(operation: Any, known: dict[str, str], outcomes: Counter[str], failures: dict[str, str]) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE, headers=bearer(ALICE)),
        operation.as_strategy(GenerationMode.NEGATIVE, headers=bearer(ALICE)),
    ]
    existing = {name: value for name, value in known.items() if f"{{{name}}}" in operation.path}
    if existing:  # also aim at rows that exist, so handlers run past their 404
        strategies.append(
            operation.as_strategy(GenerationMode.POSITIVE, headers=bearer(ALICE), path_parameters=existing)
        )
    strategy = st.one_of(*strategies)

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Any) -> None:
        response = case.call(headers=bearer(ALICE))
        outcomes[f"{label} -> {response.status_code}"] += 1
        outcomes["total"] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=bearer(ALICE))
        except (AssertionError, BaseExceptionGroup) as failure:  # collect all; shrinking costs minutes
            failures.setdefault(f"{label} {response.status_code}", str(failure)[:1500])

    exercise()


def test_generated_requests_never_5xx_and_conform_to_the_schema(
    api_schema: tuple[Any, dict[str, str]],
) -> None:
    schema, known = api_schema
    outcomes: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        _fuzz(result.ok(), known, outcomes, failures)
    print("schemathesis outcomes:", dict(sorted(outcomes.items())))  # the figure in docs/reliability.md
    assert outcomes["total"] >= MIN_CASES, outcomes
    assert not any(key.endswith(("-> 500", "-> 502", "-> 503")) for key in outcomes), outcomes
    assert not failures, "\n\n".join(f"{key}:\n{text}" for key, text in failures.items())
