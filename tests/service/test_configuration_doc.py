"""docs/configuration.md must list every environment variable the service reads."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [f"MEMAUDIT_{name.upper()}" for name in Settings.model_fields
               if f"`MEMAUDIT_{name.upper()}`" not in text]
    assert not missing, f"document these in docs/configuration.md: {missing}"
