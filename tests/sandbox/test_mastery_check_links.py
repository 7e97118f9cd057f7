"""A mastery check placed by deep linking in the sandbox LMS keeps its URL, and launches through it open Trailmark."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from sqlalchemy import select

from plugin.store.db import get_store
from plugin.store.models import SandboxLineItem, SandboxResourceLink
from tests.htmlforms import follow_sandbox_launch, parse

CONTENT_ITEMS = "https://purl.imsglobal.org/spec/lti-dl/claim/content_items"


def _place_check(client) -> dict:
    """Deep link the check of sandbox module 1 as the teacher; return its content item."""
    picker = client.get(follow_sandbox_launch(client, "teacher", hint="deep-link").headers["Location"])
    form = parse(picker.get_data(as_text=True)).forms[0]
    done = client.post(form["action"], data={**form["fields"], "item": ["mastery-check:sandbox-module-1"]})
    ret = parse(done.get_data(as_text=True)).forms[0]
    (item,) = jwt.decode(ret["fields"]["JWT"], options={"verify_signature": False})[CONTENT_ITEMS]
    assert client.post(ret["action"].replace("http://localhost", ""), data=ret["fields"]).status_code == 200
    return item


def _launch_through(client, user_key: str, target: str, hint: str):
    """Launch as the LMS does for a placed link: the login names the link's URL as target_link_uri."""
    page = client.get(f"/sandbox/course/{user_key}?hint={hint}")
    login = urlsplit(parse(page.get_data(as_text=True)).iframes[0])
    query = {k: v[0] for k, v in parse_qs(login.query).items()} | {"target_link_uri": target}
    resp = client.get(f"{login.path}?{urlencode(query)}")
    assert resp.status_code == 302, resp.get_data(as_text=True)[:400]
    auth = client.get(resp.headers["Location"].replace("http://localhost", ""))
    form = parse(auth.get_data(as_text=True)).forms[0]
    return client.post(form["action"].replace("http://localhost", ""), data=form["fields"])


def test_the_placed_check_keeps_its_url_and_launches(client, app):
    item = _place_check(client)

    url = "http://localhost/lti/launch?placement=mastery-check&module=sandbox-module-1"
    assert item["url"] == url
    with get_store(app).session() as s:
        link = s.scalars(select(SandboxResourceLink).order_by(SandboxResourceLink.id.desc())).first()
        line = s.get(SandboxLineItem, link.line_item_id)
        assert link.url == url and line.tag == "trailmark-mastery-check"
        hint = f"sandbox-link-{link.id}"

    resp = _launch_through(client, "leo", link.url, hint)

    assert resp.status_code == 303, resp.get_data(as_text=True)[:500]
    assert "/p/student?" in resp.headers["Location"]
    assert "My learner profile" in client.get(resp.headers["Location"]).get_data(as_text=True)
