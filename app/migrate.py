"""Apply Alembic migrations from code (`memaudit migrate`, the embedded server, the test harness)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


def alembic_config(database_url: str | None = None) -> Config:
    script_dir = Path(migrations.__file__).resolve().parent
    config = Config(str(script_dir / "alembic.ini"))
    config.set_main_option("script_location", str(script_dir))
    if database_url is not None:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")
