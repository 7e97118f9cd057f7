"""The migrations build exactly the schema the models describe."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from plugin.store import models
from plugin.store.db import current_revision, head_revision


def test_migrations_match_models(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), models.Base.metadata)
    assert diff == []


def test_database_is_at_head(store):
    assert current_revision(store.engine) == head_revision()
