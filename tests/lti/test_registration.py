"""LTI Dynamic Registration against platforms simulated with `responses` (Moodle and Canvas flavours)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import responses
from sqlalchemy import select

from plugin.store.db import get_store
from plugin.store.models import Deployment, District, Platform

FIXTURES = Path(__file__).parent.parent / "fixtures" / "lti"
MOODLE_CONF = "https://moodle.example.edu/mod/lti/openid-configuration.php"
CANVAS_CONF = "https://district.instructure.com/api/lti/security/openid-configuration"


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def moodle():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(MOODLE_CONF, json=_load("moodle_openid_configuration.json"))
        mock.post("https://moodle.example.edu/mod/lti/openid-registration.php",
                  json=_load("moodle_registration_response.json"))
        yield mock


def _platforms(app):
    with get_store(app).session() as s:
        return [(p.issuer, p.client_id, p.registered_via, p.product_family, p.auth_login_url,
                 sorted(s.scalars(select(Deployment.deployment_id).where(Deployment.platform_id == p.id))))
                for p in s.scalars(select(Platform).where(Platform.registered_via != "sandbox"))]


def test_moodle_dynamic_registration(client, app, moodle):
    resp = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF,
                                                     "registration_token": "reg-token-1"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    html = resp.get_data(as_text=True)
    assert "org.imsglobal.lti.close" in html
    assert _platforms(app) == [("https://moodle.example.edu", "Mh3qW7xBfA2e9Zk", "dynamic", "moodle",
                                "https://moodle.example.edu/mod/lti/auth.php", ["7"])]
    conf_call, reg_call = moodle.calls
    assert conf_call.request.headers["Authorization"] == "Bearer reg-token-1"
    assert reg_call.request.headers["Authorization"] == "Bearer reg-token-1"
    body = json.loads(reg_call.request.body)
    assert body["initiate_login_uri"] == "http://localhost/lti/login"
    assert body["redirect_uris"] == ["http://localhost/lti/launch"]
    assert body["jwks_uri"] == "http://localhost/lti/jwks"
    assert "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly" in body["scope"]
    assert "https://purl.imsglobal.org/spec/lti-ags/scope/score" in body["scope"]
    tool = body["https://purl.imsglobal.org/spec/lti-tool-configuration"]
    types = [m["type"] for m in tool["messages"]]
    assert types == ["LtiResourceLinkRequest", "LtiDeepLinkingRequest"]
    assert tool["messages"][1]["placements"] == ["ContentArea"]


def test_canvas_dynamic_registration_uses_canvas_placements(client, app):
    with responses.RequestsMock() as mock:
        mock.get(CANVAS_CONF, json=_load("canvas_openid_configuration.json"))
        mock.post("https://district.instructure.com/api/lti/registrations",
                  json=_load("canvas_registration_response.json"))
        resp = client.get("/lti/register", query_string={"openid_configuration": CANVAS_CONF,
                                                         "registration_token": "abc"})
        assert resp.status_code == 200, resp.get_data(as_text=True)
        body = json.loads(mock.calls[1].request.body)
    tool = body["https://purl.imsglobal.org/spec/lti-tool-configuration"]
    assert "https://canvas.instructure.com/lti/course_navigation" in tool["messages"][0]["placements"]
    assert tool["https://canvas.instructure.com/lti/privacy_level"] == "public"
    [(issuer, client_id, via, family, auth, deps)] = _platforms(app)
    assert (issuer, client_id, family) == ("https://canvas.instructure.com", "10000000000123", "canvas")
    assert auth == "https://sso.canvaslms.com/api/lti/authorize_redirect"
    assert deps == ["8:794d72b707af6ea82cfe3d5d473f16888a8366c7"]


def test_two_canvas_customers_share_an_issuer(client, app):
    for client_id in ("10000000000123", "10000000000456"):
        with responses.RequestsMock() as mock:
            mock.get(CANVAS_CONF, json=_load("canvas_openid_configuration.json"))
            mock.post("https://district.instructure.com/api/lti/registrations",
                      json={**_load("canvas_registration_response.json"), "client_id": client_id})
            assert client.get("/lti/register", query_string={"openid_configuration": CANVAS_CONF}).status_code == 200
    assert sorted(p[1] for p in _platforms(app)) == ["10000000000123", "10000000000456"]


def test_issuer_must_match_configuration_url(client, app):
    conf = {**_load("moodle_openid_configuration.json"), "issuer": "https://evil.example.com"}
    with responses.RequestsMock() as mock:
        mock.get(MOODLE_CONF, json=conf)
        resp = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF})
    assert resp.status_code == 400 and "registration_issuer_mismatch" in resp.get_data(as_text=True)
    assert _platforms(app) == []


def test_configuration_missing_fields_is_refused(client, app):
    conf = _load("moodle_openid_configuration.json")
    del conf["registration_endpoint"]
    with responses.RequestsMock() as mock:
        mock.get(MOODLE_CONF, json=conf)
        resp = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF})
    assert resp.status_code == 400
    assert "registration_endpoint" in resp.get_data(as_text=True)


def test_platform_failure_is_a_clear_400(client):
    with responses.RequestsMock() as mock:
        mock.get(MOODLE_CONF, status=500, body="boom")
        resp = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF})
    assert resp.status_code == 400 and "HTTP 500" in resp.get_data(as_text=True)


def test_http_platform_refused_unless_loopback(client):
    resp = client.get("/lti/register", query_string={"openid_configuration": "http://moodle.example.edu/conf"})
    assert resp.status_code == 400 and "must use https" in resp.get_data(as_text=True)


def test_register_without_parameters_explains_itself(client):
    resp = client.get("/lti/register")
    assert resp.status_code == 400 and "Dynamic Registration URL" in resp.get_data(as_text=True)


@pytest.fixture
def production_app(app_config):
    from plugin.app import create_app
    from plugin.cli import bootstrap

    app_config = {**app_config, "mode": "production", "sandbox": {"enabled": False},
                  "server": {**app_config["server"], "public_url": "https://tool.example.org"},
                  "districts": [{"slug": "north", "name": "North", "issuer_allowlist": ["https://canvas.instructure.com"]},
                                {"slug": "south", "name": "South"}]}
    application = create_app(app_config, env={})
    bootstrap(application)
    return application


def test_production_refuses_unknown_issuer_without_code(production_app, moodle):
    client = production_app.test_client()
    resp = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF},
                      base_url="https://tool.example.org")
    assert resp.status_code == 403 and "platform invite" in resp.get_data(as_text=True)
    assert _platforms(production_app) == []


def test_production_accepts_allowlisted_issuer(production_app):
    client = production_app.test_client()
    with responses.RequestsMock() as mock:
        mock.get(CANVAS_CONF, json=_load("canvas_openid_configuration.json"))
        mock.post("https://district.instructure.com/api/lti/registrations",
                  json=_load("canvas_registration_response.json"))
        resp = client.get("/lti/register", query_string={"openid_configuration": CANVAS_CONF})
    assert resp.status_code == 200
    with get_store(production_app).session() as s:
        platform = s.scalars(select(Platform)).one()
        assert s.get(District, platform.district_id).slug == "north"


def test_invite_code_is_one_time_and_picks_the_district(production_app, moodle):
    runner = production_app.test_cli_runner()
    out = runner.invoke(args=["platform", "invite", "--district", "south"])
    assert out.exit_code == 0, out.output
    url = out.output.splitlines()[0]
    assert url.startswith("https://tool.example.org/lti/register?code=")
    code = url.split("code=")[1]
    client = production_app.test_client()
    resp = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF, "code": code})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    with get_store(production_app).session() as s:
        platform = s.scalars(select(Platform)).one()
        assert s.get(District, platform.district_id).slug == "south"
    again = client.get("/lti/register", query_string={"openid_configuration": MOODLE_CONF, "code": code})
    assert again.status_code == 403 and "already used" in again.get_data(as_text=True)
