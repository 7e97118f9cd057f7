"""JWKS publication and rotation, the Canvas developer-key JSON, the home page, health."""

from __future__ import annotations


def test_jwks_publishes_active_key(client):
    data = client.get("/lti/jwks").get_json()
    assert len(data["keys"]) == 1
    key = data["keys"][0]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["kid"]
    assert "d" not in key and "p" not in key  # never the private parts


def test_rotated_key_stays_published_until_retired(client, runner):
    old = client.get("/lti/jwks").get_json()["keys"][0]["kid"]
    out = runner.invoke(args=["keys", "rotate"])
    assert out.exit_code == 0 and old in out.output
    kids = [k["kid"] for k in client.get("/lti/jwks").get_json()["keys"]]
    assert old in kids and len(kids) == 2
    refused = runner.invoke(args=["keys", "retire", kids[-1]])
    assert refused.exit_code != 0 and "active signing key" in refused.output
    assert runner.invoke(args=["keys", "retire", old]).exit_code == 0
    assert [k["kid"] for k in client.get("/lti/jwks").get_json()["keys"]] == [kids[-1]]
    listing = runner.invoke(args=["keys", "list"]).output
    assert "retired" in listing and "active" in listing


def test_deep_link_responses_are_signed_with_the_new_key_after_rotation(app, runner):
    from plugin.lti import keys
    from plugin.store.db import get_store

    runner.invoke(args=["keys", "rotate"])
    with get_store(app).session() as s:
        signing = keys.signing_key(s)
        active = [k["kid"] for k in keys.jwks(s)["keys"]][-1]
    assert signing.kid == active


def test_canvas_developer_key_json(client):
    data = client.get("/lti/config/canvas.json").get_json()
    assert data["oidc_initiation_url"] == "http://localhost/lti/login"
    assert data["target_link_uri"] == "http://localhost/lti/launch"
    assert data["public_jwk_url"] == "http://localhost/lti/jwks"
    ext = data["extensions"][0]
    assert ext["platform"] == "canvas.instructure.com" and ext["privacy_level"] == "public"
    placements = {p["placement"]: p["message_type"] for p in ext["settings"]["placements"]}
    assert placements["course_navigation"] == "LtiResourceLinkRequest"
    assert placements["link_selection"] == "LtiDeepLinkingRequest"
    assert "https://purl.imsglobal.org/spec/lti-ags/scope/score" in data["scopes"]


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_pages_send_no_referrer(client):
    assert client.get("/sandbox").headers["Referrer-Policy"] == "no-referrer"


def test_home_page_leads_to_the_sandbox_and_lists_the_registration_addresses(client):
    resp = client.get("/")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert 'href="/sandbox/"' in page and 'href="/admin/"' in page
    for path in ("/lti/register", "/lti/login", "/lti/launch", "/lti/jwks", "/lti/config/canvas.json"):
        assert f"http://localhost{path}" in page


def test_home_page_without_sandbox_or_admin_links_to_neither(app_config):
    from plugin.app import create_app

    app_config["sandbox"] = {"enabled": False}
    app_config["admin"] = {"enabled": False}
    page = create_app(app_config, env={}).test_client().get("/").get_data(as_text=True)
    assert "/sandbox" not in page and "/admin" not in page
    assert "http://localhost/lti/register" in page


def test_unknown_page_is_a_friendly_404(client):
    resp = client.get("/nowhere")
    assert resp.status_code == 404 and "no page at this address" in resp.get_data(as_text=True)


def test_unexpected_error_rolls_back_and_shows_a_page(app, client):
    from sqlalchemy import func, select

    from plugin.store.db import get_session, get_store
    from plugin.store.models import District

    @app.get("/boom")
    def boom():
        from datetime import UTC, datetime

        get_session().add(District(slug="half-done", name="x", settings={}, created_at=datetime.now(UTC)))
        get_session().flush()
        raise RuntimeError("boom")

    resp = client.get("/boom")
    assert resp.status_code == 500 and "Traceback" not in resp.get_data(as_text=True)
    with get_store(app).session() as s:
        assert s.scalar(select(func.count()).select_from(District).where(District.slug == "half-done")) == 0
