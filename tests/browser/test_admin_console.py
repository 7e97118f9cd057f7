"""The admin console in Chromium: a local administrator signs in, walks every page, rotates a key; axe-core
finds no serious problems. Screenshots go to test-results/."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from axe_playwright_python.sync_playwright import Axe
from sqlalchemy import select

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser
PASSWORD = "correct horse battery staple"


@pytest.fixture
def live_config():
    return {"sources": [{"name": "sis-nightly", "kind": "fake", "district": "sandbox", "schedule": "24h"}]}


def _axe_ok(target) -> None:
    results = Axe().run(target)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in bad]


def _make_admin(database_url: str) -> None:
    from plugin.admin import auth
    from plugin.store.db import Store
    from plugin.store.models import District

    store = Store(database_url)
    with store.session() as session:
        sandbox = session.scalars(select(District.id).where(District.slug == "sandbox")).one()
        auth.create_user(session, sandbox, "it-dana", PASSWORD, datetime.now(UTC))
    store.dispose()


def test_admin_console_pages(page, live_server, database_url):
    _make_admin(database_url)
    page.goto(f"{live_server}/admin/")
    page.get_by_label("Username").fill("it-dana")
    page.get_by_label("Password").fill(PASSWORD)
    _axe_ok(page)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Sandbox District").wait_for()
    shot(page, "admin-home")
    _axe_ok(page)
    for link, heading, name in (("Platforms", "Platforms", "admin-platforms"), ("Sources", "Sources", None),
                                ("Sync runs", "Sync runs", None), ("Outbox", "Outbox", "admin-outbox"),
                                ("Signing keys", "Signing keys", "admin-keys"),
                                ("Configuration", "Configuration check", "admin-config"),
                                ("Audit log", "Audit log", None), ("Privacy requests", "Privacy requests", None)):
        page.get_by_role("navigation", name="Admin pages").get_by_role("link", name=link).click()
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        if name:
            shot(page, name)
        _axe_ok(page)
    assert "Sandbox LMS" in page.goto(f"{live_server}/admin/platforms").text()
    page.goto(f"{live_server}/admin/keys")
    page.get_by_role("button", name="Rotate: make a new signing key").click()
    page.get_by_role("status").wait_for()
    assert page.locator("td", has_text="retiring").count() == 1
    page.goto(f"{live_server}/admin/privacy?q=S-2001")
    page.get_by_role("heading", name="Maya Okafor").wait_for()
    shot(page, "admin-privacy")
    _axe_ok(page)


def test_sync_now_from_the_sources_page(page, live_server, database_url):
    _make_admin(database_url)
    page.goto(f"{live_server}/admin/login")
    page.get_by_label("Username").fill("it-dana")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.goto(f"{live_server}/admin/sources")
    page.get_by_label("Full reconciliation (re-reads everything; finds removals)").check()
    page.get_by_role("button", name="Sync now").click()
    page.get_by_text("Sync requested: the scheduler starts it within a minute").wait_for()
    assert page.get_by_text("Full sync requested by").count() == 1
    assert page.get_by_role("button", name="Sync now").count() == 0  # one request at a time
    _axe_ok(page)
    shot(page, "admin-sources-sync-requested")
