"""Inside an LMS frame: cookie check with a new-window offer, and LTI platform storage when cookies are blocked."""

from __future__ import annotations

import re

from tests.htmlforms import parse


def test_login_in_a_frame_checks_cookies_and_offers_a_new_window(client, lti):
    resp = client.get("/lti/login", headers={"Sec-Fetch-Dest": "iframe"}, query_string={
        "iss": lti.issuer, "login_hint": "h", "target_link_uri": "http://localhost/lti/launch",
        "client_id": lti.client_id})
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert 'data-auth-url="https://lms.example.edu/auth?' in html
    new_window = next(a for a in parse(html).links if a.get("target") == "_blank")
    assert "new_window=1" in new_window["href"]
    second = client.get(new_window["href"], headers={"Sec-Fetch-Dest": "document"})
    assert second.status_code == 302


def test_platform_storage_round_trip(app, lti):
    client = app.test_client()
    resp = client.get("/lti/login", query_string={
        "iss": lti.issuer, "login_hint": "h", "target_link_uri": "http://localhost/lti/launch",
        "client_id": lti.client_id, "lti_storage_target": "post_message_forwarding"})
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "lti.put_data" in html
    state = re.search(r'data-state="([^"]+)"', html).group(1)
    nonce = re.search(r'data-nonce="([^"]+)"', html).group(1)
    assert 'data-origin="https://lms.example.edu"' in html
    token = lti.sign(lti.claims(nonce))
    # A browser that blocks third-party cookies: a fresh client without the state cookie.
    blocked = app.test_client()
    page = blocked.post("/lti/launch", data={"id_token": token, "state": state,
                                             "lti_storage_target": "post_message_forwarding"})
    assert page.status_code == 200 and "lti.get_data" in page.get_data(as_text=True)
    form = parse(page.get_data(as_text=True)).forms[0]
    wrong = blocked.post(form["action"], data={**form["fields"], "lti_storage_state": "not-the-state"})
    assert wrong.status_code == 401
    ok = blocked.post(form["action"], data={**form["fields"], "lti_storage_state": state})
    assert ok.status_code == 303


def test_cookie_state_mismatch_offers_a_new_window(app, lti):
    st, nonce = lti.login(app.test_client())
    resp = app.test_client().post("/lti/launch", data={"id_token": lti.sign(lti.claims(nonce)), "state": st})
    assert resp.status_code == 401
    assert "new window" in resp.get_data(as_text=True)
