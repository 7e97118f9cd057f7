"""Every check a tool must make on a launch, with real signed id_tokens."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from plugin.store.db import get_store
from plugin.store.models import AppSession, Enrollment, LoginState, Person, UsedNonce
from tests.lti_platform import DROP, LTI, new_rsa


def _refused(resp, reason: str, status: int | None = None) -> None:
    body = resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500, (resp.status_code, body[:500])
    if status is not None:
        assert resp.status_code == status
    assert reason in body
    assert "Traceback" not in body


def test_teacher_launch_opens_teacher_view(client, lti, app):
    resp = lti.launch(client, "teacher")
    assert resp.status_code == 303
    panel = resp.headers["Location"]
    assert "/p/teacher?ltik=" in panel  # straight to the view's panel, no hop through /p/home
    page = client.get(panel)
    assert page.status_code == 200
    assert "Biology 1" in page.get_data(as_text=True)
    with get_store(app).session() as s:
        row = s.scalars(select(AppSession)).one()
        assert (row.view, row.context_id, row.deployment_id, row.user_sub) == ("teacher", "course-1", "dep-1",
                                                                              "user-teacher")
        assert s.scalar(select(func.count()).select_from(Enrollment).where(Enrollment.sourced_id.like("lti:%"))) == 1


@pytest.mark.parametrize("role,view", [("student", "student"), ("parent", "parent"), ("admin", "admin"),
                                       ("ta", "teacher"), ("designer", "teacher")])
def test_roles_map_to_views(client, lti, role, view):
    resp = lti.launch(client, role)
    assert resp.status_code == 303
    assert ("/admin/" if view == "admin" else f"/p/{view}?") in resp.headers["Location"]
    assert client.get(resp.headers["Location"]).status_code == 200


def test_unknown_role_gets_friendly_page(client, lti):
    resp = lti.launch(client, "guest")
    assert resp.status_code == 403
    assert "nothing for your role" in resp.get_data(as_text=True)


def test_bad_signature_is_refused(client, lti):
    st, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce), key=new_rsa())
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), "bad_signature", 401)


def test_tampered_payload_is_refused(client, lti):
    st, nonce = lti.login(client)
    header, payload, sig = lti.sign(lti.claims(nonce)).split(".")
    other = lti.sign(lti.claims(nonce, sub="someone-else")).split(".")[1]
    _refused(client.post("/lti/launch", data={"id_token": f"{header}.{other}.{sig}", "state": st}),
             "bad_signature", 401)


def test_a_signature_in_a_non_canonical_encoding_is_refused(client, lti):
    """The same signature bytes spelt differently (trailing bits set) are not the token the platform signed."""
    st, nonce = lti.login(client)
    header, payload, sig = lti.sign(lti.claims(nonce)).split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelt = sig[:-1] + alphabet[alphabet.index(sig[-1]) ^ 1]  # a 2048-bit signature leaves 2 spare bits
    _refused(client.post("/lti/launch", data={"id_token": f"{header}.{payload}.{respelt}", "state": st}),
             "bad_signature", 401)


@pytest.mark.parametrize("headers,reason,status", [
    ({"crit": ["exp"], "exp": 1}, "invalid_id_token", 401),  # JWS extensions LTI does not use
    ({"b64": False, "crit": ["b64"]}, "malformed_id_token", 400),  # an unencoded payload is not base64url
])
def test_jws_extensions_are_refused(client, lti, headers, reason, status):
    st, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce), headers=headers)
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), reason, status)


@pytest.mark.parametrize("claims,reason", [
    ({"iat": "1700000000"}, "invalid_id_token"),
    ({"exp": "soon"}, "invalid_id_token"),
    ({"iat": True}, "invalid_id_token"),
    ({"nbf": 4102444800}, "issued_in_future"),  # not before 2100
    ({"aud": ["client-1", 7], "azp": "client-1"}, "wrong_aud"),
])
def test_malformed_registered_claims_are_refused(client, lti, claims, reason):
    resp = lti.launch(client, **claims)
    body = resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500 and reason in body, (resp.status_code, body[:400])


def test_unknown_kid_refetches_once_then_refuses(client, lti, app):
    lti.launch(client)  # warm the key cache, then let it age past the re-fetch floor
    with get_store(app).session() as s:
        from datetime import UTC, datetime, timedelta

        from plugin.store.models import PlatformKeySet

        s.scalars(select(PlatformKeySet)).one().fetched_at = datetime.now(UTC) - timedelta(minutes=1)
    st, nonce = lti.login(client)
    calls = lti.jwks_calls
    token = lti.sign(lti.claims(nonce), kid="never-published")
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), "unknown_kid", 401)
    assert lti.jwks_calls == calls + 1


def test_rotated_platform_key_is_picked_up(client, lti, app):
    assert lti.launch(client).status_code == 303
    lti.key, lti.kid = new_rsa(), "platform-key-2"
    with get_store(app).session() as s:  # the cached key set is older than the re-fetch floor
        from datetime import UTC, datetime, timedelta

        from plugin.store.models import PlatformKeySet

        row = s.scalars(select(PlatformKeySet)).one()
        row.fetched_at = datetime.now(UTC) - timedelta(minutes=5)
    assert lti.launch(client).status_code == 303


def test_platform_keys_are_cached_between_launches(client, lti):
    for _ in range(3):
        assert lti.launch(client).status_code == 303
    assert lti.jwks_calls == 1


def test_no_store_key_set_is_fetched_every_time(client, lti):
    lti.jwks_headers = {"Cache-Control": "no-store"}
    for _ in range(2):
        assert lti.launch(client).status_code == 303
    assert lti.jwks_calls == 2


@pytest.mark.parametrize("alg", ["HS256", "none"])
def test_symmetric_and_none_algorithms_are_refused(client, lti, alg):
    st, nonce = lti.login(client)
    import base64
    import json

    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': alg, 'kid': lti.kid, 'typ': 'JWT'})}.{b64(lti.claims(nonce))}.c2ln"
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), "bad_alg", 401)


def test_wrong_issuer_is_refused(client, lti):
    _refused(lti.launch(client, iss="https://evil.example.com"), "unknown_platform", 401)


def test_aud_without_our_client_id_is_refused(client, lti):
    _refused(lti.launch(client, aud="someone-else", azp=DROP), "unknown_platform", 401)


def test_extra_audiences_need_matching_azp(client, lti):
    _refused(lti.launch(client, aud=["client-1", "other"], azp=DROP), "wrong_aud", 401)
    _refused(lti.launch(client, aud=["client-1", "other"], azp="other"), "unknown_platform", 401)
    assert lti.launch(client, aud=["client-1", "other"], azp="client-1").status_code == 303


def test_unknown_deployment_is_refused(client, lti):
    _refused(lti.launch(client, lti_deployment_id="dep-unknown"), "unknown_deployment", 403)


def test_expired_token_is_refused(client, lti):
    now = int(time.time())
    _refused(lti.launch(client, iat=now - 900, exp=now - 600), "expired", 401)


def test_token_from_the_future_is_refused_beyond_leeway(client, lti):
    now = int(time.time())
    _refused(lti.launch(client, iat=now + 600, exp=now + 900), "issued_in_future", 401)


def test_lms_clock_thirty_seconds_ahead_still_works(client, lti):
    now = int(time.time())
    assert lti.launch(client, iat=now + 30, exp=now + 330).status_code == 303


def test_old_token_with_long_exp_is_refused(client, lti):
    now = int(time.time())
    _refused(lti.launch(client, iat=now - 7200, exp=now + 3600), "expired", 401)


def test_replayed_launch_is_refused(client, lti, app):
    st, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce))
    assert client.post("/lti/launch", data={"id_token": token, "state": st}).status_code == 303
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), "nonce_replayed", 401)
    with get_store(app).session() as s:
        assert s.get(UsedNonce, nonce) is not None


def test_replayed_nonce_is_refused_from_another_browser(app, lti):
    first, second = app.test_client(), app.test_client()
    st, nonce = lti.login(first)
    token = lti.sign(lti.claims(nonce))
    assert first.post("/lti/launch", data={"id_token": token, "state": st}).status_code == 303
    st2, _ = lti.login(second)
    _refused(second.post("/lti/launch", data={"id_token": token, "state": st2}), "nonce_replayed", 401)


def test_nonce_not_issued_for_this_login_is_refused(client, lti):
    st, _nonce = lti.login(client)
    token = lti.sign(lti.claims("a-nonce-we-never-issued"))
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), "nonce_mismatch", 401)


def test_missing_state_is_refused(client, lti):
    _st, nonce = lti.login(client)
    _refused(client.post("/lti/launch", data={"id_token": lti.sign(lti.claims(nonce))}), "missing_state", 400)


def test_unknown_state_is_refused(client, lti):
    _st, nonce = lti.login(client)
    _refused(lti.launch(client, state="made-up-state"), "state_unknown", 401)


def test_state_cookie_from_another_browser_is_refused(app, lti):
    victim, attacker = app.test_client(), app.test_client()
    st, nonce = lti.login(attacker)
    token = lti.sign(lti.claims(nonce))
    resp = victim.post("/lti/launch", data={"id_token": token, "state": st})
    assert resp.status_code == 401
    assert "new window" in resp.get_data(as_text=True) or "cookie" in resp.get_data(as_text=True)


@pytest.mark.parametrize("claim,reason", [
    ("lti_message_type", "missing_claim"), ("lti_version", "missing_claim"), ("lti_deployment_id", "missing_claim"),
    ("lti_target_link_uri", "missing_claim"), ("lti_resource_link", "missing_claim"), ("lti_roles", "missing_claim"),
    ("sub", "missing_claim"), ("nonce", "missing_claim"),
])
def test_required_claims(client, lti, claim, reason):
    _refused(lti.launch(client, **{claim: DROP}), reason)


def test_wrong_version_is_refused(client, lti):
    _refused(lti.launch(client, lti_version="1.1"), "missing_claim")


def test_unsupported_message_type_is_refused(client, lti):
    _refused(lti.launch(client, lti_message_type="LtiStartProctoring"), "unsupported_message_type")


def test_target_link_uri_elsewhere_is_refused(client, lti):
    _refused(lti.launch(client, lti_target_link_uri="https://evil.example.com/lti/launch"), "bad_target_link_uri")


def test_login_for_unknown_issuer_is_refused(client, lti):
    resp = client.get("/lti/login", query_string={"iss": "https://nobody.example", "login_hint": "x",
                                                  "target_link_uri": "http://localhost/lti/launch"})
    _refused(resp, "unknown_platform", 400)


def test_login_needs_client_id_when_issuer_has_several(client, lti, app):
    from plugin.lti.platforms import add_platform
    from plugin.store.models import District

    with get_store(app).session() as s:
        d = s.scalars(select(District).where(District.slug == "north")).one()
        add_platform(s, d, issuer=lti.issuer, client_id="client-2", deployment_ids=["dep-2"],
                     auth_login_url=lti.auth_url, auth_token_url=lti.token_url, key_set_url=lti.jwks_url)
    resp = client.get("/lti/login", query_string={"iss": lti.issuer, "login_hint": "x",
                                                  "target_link_uri": "http://localhost/lti/launch"})
    _refused(resp, "client_id")
    assert lti.launch(client).status_code == 303


def test_login_missing_params(client):
    _refused(client.get("/lti/login"), "missing_login_param", 400)
    _refused(client.post("/lti/login", data={"iss": "x"}), "missing_login_param", 400)


def test_login_state_is_single_use_and_expires(client, lti, app):
    st, nonce = lti.login(client)
    with get_store(app).session() as s:
        row = s.get(LoginState, st)
        from datetime import UTC, datetime, timedelta

        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    token = lti.sign(lti.claims(nonce))
    _refused(client.post("/lti/launch", data={"id_token": token, "state": st}), "state_unknown", 401)


def test_many_launches_in_one_browser_keep_working(client, lti):
    tickets = []
    for _ in range(12):
        resp = lti.launch(client, "teacher")
        assert resp.status_code == 303
        tickets.append(resp.headers["Location"])
    cookie_names = {c.key for c in client._cookies.values()} if hasattr(client, "_cookies") else set()
    assert not [n for n in cookie_names if n.startswith("tm_state_")]
    for panel in tickets:  # every launch's session still opens its panel
        assert client.get(panel).status_code == 200


def test_home_sends_a_bookmarked_launch_to_its_panel(client, lti):
    for role, path in (("teacher", "/p/teacher"), ("student", "/p/student")):
        panel = lti.launch(client, role).headers["Location"]
        ltik = panel.split("ltik=")[1]
        home = client.get("/p/home", query_string={"ltik": ltik})
        assert home.status_code == 302 and home.headers["Location"] == panel
        assert path in panel


def test_second_launch_reuses_the_person(client, lti, app):
    lti.launch(client, "student")
    lti.launch(client, "student")
    with get_store(app).session() as s:
        assert s.scalar(select(func.count()).select_from(Person)
                        .where(Person.sourced_id.like("lti:%"))) == 1


def test_launch_matches_roster_person_by_sis_id(client, lti, app):
    from datetime import UTC, datetime

    from plugin.store.models import District

    with get_store(app).session() as s:
        d = s.scalars(select(District).where(District.slug == "north")).one()
        s.add(Person(district_id=d.id, sourced_id="SIS-42", sis_id="SIS-42", role="student", given_name="Ana",
                     family_name="Lopez", status="active", updated_at=datetime.now(UTC)))
    resp = lti.launch(client, "student", **{LTI + "lis": {"person_sourcedid": "SIS-42"}})
    assert resp.status_code == 303
    with get_store(app).session() as s:
        assert s.scalar(select(func.count()).select_from(Person).where(Person.district_id == d.id)) == 1


def test_platform_error_response_is_shown(client):
    resp = client.post("/lti/launch", data={"error": "login_required", "error_description": "No session"})
    _refused(resp, "platform_error", 400)


def test_garbage_id_token_is_a_clear_400(client, lti):
    st, _ = lti.login(client)
    _refused(client.post("/lti/launch", data={"id_token": "not.a.jwt", "state": st}), "malformed_id_token", 400)
