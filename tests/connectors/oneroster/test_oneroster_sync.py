"""A OneRoster CSV package through the sync engine: imported once, then nothing to write the second time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench.district_gen import generate
from connectors import sync
from connectors.base import Connector
from connectors.oneroster import OneRosterConnector
from plugin.store import models
from plugin.store.db import Store
from tests.connectors.sync_support import top_up_schema

NOW = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)


@pytest.fixture
def db(database_url: str, store: Store) -> Store:
    top_up_schema(database_url)
    return store


def test_generated_district_imports_and_a_second_import_changes_nothing(
    tmp_path: Path, db: Store, district: models.District
) -> None:
    stats = generate(tmp_path / "district.zip", scale=0.005, seed=11, as_zip=True)
    connector = OneRosterConnector.from_config(
        {"name": "sis-csv", "kind": "oneroster-csv", "path": str(tmp_path / "district.zip")}
    )
    assert isinstance(connector, Connector)

    first = sync.run_sync(db, district.id, connector.name, connector, now=NOW)
    assert first.status == sync.SUCCEEDED, first.message
    assert first.error_total == 0, first.errors
    added = {kind: counts.get("added", 0) for kind, counts in first.counts.items()}
    assert added["person"] == stats.users
    assert added["enrollment"] == stats.enrollments
    assert added["guardian_link"] == stats.guardian_links

    second = sync.run_sync(db, district.id, connector.name, connector, now=NOW + timedelta(hours=1))
    assert second.status == sync.SUCCEEDED, second.message
    assert all(
        counts.get("added", 0) == counts.get("updated", 0) == counts.get("tombstoned", 0) == 0
        for counts in second.counts.values()
    ), second.counts
