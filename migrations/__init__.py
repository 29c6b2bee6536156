"""Alembic migrations: the only way memaudit's tables are created."""
