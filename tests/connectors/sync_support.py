"""Helpers shared by the sync engine, outbox and scheduler tests."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect
from sqlalchemy.schema import CreateColumn

from plugin.store import models


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
