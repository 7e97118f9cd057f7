"""The admin console pages: LTI admin launches, local sign-in, actions, audit and district isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from plugin import jobs
from plugin.store.db import get_store
from plugin.store.models import AuditEvent, OutboxItem, Person, Platform, ToolKey
from tests.admin.conftest import PASSWORD, district_id, login_form_token, sign_in
from tests.connectors.sync_support import top_up_schema
from tests.htmlforms import follow_sandbox_launch, parse

SOURCES = [
    {"name": "sis", "kind": "fake", "district": "north", "schedule": "1h", "classes": 1, "students_per_class": 2},
    {"name": "down", "kind": "fake", "district": "north", "schedule": "*/30 * * * *", "fail_after": 0},
    {"name": "off", "kind": "fake", "district": "north", "enabled": False},
]


@pytest.fixture
def app_config(app_config: dict[str, Any], database_url: str) -> dict[str, Any]:
    top_up_schema(database_url)
    return {**app_config, "sources": [dict(s) for s in SOURCES], "scheduler": {"enabled": False}}


def audits(app: Any, action: str) -> list[AuditEvent]:
    with get_store(app).session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def csrf_of(html: str) -> str:
    for form in parse(html).forms:
        if "csrf_token" in form["fields"]:
            return str(form["fields"]["csrf_token"])
    raise AssertionError("no CSRF token on the page")


def dead_item(app: Any, slug: str) -> int:
    now = datetime.now(UTC)
    with get_store(app).session() as session:
        item = OutboxItem(district_id=district_id(app, slug), kind="score", idempotency_key=f"k-{slug}",
                          payload={"type": "score"}, status="dead", attempts=8, next_attempt_at=now,
                          last_error="RemoteRejected: line item deleted", created_at=now)
        session.add(item)
        session.flush()
        return item.id


# --------------------------------------------------------------------------- after an LTI admin launch


def test_admin_launch_opens_the_console(client: Any, admin_ltik: str) -> None:
    page = client.get(f"/admin/?ltik={admin_ltik}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Sandbox District" in html and "Dana Whitfield" in html
    links = [a["href"] for a in parse(html).links]
    assert any(h.startswith("/admin/platforms?ltik=") for h in links)
    platforms = client.get(f"/admin/platforms?ltik={admin_ltik}").get_data(as_text=True)
    assert "Sandbox LMS" in platforms and "/sandbox" in platforms


def test_teacher_and_student_launches_are_refused(client: Any) -> None:
    for who in ("teacher", "maya"):
        resp = follow_sandbox_launch(client, who)
        ltik = resp.headers["Location"].split("ltik=")[1]
        assert client.get(f"/admin/?ltik={ltik}").status_code == 403
        assert client.get(f"/admin/outbox?ltik={ltik}").status_code == 403


def test_without_a_session_the_console_asks_to_sign_in(client: Any) -> None:
    resp = client.get("/admin/outbox")
    assert resp.status_code == 302 and "/admin/login" in resp.headers["Location"]


def test_launch_admin_rotates_a_key_with_csrf_and_it_is_audited(client: Any, app: Any, admin_ltik: str) -> None:
    html = client.get(f"/admin/keys?ltik={admin_ltik}").get_data(as_text=True)
    assert client.post(f"/admin/keys/rotate?ltik={admin_ltik}", data={}).status_code == 400  # no CSRF token
    resp = client.post(f"/admin/keys/rotate?ltik={admin_ltik}", data={"csrf_token": csrf_of(html)})
    assert resp.status_code == 303 and "ltik=" in resp.headers["Location"]
    with get_store(app).session() as session:
        statuses = sorted(k.status for k in session.scalars(select(ToolKey)))
        admin = session.scalars(select(Person).where(Person.sis_id == "A-4001")).one()
    assert statuses == ["active", "retiring"]
    (event,) = audits(app, "admin.key_rotated")
    assert event.actor == f"person:{admin.id}" and event.detail["via"] == "lti"


def test_launch_admin_retries_a_dead_letter(client: Any, app: Any, admin_ltik: str) -> None:
    item_id = dead_item(app, "sandbox")
    html = client.get(f"/admin/outbox?ltik={admin_ltik}").get_data(as_text=True)
    assert "line item deleted" in html
    resp = client.post(f"/admin/outbox/{item_id}/retry?ltik={admin_ltik}", data={"csrf_token": csrf_of(html)})
    assert resp.status_code == 303
    with get_store(app).session() as session:
        item = session.get(OutboxItem, item_id)
        assert item.status == "pending" and item.attempts == 0
    assert [e.subject for e in audits(app, "admin.outbox_retry")] == [f"outbox:{item_id}"]


# --------------------------------------------------------------------------- local sign-in


@pytest.mark.usefixtures("sandbox_off")
def test_local_admin_signs_in_and_sees_only_their_district(client: Any, app: Any, local_admin: str) -> None:
    resp = sign_in(client, local_admin)
    assert resp.status_code == 303 and resp.headers["Location"].endswith("/admin/")
    cookie = resp.headers["Set-Cookie"]
    assert "tm_admin=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    html = client.get("/admin/").get_data(as_text=True)
    assert "North District" in html and "Sandbox District" not in html
    assert "Sandbox LMS" not in client.get("/admin/platforms").get_data(as_text=True)
    assert [e.actor for e in audits(app, "admin.login")] == [f"admin:{_admin_id(app)}"]


def _admin_id(app: Any) -> int:
    from plugin.store.models import AdminUser

    with get_store(app).session() as session:
        return session.scalars(select(AdminUser.id)).one()


@pytest.mark.usefixtures("sandbox_off")
def test_sign_in_needs_the_form_token(client: Any, local_admin: str) -> None:
    login_form_token(client)
    resp = client.post("/admin/login", data={"csrf_token": "forged", "username": local_admin, "password": PASSWORD})
    assert resp.status_code == 400


@pytest.mark.usefixtures("sandbox_off")
def test_wrong_passwords_are_refused_then_the_account_is_locked(client: Any, app: Any, local_admin: str) -> None:
    for _ in range(5):
        resp = sign_in(client, local_admin, "not the password!")
        assert resp.status_code == 401
        assert "not right" in resp.get_data(as_text=True)
    locked = sign_in(client, local_admin, PASSWORD)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert len(audits(app, "admin.login_refused")) == 6
    assert not audits(app, "admin.login")


@pytest.mark.usefixtures("sandbox_off")
def test_unknown_users_get_the_same_answer(client: Any) -> None:
    resp = sign_in(client, "nobody", PASSWORD)
    assert resp.status_code == 401 and "not right" in resp.get_data(as_text=True)


@pytest.mark.usefixtures("sandbox_off")
def test_the_lockout_is_shared_by_every_worker(app: Any, local_admin: str) -> None:
    """The failure count lives in the database: a second app (another worker) sees the lock."""
    from plugin.admin import auth

    now = datetime.now(UTC)
    with get_store(app).session() as session:
        for _ in range(5):
            with pytest.raises(auth.LoginRefused):
                auth.sign_in(session, local_admin, "wrong password", address="10.0.0.1", now=now, max_failures=5,
                             lockout=timedelta(minutes=15))
    with get_store(app).session() as session:
        with pytest.raises(auth.LoginRefused) as refused:
            auth.sign_in(session, local_admin, PASSWORD, address="10.0.0.2", now=now, max_failures=5,
                         lockout=timedelta(minutes=15))
        assert refused.value.retry_after is not None
        later = now + timedelta(minutes=16)
        assert auth.sign_in(session, local_admin, PASSWORD, address="10.0.0.2", now=later, max_failures=5,
                            lockout=timedelta(minutes=15)).username == local_admin


@pytest.mark.usefixtures("sandbox_off")
def test_sign_out_ends_the_session(client: Any, local_admin: str) -> None:
    sign_in(client, local_admin)
    html = client.get("/admin/").get_data(as_text=True)
    assert client.post("/admin/logout", data={"csrf_token": csrf_of(html)}).status_code == 303
    assert client.get("/admin/").status_code == 302


@pytest.mark.usefixtures("sandbox_off")
def test_disabled_admins_lose_their_session(client: Any, app: Any, local_admin: str) -> None:
    from plugin.store.models import AdminUser

    sign_in(client, local_admin)
    with get_store(app).session() as session:
        session.scalars(select(AdminUser)).one().disabled_at = datetime.now(UTC)
    assert client.get("/admin/").status_code == 302


@pytest.mark.usefixtures("sandbox_off")
def test_local_admin_adds_and_removes_a_platform(client: Any, app: Any, local_admin: str) -> None:
    sign_in(client, local_admin)
    html = client.get("/admin/platforms").get_data(as_text=True)
    form = {"csrf_token": csrf_of(html), "issuer": "https://moodle.north.example", "client_id": "abc",
            "deployment_ids": "7, 8", "auth_login_url": "https://moodle.north.example/mod/lti/auth.php",
            "auth_token_url": "https://moodle.north.example/mod/lti/token.php",
            "key_set_url": "https://moodle.north.example/mod/lti/certs.php", "product_family": "Moodle"}
    bad = client.post("/admin/platforms", data={**form, "key_set_url": "certs.php"})
    assert bad.status_code == 400 and "Key set URL: expected a URL" in bad.get_data(as_text=True)
    assert client.post("/admin/platforms", data=form).status_code == 303
    page = client.get("/admin/platforms?done=platform-added").get_data(as_text=True)
    assert "Platform saved." in page and "7, 8" in page
    with get_store(app).session() as session:
        platform = session.scalars(select(Platform).where(Platform.issuer == "https://moodle.north.example")).one()
        assert platform.district_id == district_id(app, "north") and platform.product_family == "moodle"
    assert client.post(f"/admin/platforms/{platform.id}/remove", data={"csrf_token": csrf_of(html)}).status_code == 303
    assert [e.action for e in audits(app, "admin.platform_added") + audits(app, "admin.platform_removed")] == [
        "admin.platform_added", "admin.platform_removed"]


@pytest.mark.usefixtures("sandbox_off")
def test_registration_invite_url_is_shown_once(client: Any, app: Any, local_admin: str) -> None:
    sign_in(client, local_admin)
    html = client.get("/admin/platforms").get_data(as_text=True)
    page = client.post("/admin/platforms/invite", data={"csrf_token": csrf_of(html), "hours": "24", "note": "Moodle"})
    assert page.status_code == 200
    assert "/lti/register?code=" in page.get_data(as_text=True)
    (event,) = audits(app, "admin.registration_invite")
    assert "code" not in str(event.detail)


# --------------------------------------------------------------------------- isolation between districts


def test_an_admin_cannot_act_on_another_district(client: Any, app: Any, local_admin: str) -> None:
    sign_in(client, local_admin)
    csrf = csrf_of(client.get("/admin/").get_data(as_text=True))
    with get_store(app).session() as session:
        sandbox_platform = session.scalars(select(Platform).where(Platform.product_family == "sandbox")).one().id
    item_id = dead_item(app, "sandbox")
    assert client.post(f"/admin/platforms/{sandbox_platform}/remove", data={"csrf_token": csrf}).status_code == 404
    assert client.post(f"/admin/outbox/{item_id}/retry", data={"csrf_token": csrf}).status_code == 404
    assert client.post("/admin/outbox/retry-dead", data={"csrf_token": csrf}).status_code == 303
    with get_store(app).session() as session:
        assert session.get(OutboxItem, item_id).status == "dead"
        assert session.get(Platform, sandbox_platform) is not None
    assert "line item deleted" not in client.get("/admin/outbox").get_data(as_text=True)
    maya = _person_id(app, "S-2001")
    assert client.get(f"/admin/privacy/{maya}/export").status_code == 404
    assert "No person" in client.get("/admin/privacy?q=S-2001").get_data(as_text=True)


def _person_id(app: Any, sis_id: str) -> int:
    with get_store(app).session() as session:
        return session.scalars(select(Person.id).where(Person.sis_id == sis_id)).one()


def test_launch_admin_cannot_see_another_districts_runs(client: Any, app: Any, admin_ltik: str) -> None:
    result = jobs.run_source(app, "sis")
    assert result.ok
    assert client.get(f"/admin/sync-runs/{result.run_id}?ltik={admin_ltik}").status_code == 404
    assert "sis" not in client.get(f"/admin/sources?ltik={admin_ltik}").get_data(as_text=True)


# --------------------------------------------------------------------------- sources, runs, configuration


@pytest.mark.usefixtures("sandbox_off")
def test_sources_show_last_and_next_sync_and_errors(client: Any, app: Any, local_admin: str) -> None:
    assert jobs.run_source(app, "sis").ok
    assert not jobs.run_source(app, "down").ok
    sign_in(client, local_admin)
    html = client.get("/admin/sources").get_data(as_text=True)
    assert "sis" in html and "succeeded" in html and "Next sync" in html
    assert "down" in html and "failed" in html and "Paused until" in html
    runs = client.get("/admin/sync-runs").get_data(as_text=True)
    assert runs.count("<tr>") >= 3
    run_id = int(parse(runs).links[-1]["href"].split("/sync-runs/")[1].split("?")[0])
    assert client.get(f"/admin/sync-runs/{run_id}").status_code == 200
    assert "added" in client.get("/admin/sync-runs?source=sis").get_data(as_text=True)


@pytest.mark.usefixtures("sandbox_off")
def test_sync_now_is_started_by_the_scheduler_even_for_a_paused_source(client: Any, app: Any,
                                                                     local_admin: str) -> None:
    assert not jobs.run_source(app, "down").ok  # now paused
    app.config["SOURCES"][1] = {**app.config["SOURCES"][1], "fail_after": None}  # the source is back
    sign_in(client, local_admin)
    html = client.get("/admin/sources").get_data(as_text=True)
    assert "Resume and sync now" in html and "Sync now" in html
    assert "/admin/sources/off/sync" not in html  # disabled in the district file: no button
    csrf = csrf_of(html)
    assert client.post("/admin/sources/down/sync", data={}).status_code == 400  # no CSRF token
    resp = client.post("/admin/sources/down/sync", data={"csrf_token": csrf, "full": "1"})
    assert resp.status_code == 303 and "done=sync-requested" in resp.headers["Location"]
    again = client.post("/admin/sources/down/sync", data={"csrf_token": csrf})  # a second click keeps one request
    assert again.status_code == 303
    html = client.get("/admin/sources?done=sync-requested").get_data(as_text=True)
    assert "Sync requested: the scheduler starts it" in html
    assert "Full sync requested by" in html and "waiting for the scheduler" in html
    assert [e.detail["full"] for e in audits(app, "admin.sync_requested")] == [True, True]
    overview = client.get("/admin/").get_data(as_text=True)
    assert "waiting for the scheduler" in overview and "Sources: errors, and Sync now" in overview

    [result] = jobs.run_requested_syncs(app)

    assert result.ok and result.source == "down"
    assert jobs.run_requested_syncs(app) == []  # taken once
    html = client.get("/admin/sources").get_data(as_text=True)
    assert "waiting for the scheduler" not in html and "Paused until" not in html


@pytest.mark.usefixtures("sandbox_off")
def test_sync_now_refuses_unknown_disabled_and_other_districts_sources(client: Any, app: Any,
                                                                        local_admin: str) -> None:
    sign_in(client, local_admin)
    csrf = csrf_of(client.get("/admin/sources").get_data(as_text=True))
    assert client.post("/admin/sources/nowhere/sync", data={"csrf_token": csrf}).status_code == 404
    refused = client.post("/admin/sources/off/sync", data={"csrf_token": csrf})
    assert refused.status_code == 409 and "disabled in the district file" in refused.get_data(as_text=True)
    assert audits(app, "admin.sync_requested") == []


def test_a_request_waits_while_its_source_is_syncing(app: Any) -> None:
    from connectors import sync
    from plugin.store.models import Source

    jobs.ensure_rows(app, app.config["SOURCES"][0], datetime.now(UTC))
    now = datetime.now(UTC)
    with get_store(app).session() as session:
        source = session.scalars(select(Source).where(Source.name == "sis")).one()
        source.sync_requested_at, source.sync_requested_by = now, "IT"
        assert sync.acquire_lease(session, source.id, "another-host:1", now)
    assert jobs.run_requested_syncs(app, now=now) == []
    with get_store(app).session() as session:
        source = session.scalars(select(Source).where(Source.name == "sis")).one()
        assert source.sync_requested_at is not None  # still waiting
        sync.release_lease(session, source.id, "another-host:1")
    [result] = jobs.run_requested_syncs(app, now=now)
    assert result.ok


def test_a_skipped_requested_run_is_asked_again_only_if_another_process_was_syncing(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import sync
    from plugin.store.models import Source

    now = datetime.now(UTC)
    jobs.ensure_rows(app, app.config["SOURCES"][0], now)

    def request() -> None:
        with get_store(app).session() as session:
            session.scalars(select(Source).where(Source.name == "sis")).one().sync_requested_at = now

    def waiting() -> bool:
        with get_store(app).session() as session:
            return session.scalars(select(Source).where(Source.name == "sis")).one().sync_requested_at is not None

    def skipped_by_a_lease(_app: Any, name: str, **_kw: Any) -> sync.SyncRunResult:
        with get_store(app).session() as session:
            source_id = session.scalars(select(Source.id).where(Source.name == name)).one()
            sync.acquire_lease(session, source_id, "another-host:1", now)
        return sync.SyncRunResult(sync.SKIPPED, name, message="already syncing")

    request()
    monkeypatch.setattr(jobs, "run_source", skipped_by_a_lease)
    jobs.run_requested_syncs(app, now=now)
    assert waiting()  # the other run holds the lease: asked again at a later poll

    with get_store(app).session() as session:
        sync.release_lease(session, session.scalars(select(Source.id).where(Source.name == "sis")).one(),
                           "another-host:1")
    monkeypatch.setattr(jobs, "run_source", lambda _app, name, **_kw: sync.SyncRunResult(
        sync.SKIPPED, name, message="source 'sis' cannot read content"))
    jobs.run_requested_syncs(app, now=now)
    assert not waiting()  # skipped for a reason of its own: the request ends instead of coming back forever


@pytest.mark.usefixtures("sandbox_off")
def test_configuration_check_page(client: Any, local_admin: str) -> None:
    sign_in(client, local_admin)
    html = client.get("/admin/config").get_data(as_text=True)
    for name in ("database", "schema", "encryption key", "public URL", "source sis", "signing key"):
        assert name in html


@pytest.mark.usefixtures("sandbox_off")
def test_audit_page_lists_the_districts_events(client: Any, app: Any, local_admin: str) -> None:
    sign_in(client, local_admin)
    html = client.get("/admin/audit").get_data(as_text=True)
    assert "admin.login" in html
