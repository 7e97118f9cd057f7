"""Parents without a Mentor launch get an emailed, expiring, single-use sign-in link (real SMTP server)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from plugin.store.db import get_store
from plugin.store.models import SignInLink


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"


@pytest.fixture
def smtp():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture
def mail_client(app_config, smtp):
    from plugin.app import create_app
    from plugin.cli import bootstrap

    _inbox, port = smtp
    app = create_app({**app_config, "mail": {"enabled": True, "smtp_host": "127.0.0.1", "smtp_port": port,
                                             "from_address": "trailmark@district.example"}}, env={})
    bootstrap(app)
    return app, app.test_client()


def _wait(inbox, n=1):
    for _ in range(50):
        if len(inbox.messages) >= n:
            return
        time.sleep(0.05)


def test_parent_signs_in_by_email_and_sees_only_their_child(mail_client, smtp):
    app, client = mail_client
    inbox, _ = smtp
    assert client.get("/p/signin/sandbox").status_code == 200
    resp = client.post("/p/signin/sandbox", data={"email": "Parent@Sandbox.Trailmark.invalid"})
    assert resp.status_code == 200 and "If that address is on file" in resp.get_data(as_text=True)
    _wait(inbox)
    [(rcpt, body)] = inbox.messages
    assert rcpt == ["parent@sandbox.trailmark.invalid"]
    link = re.search(r"http://localhost(/p/signin/link/\S+)", body).group(1)
    page = client.get(link)
    assert page.status_code == 302
    parent = client.get(page.headers["Location"])
    html = parent.get_data(as_text=True)
    assert "Maya Okafor" in html and "Leo Park" not in html
    assert client.get(link).status_code == 410  # single use


def test_unknown_address_gets_the_same_answer_and_no_mail(mail_client, smtp):
    _app, client = mail_client
    inbox, _ = smtp
    resp = client.post("/p/signin/sandbox", data={"email": "stranger@example.com"})
    assert resp.status_code == 200 and "If that address is on file" in resp.get_data(as_text=True)
    time.sleep(0.2)
    assert inbox.messages == []


def test_students_cannot_sign_in_as_parents(mail_client, smtp):
    _app, client = mail_client
    inbox, _ = smtp
    client.post("/p/signin/sandbox", data={"email": "maya@sandbox.trailmark.invalid"})
    time.sleep(0.2)
    assert inbox.messages == []


def test_expired_link_is_refused(mail_client, smtp):
    app, client = mail_client
    inbox, _ = smtp
    client.post("/p/signin/sandbox", data={"email": "parent@sandbox.trailmark.invalid"})
    _wait(inbox)
    link = re.search(r"http://localhost(/p/signin/link/\S+)", inbox.messages[0][1]).group(1)
    with get_store(app).session() as s:
        for row in s.scalars(select(SignInLink)):
            row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    assert client.get(link).status_code == 410


def test_requests_are_rate_limited(mail_client, smtp):
    _app, client = mail_client
    inbox, _ = smtp
    for _ in range(5):
        client.post("/p/signin/sandbox", data={"email": "parent@sandbox.trailmark.invalid"})
    _wait(inbox, 3)
    time.sleep(0.2)
    assert len(inbox.messages) == 3


def test_bad_email_and_unknown_district(mail_client):
    _app, client = mail_client
    assert client.post("/p/signin/sandbox", data={"email": "nope"}).status_code == 400
    assert client.get("/p/signin/atlantis").status_code == 404


def test_weekly_digest_reaches_teacher_and_parent(mail_client, smtp):
    from plugin import notify
    from plugin.store.models import District

    app, _client = mail_client
    inbox, _ = smtp
    with get_store(app).session() as s:
        district = s.scalars(select(District).where(District.slug == "sandbox")).one()
        sent = notify.send_weekly_digests(s, district.id, app.config["TRAILMARK"]["mail"],
                                          base_url="http://localhost")
    _wait(inbox, sent)
    assert sent == 2
    recipients = sorted(r[0] for r, _ in inbox.messages)
    assert recipients == ["parent@sandbox.trailmark.invalid", "teacher@sandbox.trailmark.invalid"]
    parent_mail = next(body for r, body in inbox.messages if r == ["parent@sandbox.trailmark.invalid"])
    assert "Maya" in parent_mail and "Leo" not in parent_mail  # only their own child
    assert "/p/signin/link/" in parent_mail
    teacher_mail = next(body for r, body in inbox.messages if r == ["teacher@sandbox.trailmark.invalid"])
    assert "Aiden" in teacher_mail  # the far-behind student is in the teacher's digest


def test_daily_and_weekly_jobs_are_registered(mail_client):
    from plugin.jobs import build_scheduler

    app, _client = mail_client
    ids = {job.id for job in build_scheduler(app).get_jobs()}
    assert {"learning:daily", "learning:digest"} <= ids
