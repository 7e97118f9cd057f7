"""Admin console fixtures: a sandbox admin launch, a local administrator, API tokens, a second district."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from plugin.admin import auth
from plugin.store.db import get_store
from plugin.store.models import District
from tests.htmlforms import follow_sandbox_launch

PASSWORD = "correct horse battery staple"


def district_id(app: Any, slug: str) -> int:
    with get_store(app).session() as session:
        return session.scalars(select(District.id).where(District.slug == slug)).one()


@pytest.fixture
def admin_ltik(client: Any) -> str:
    """The launch session ticket of the sandbox's district administrator (a real LTI launch)."""
    resp = follow_sandbox_launch(client, "admin")
    assert resp.status_code == 303, resp.get_data(as_text=True)[:400]
    return resp.headers["Location"].split("ltik=")[1]


@pytest.fixture
def make_token(app: Any):
    """Make an API token for a district (by slug)."""

    def make(slug: str = "sandbox", **kwargs: Any) -> str:
        with get_store(app).session() as session:
            secret, _row = auth.create_token(session, district_id(app, slug), "tests", datetime.now(UTC), **kwargs)
        return secret

    return make


@pytest.fixture
def local_admin(app: Any) -> str:
    """A local administrator of the north district; returns the username."""
    with get_store(app).session() as session:
        auth.create_user(session, district_id(app, "north"), "it-north", PASSWORD, datetime.now(UTC))
    return "it-north"


def login_form_token(client: Any) -> str:
    page = client.get("/admin/login")
    assert page.status_code == 200
    from tests.htmlforms import parse

    return parse(page.get_data(as_text=True)).forms[0]["fields"]["csrf_token"]


def sign_in(client: Any, username: str, password: str = PASSWORD) -> Any:
    token = login_form_token(client)
    return client.post("/admin/login", data={"csrf_token": token, "username": username, "password": password})


@pytest.fixture
def sandbox_off(app_config: dict[str, Any]) -> None:
    """Skip the sandbox district and its seed for tests that do not use it (much faster set-up)."""
    app_config["sandbox"] = {**app_config["sandbox"], "enabled": False}
