"""The sandbox LMS end to end: real OIDC login, signed id_token, launch, panels, services, deep linking."""

from __future__ import annotations

import time
import uuid

import jwt
from sqlalchemy import select

from plugin.lti import keys
from plugin.sandbox import platform as sb
from plugin.store.db import get_store
from plugin.store.models import AuditEvent
from tests.htmlforms import follow_sandbox_launch, parse


def _panel(client, resp):
    assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
    page = client.get(resp.headers["Location"])  # the launch opens the view's panel directly
    return resp.headers["Location"], page


def test_sandbox_page_lists_launches(client):
    html = client.get("/sandbox").get_data(as_text=True)
    for role in ("Teacher", "Student", "Parent"):
        assert f"{role}:" in html


def test_teacher_launch_shows_the_class(client):
    url, page = _panel(client, follow_sandbox_launch(client, "teacher"))
    assert "/p/teacher" in url
    html = page.get_data(as_text=True)
    assert "Algebra I — Period 2" in html
    assert "Maya Okafor" in html and "Zara Kowalski" in html
    assert "Linear equations" in html


def test_student_launch_shows_own_profile(client):
    url, page = _panel(client, follow_sandbox_launch(client, "leo"))
    assert "/p/student" in url
    html = page.get_data(as_text=True)
    assert "My learner profile" in html and "Algebra I" in html


def test_parent_sees_only_their_child(client):
    url, page = _panel(client, follow_sandbox_launch(client, "parent"))
    assert "/p/parent" in url
    html = page.get_data(as_text=True)
    assert "Maya Okafor" in html
    assert "Leo Park" not in html


def test_parent_cannot_open_another_child(client, app):
    url, _ = _panel(client, follow_sandbox_launch(client, "parent"))
    ltik = url.split("ltik=")[1]
    from plugin.store.models import Person

    with get_store(app).session() as s:
        leo = s.scalars(select(Person).where(Person.sis_id == "S-2002")).one()
        maya = s.scalars(select(Person).where(Person.sis_id == "S-2001")).one()
    assert client.get(f"/p/parent?ltik={ltik}&child={leo.id}").status_code == 403
    assert client.get(f"/p/students/{leo.id}?ltik={ltik}").status_code == 403
    assert client.get(f"/p/students/{maya.id}?ltik={ltik}").status_code == 200


def test_student_cannot_open_another_students_profile(client, app):
    url, _ = _panel(client, follow_sandbox_launch(client, "leo"))
    ltik = url.split("ltik=")[1]
    from plugin.store.models import Person

    with get_store(app).session() as s:
        maya = s.scalars(select(Person).where(Person.sis_id == "S-2001")).one()
    assert client.get(f"/p/students/{maya.id}?ltik={ltik}").status_code == 403
    assert client.get(f"/p/teacher?ltik={ltik}").status_code == 403


def test_teacher_drill_down_is_audited(client, app):
    url, page = _panel(client, follow_sandbox_launch(client, "teacher"))
    link = next(a["href"] for a in parse(page.get_data(as_text=True)).links if "/p/students/" in a["href"])
    assert client.get(link).status_code == 200
    with get_store(app).session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "view_student_profile")).all()
        assert len(events) == 1


def test_panels_without_a_session_say_so(client):
    resp = client.get("/p/teacher")
    assert resp.status_code == 401
    assert "open trailmark again" in resp.get_data(as_text=True).lower()
    assert client.get("/p/teacher?ltik=forged").status_code == 401


def test_admin_launch_shows_platforms(client):
    url, page = _panel(client, follow_sandbox_launch(client, "admin"))
    assert "/admin/" in url
    assert page.status_code == 200
    ltik = url.split("ltik=")[1]
    assert "Sandbox LMS" in client.get(f"/admin/platforms?ltik={ltik}").get_data(as_text=True)


