"""Planner statistics: SQLite gets them after a bulk sync and after a migration; PostgreSQL is left to autovacuum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from connectors import sync
from connectors.fake import FakeConnector, sample_district
from plugin.store.db import Store, refresh_statistics, upgrade
from plugin.store.models import District

NOW = datetime(2026, 9, 14, 6, 0, tzinfo=UTC)


def stats(store: Store) -> dict[str, str]:
    """Index name → its sqlite_stat1 row (empty when ANALYZE never ran)."""
    with store.engine.connect() as conn:
        if conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").first() is None:
            return {}
        return {idx: stat for idx, stat in conn.exec_driver_sql("SELECT idx, stat FROM sqlite_stat1 "
                                                                "WHERE idx IS NOT NULL")}


@pytest.fixture
def sqlite_store(store: Store) -> Store:
    if store.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    return store


def north(store: Store) -> int:
    with store.session() as session:
        district = District(slug="north", name="North", settings={}, created_at=NOW)
        session.add(district)
        session.flush()
        return district.id


def test_a_bulk_sync_leaves_the_planner_statistics(sqlite_store: Store) -> None:
    store = sqlite_store
    assert not any(k.startswith(("ix_person", "ix_external_ref", "ix_enrollment")) for k in stats(store))
    connector = FakeConnector("sis", sample_district(classes=3, students_per_class=20))
    result = sync.run_sync(store, north(store), "sis", connector, now=NOW)
    assert result.ok and result.total("added") > 100
    found = stats(store)
    for index in ("ix_person_sis_id", "ix_external_ref_entity", "ix_enrollment_person", "ix_enrollment_class"):
        assert index in found, sorted(found)
    rows = int(found["ix_external_ref_entity"].split()[0])
    assert rows == result.total("added")  # every ref the run wrote, described

    # Nothing is analyzed again until a table has grown tenfold.
    with store.engine.begin() as conn:
        assert refresh_statistics(conn) == []
    again = sync.run_sync(store, north_id(store), "sis", connector, now=NOW + timedelta(hours=1))
    assert again.ok and again.total("added") == 0 and stats(store) == found


def north_id(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT id FROM district WHERE slug = 'north'")).scalar_one())


def test_a_table_that_grew_tenfold_is_analyzed_again(sqlite_store: Store) -> None:
    store = sqlite_store
    d = north(store)
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO org (district_id, sourced_id, status, name, type) VALUES "
                          + ", ".join(f"({d}, 'o{i}', 'active', 'Org {i}', 'school')" for i in range(5))))
        assert "org" in refresh_statistics(conn)
        assert refresh_statistics(conn) == []
        conn.execute(text("INSERT INTO org (district_id, sourced_id, status, name, type) VALUES "
                          + ", ".join(f"({d}, 'p{i}', 'active', 'Org {i}', 'school')" for i in range(60))))
        assert refresh_statistics(conn) == ["org"]
    assert stats(store)["sqlite_autoindex_org_1"].startswith("65 ")


def test_a_migration_analyzes_what_was_never_analyzed(sqlite_store: Store, database_url: str) -> None:
    store = sqlite_store
    connector = FakeConnector("sis", sample_district(classes=1, students_per_class=5))
    assert sync.run_sync(store, north(store), "sis", connector, now=NOW).ok
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM sqlite_stat1")
    upgrade(database_url)  # already at head: nothing to migrate, the statistics are refreshed all the same
    assert "ix_person_sis_id" in stats(store)


@pytest.mark.postgres
def test_postgresql_is_left_to_autovacuum(store: Store) -> None:
    assert store.refresh_statistics() == []
    with store.engine.begin() as conn:
        assert refresh_statistics(conn) == []


def test_statistics_never_fail_a_sync(sqlite_store: Store, monkeypatch: Any) -> None:
    def broken(_conn: Any) -> list[str]:
        raise RuntimeError("database is locked")

    monkeypatch.setattr("plugin.store.db.refresh_statistics", broken)
    connector = FakeConnector("sis", sample_district(classes=1, students_per_class=2))
    assert sync.run_sync(sqlite_store, north(sqlite_store), "sis", connector, now=NOW).ok
