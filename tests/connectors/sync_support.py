"""Helpers shared by the sync engine, outbox and scheduler tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy.schema import CreateColumn

from connectors import sync
from connectors.fake import FakeConnector
from plugin.store import models
from plugin.store.db import Store

NOW = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)


def top_up_schema(url: str) -> None:
    """Add columns and indexes the models declare but the migrated test database lacks (no-op when current)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            insp = inspect(conn)
            for table in models.Base.metadata.sorted_tables:
                if not insp.has_table(table.name):
                    table.create(conn)
                    continue
                present = {c["name"] for c in insp.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present:
                        ddl = CreateColumn(column).compile(dialect=conn.dialect)
                        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
                indexes = {i["name"] for i in insp.get_indexes(table.name)}
                for index in table.indexes:
                    if index.name not in indexes:
                        index.create(conn)
    finally:
        engine.dispose()


@pytest.fixture
def db(database_url: str) -> Iterator[Store]:
    """A store on the test database, its schema topped up to the models."""
    top_up_schema(database_url)
    store = Store(database_url)
    yield store
    store.dispose()


@pytest.fixture
def district_id(db: Store) -> int:
    """One district matching people on SIS id, then e-mail."""
    with db.session() as session:
        d = models.District(slug="north", name="North", settings={"match_on": ["sis_id", "email"]},
                            created_at=NOW)
        session.add(d)
        session.flush()
        return d.id


def run(db: Store, district_id: int, connector: FakeConnector, **kw: object) -> sync.SyncRunResult:
    """Run one sync of ``connector`` at NOW unless told otherwise."""
    kw.setdefault("now", NOW)
    return sync.run_sync(db, district_id, connector.name, connector, **kw)  # type: ignore[arg-type]
