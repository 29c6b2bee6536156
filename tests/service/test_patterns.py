"""Every string a published pattern accepts is one the server takes as well-formed: a cursor is a
position, a data-root path or a built-in name that names nothing is a 404 (never a 422 about its shape),
so a schema-valid request is refused only for what the schema cannot know."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app.services import patterns
from app.services.datasets import load_dataset_spec
from app.services.errors import NotFound
from app.services.scores import decode_cursor
from app.settings import Settings

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@given(cursor=st.from_regex(patterns.CURSOR, fullmatch=True))
@EXAMPLES
def test_every_cursor_of_the_pattern_is_a_position(cursor: str) -> None:
    score, sample_id = decode_cursor(cursor)
    assert 0 <= sample_id < 2**31 and (score is None or score == score)


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("root")


@given(path=st.from_regex(patterns.DATA_PATH, fullmatch=True))
@example(path="a" * 300 + ".npy")  # longer than a file name may be: once a 500
@EXAMPLES
def test_every_data_path_of_the_pattern_that_names_nothing_is_404(empty_root: Path, path: str) -> None:
    with pytest.raises(NotFound):
        load_dataset_spec({"path": path}, None, Settings(data_root=empty_root), "local", "dataset")  # type: ignore[arg-type]


@given(name=st.from_regex(patterns.BUILTIN, fullmatch=True))
@EXAMPLES
def test_every_builtin_name_of_the_pattern_loads_or_is_404(name: str) -> None:
    from app.services.dataset_facts import dataset_facts

    try:
        facts = dataset_facts({"builtin": name}, None, Settings(), "local", "dataset")  # type: ignore[arg-type]
    except NotFound:
        return
    assert facts.count > 0