def test_deep_linking_adds_items_and_a_gradebook_column(client, app):
    resp = follow_sandbox_launch(client, "teacher", hint="deep-link")
    assert resp.status_code == 303
    picker = client.get(resp.headers["Location"])
    assert picker.status_code == 200
    form = parse(picker.get_data(as_text=True)).forms[0]
    choices = form["choices"]["item"]
    assert "dashboard" in choices and "mastery-check:sandbox-module-1" in choices
    # CSRF: a post without the token is refused
    bare = client.post(form["action"], data={"item": ["dashboard"]})
    assert bare.status_code == 400
    done = client.post(form["action"], data={**form["fields"], "item": ["dashboard", "mastery-check:sandbox-module-1"]})
    assert done.status_code == 200
    ret = parse(done.get_data(as_text=True)).forms[0]
    token = ret["fields"]["JWT"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["https://purl.imsglobal.org/spec/lti/claim/message_type"] == "LtiDeepLinkingResponse"
    items = claims["https://purl.imsglobal.org/spec/lti-dl/claim/content_items"]
    assert [i["type"] for i in items] == ["ltiResourceLink", "ltiResourceLink"]
    assert "lineItem" not in items[0] and items[1]["lineItem"]["scoreMaximum"] == 100.0
    assert claims["https://purl.imsglobal.org/spec/lti-dl/claim/data"].startswith("dl-")
    added = client.post(ret["action"].replace("http://localhost", ""), data=ret["fields"])
    assert added.status_code == 200 and "new gradebook column" in added.get_data(as_text=True)
    assert "Mastery check: Linear equations" in client.get("/sandbox/gradebook").get_data(as_text=True)


def _service_token(client, app, scope: str) -> str:
    with get_store(app).session() as s:
        key = keys.signing_key(s)
    now = int(time.time())
    assertion = jwt.encode({"iss": sb.CLIENT_ID, "sub": sb.CLIENT_ID, "aud": "http://localhost/sandbox/token",
                            "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}, key.private_pem,
                           algorithm="RS256", headers={"kid": key.kid})
    resp = client.post("/sandbox/token", data={
        "grant_type": "client_credentials", "scope": scope, "client_assertion": assertion,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["access_token"]


def test_sandbox_nrps_pages_members(client, app):
    client.get("/sandbox")
    token = _service_token(client, app, "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly")
    url = f"/sandbox/api/contexts/{sb.CONTEXT_ID}/memberships?limit=4"
    seen = []
    while url:
        resp = client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 200
        seen += [m["user_id"] for m in resp.get_json()["members"]]
        link = resp.headers.get("Link")
        url = link.split(";")[0].strip("<>").replace("http://localhost", "") if link else None
    assert len(seen) == 7 and "sandbox-teacher" in seen


def test_sandbox_ags_scores_reach_the_gradebook(client, app):
    client.get("/sandbox")
    token = _service_token(client, app, " ".join(
        f"https://purl.imsglobal.org/spec/lti-ags/scope/{s}" for s in ("lineitem", "score", "result.readonly")))
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/sandbox/api/contexts/{sb.CONTEXT_ID}/lineitems"
    item = client.post(base, json={"label": "Mastery check", "scoreMaximum": 100}, headers=auth).get_json()
    path = item["id"].replace("http://localhost", "")
    score = {"userId": "sandbox-maya", "scoreGiven": 100, "scoreMaximum": 100, "activityProgress": "Completed",
             "gradingProgress": "FullyGraded", "timestamp": "2026-11-25T10:00:00.000+00:00"}
    assert client.post(f"{path}/scores", json=score, headers=auth).status_code == 204
    older = {**score, "scoreGiven": 10, "timestamp": "2026-11-25T09:00:00.000+00:00"}
    assert client.post(f"{path}/scores", json=older, headers=auth).status_code == 409
    results = client.get(f"{path}/results", headers=auth).get_json()
    assert [(r["userId"], r["resultScore"]) for r in results] == [("sandbox-maya", 100.0)]
    assert client.get(base).status_code == 401
    assert "100.0" in client.get("/sandbox/gradebook").get_data(as_text=True)
