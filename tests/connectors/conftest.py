"""Fixtures of the sync engine tests: a store on the test database and one district in it."""

from tests.connectors.sync_support import db, district_id  # noqa: F401  (fixtures)
