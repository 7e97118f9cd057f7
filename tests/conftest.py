"""Shared fixtures: a real database (SQLite by default, PostgreSQL when TRAILMARK_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from plugin.store import models
from plugin.store.db import Store, upgrade

POSTGRES_URL = os.environ.get("TRAILMARK_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("TRAILMARK_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def _migrated_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Run the migrations once; each test gets a copy (SQLite) or a truncated schema (PostgreSQL)."""
    if POSTGRES_URL:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        name = f"trailmark_test_{worker}_{uuid.uuid4().hex[:6]}"
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        base = POSTGRES_URL.rsplit("/", 1)[0]
        url = f"{base}/{name}"
        upgrade(url)
        return url
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return str(path)


@pytest.fixture
def database_url(_migrated_template: str, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database for one test."""
    if POSTGRES_URL:
        engine = create_engine(_migrated_template)
        tables = ", ".join(f'"{t.name}"' for t in models.Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        engine.dispose()
        yield _migrated_template
        return
    path = tmp_path / "trailmark.db"
    shutil.copy(_migrated_template, path)
    yield f"sqlite:///{path}"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    yield s
    s.dispose()


@pytest.fixture
def district(store: Store) -> models.District:
    """One district, the tenant most tests work in."""
    with store.session() as session:
        d = models.District(slug="north", name="North District", settings={}, created_at=datetime.now(UTC))
        session.add(d)
        session.flush()
        session.expunge(d)
    return d


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip PostgreSQL- or Redis-only tests without a server, unless the run requires them (CI)."""
    required = os.environ.get("TRAILMARK_REQUIRE", "").split(",")
    for marker, url, variable, name in (("postgres", POSTGRES_URL, "TRAILMARK_TEST_POSTGRES_URL", "PostgreSQL"),
                                        ("redis", REDIS_URL, "TRAILMARK_TEST_REDIS_URL", "Redis")):
        for item in items:
            if marker in item.keywords and not url:
                if marker in required:
                    raise pytest.UsageError(f"{name} is required (TRAILMARK_REQUIRE) but {variable} is unset")
                item.add_marker(pytest.mark.skip(reason=f"set {variable} to run"))


@pytest.fixture
def redis_url() -> str:
    """The test Redis server (tests keep to their own key prefix, so a shared server is fine)."""
    assert REDIS_URL, "mark the test with @pytest.mark.redis"
    return REDIS_URL


# --------------------------------------------------------------------------- the web app and a test platform

from tests.lti_platform import TestPlatform  # noqa: E402


@pytest.fixture
def app_config(database_url: str, tmp_path: Path) -> dict:
    return {
        "mode": "local",
        "server": {"public_url": "http://localhost", "secret_key": f"file:{tmp_path}/secret_key"},
        "database": {"url": database_url},
        "sandbox": {"enabled": True, "key_path": str(tmp_path / "sandbox.pem")},
        "scheduler": {"enabled": False},
        "districts": [{"slug": "north", "name": "North District"}],
    }


@pytest.fixture
def app(app_config: dict):
    from plugin.app import create_app
    from plugin.cli import bootstrap

    application = create_app(app_config, env={})
    bootstrap(application)
    yield application
    from plugin.store.db import get_store

    get_store(application).dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def lti(app):
    """A registered LMS that signs real id_tokens with its own RSA key (its JWKS served through `responses`)."""
    import responses as responses_lib

    with responses_lib.RequestsMock(assert_all_requests_are_fired=False) as mock:
        platform = TestPlatform(app, mock)
        platform.register()
        yield platform
