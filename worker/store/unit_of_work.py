"""One transaction, several repositories: the persist step writes documents, windows and alerts atomically."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.store.aggregates import AggregateRepository
from worker.store.alerts import AlertRepository
from worker.store.database import upsert_insert
from worker.store.documents import DocumentRepository


class UnitOfWork:
    """The repositories of one transaction, sharing its connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        insert = upsert_insert(conn.dialect.name)
        self.documents = DocumentRepository(conn, insert)
        self.aggregates = AggregateRepository(conn, insert)
        self.alerts = AlertRepository(conn, insert)


@asynccontextmanager
async def unit_of_work(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    """Commits when the block ends cleanly; rolls everything back when it raises."""
    async with engine.begin() as conn:
        yield UnitOfWork(conn)


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    """The same repositories on a connection without a write transaction (the API's reads)."""
    async with engine.connect() as conn:
        yield UnitOfWork(conn)
