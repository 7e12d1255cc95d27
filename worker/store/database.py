"""The one place that makes the SQL engine, and the schema migrations (Alembic, configured in code)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parents[2] / "schemas" / "migrations"

# INSERT … ON CONFLICT for each dialect the store supports.
Insert = Callable[..., Any]
_INSERTS: dict[str, Insert] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def make_engine(url: str) -> AsyncEngine:
    """A pooled async engine; connections are checked before use, so a restarted database is found again."""
    engine = create_async_engine(url, pool_pre_ping=True)
    if engine.dialect.name not in _INSERTS:
        raise ValueError(
            f"unsupported database {engine.dialect.name!r}: use postgresql+asyncpg:// or sqlite+aiosqlite://"
        )
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        _owner_only(Path(engine.url.database))
    return engine


async def answers(engine: AsyncEngine) -> bool:
    """Whether the store takes a query now (`SELECT 1`); False, not an exception, when it does not."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any failure means "not now"; the caller says what it does then
        return False
    return True


def _owner_only(path: Path) -> None:
    """SQLite would make its file with the umask, often world-readable; its journal and WAL copy the file's mode."""
    if not path.parent.is_dir():
        return  # SQLite itself says it cannot open the file
    path.touch(mode=0o600)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077 and path.stat().st_uid == os.geteuid():
        path.chmod(mode & 0o700)  # one made before this, readable by every local user


def upsert_insert(engine_or_dialect: AsyncEngine | str) -> Insert:
    """The dialect's `insert`, whose statements have `on_conflict_do_update` / `_do_nothing`."""
    name = engine_or_dialect if isinstance(engine_or_dialect, str) else engine_or_dialect.dialect.name
    return _INSERTS[name]


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)
