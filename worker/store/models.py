"""The model registry in SQL: which model versions exist, where their checkpoints lie, which one is live.

One row per model version (`model_versions`): its checkpoint directory (a path every worker
can read) and its role. `live` is the version the workers score with and the API shows by
default; a partial unique index lets at most one row hold it. `shadow` marks a version written
beside the live one (`finpulse replay --shadow`, with no alerts) or registered for a promotion;
`retired` one that was live before.

`promote` moves `live` in one transaction, so a reader sees the old version or the new one,
never none or two; running workers poll `live()` (worker/entrypoints/live_model.py). On
PostgreSQL the writes that change roles take one advisory lock, so two promotions at once
queue instead of failing on the unique index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.tables import ModelVersionRow
from worker.store.database import upsert_insert

LIVE, SHADOW, RETIRED = "live", "shadow", "retired"
_ROLES_LOCK = 0x6D6F64656C  # "model": serialises role changes (PostgreSQL advisory lock id)


@dataclass(frozen=True)
class ModelVersion:
    model_version: str
    model_dir: str
    role: str
    registered_at: datetime
    promoted_at: datetime | None


class UnknownModel(LookupError):
    """A version the registry does not hold."""


def _as_model(row: object) -> ModelVersion:
    mapping = row._mapping  # type: ignore[attr-defined]
    return ModelVersion(**{name: mapping[name] for name in ModelVersion.__dataclass_fields__})


class ModelRegistry:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def live(self) -> ModelVersion | None:
        async with self.engine.connect() as conn:
            return await self._live(conn)

    async def get(self, version: str) -> ModelVersion | None:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(ModelVersionRow.__table__).where(ModelVersionRow.model_version == version))).first()
        return _as_model(found) if found else None

    async def list(self) -> list[ModelVersion]:
        table = ModelVersionRow.__table__
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(table).order_by(table.c.registered_at, table.c.model_version))).all()
        return [_as_model(r) for r in rows]

    async def register(self, version: str, model_dir: str) -> ModelVersion:
        """Add a version as `shadow`, or give a known one this checkpoint directory (its role stays)."""
        async with self.engine.begin() as conn:
            await self._upsert(conn, version, model_dir)
            found = (await conn.execute(select(ModelVersionRow.__table__).where(ModelVersionRow.model_version == version))).one()
        return _as_model(found)

    async def ensure_live(self, version: str, model_dir: str) -> ModelVersion:
        """The live version; when there is none yet, this one becomes it (the first worker on a new store)."""
        async with self.engine.begin() as conn:
            await self._lock(conn)
            live = await self._live(conn)
            if live is not None:
                return live
            await self._upsert(conn, version, model_dir)
            await self._set_live(conn, version)
            return await self._live(conn)  # type: ignore[return-value]

    async def promote(self, version: str) -> tuple[str | None, ModelVersion]:
        """Make `version` live and the live one `retired`, in one transaction; returns (the previous live, the new)."""
        async with self.engine.begin() as conn:
            await self._lock(conn)
            table = ModelVersionRow.__table__
            if (await conn.execute(select(table.c.model_version).where(table.c.model_version == version))).first() is None:
                raise UnknownModel(version)
            previous = await self._live(conn)
            if previous is None or previous.model_version != version:
                await conn.execute(update(table).where(table.c.role == LIVE).values(role=RETIRED))
                await self._set_live(conn, version)
            return (previous.model_version if previous else None), await self._live(conn)  # type: ignore[return-value]

    @staticmethod
    async def _live(conn: AsyncConnection) -> ModelVersion | None:
        found = (await conn.execute(select(ModelVersionRow.__table__).where(ModelVersionRow.role == LIVE))).first()
        return _as_model(found) if found else None

    @staticmethod
    async def _lock(conn: AsyncConnection) -> None:
        if conn.dialect.name == "postgresql":  # SQLite has one writer at a time anyway
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _ROLES_LOCK})

    @staticmethod
    async def _upsert(conn: AsyncConnection, version: str, model_dir: str) -> None:
        insert = upsert_insert(conn.dialect.name)(ModelVersionRow)
        values = {"model_version": version, "model_dir": model_dir, "role": SHADOW, "registered_at": datetime.now(UTC)}
        await conn.execute(
            insert.values(**values).on_conflict_do_update(index_elements=["model_version"], set_={"model_dir": model_dir})
        )

    @staticmethod
    async def _set_live(conn: AsyncConnection, version: str) -> None:
        table = ModelVersionRow.__table__
        await conn.execute(
            update(table).where(table.c.model_version == version).values(role=LIVE, promoted_at=datetime.now(UTC))
        )
