"""The admin JSON API: bearer tokens, the OpenAPI document, every route, audit and district isolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from openapi_spec_validator import validate
from sqlalchemy import select

from plugin import jobs
from plugin.store.db import get_store
from plugin.store.models import ApiToken, AuditEvent, District, OutboxItem, Person
from tests.admin.conftest import district_id
from tests.connectors.sync_support import top_up_schema

SOURCES = [{"name": "sis", "kind": "fake", "district": "north", "schedule": "1h", "classes": 1,
            "students_per_class": 2}]
PLATFORM = {"issuer": "https://canvas.instructure.com", "client_id": "10000000000123", "deployment_ids": ["8:abc"],
            "auth_login_url": "https://sso.canvaslms.com/api/lti/authorize_redirect",
            "auth_token_url": "https://sso.canvaslms.com/login/oauth2/token",
            "key_set_url": "https://sso.canvaslms.com/api/lti/security/jwks", "product_family": "canvas"}


@pytest.fixture
def app_config(app_config: dict[str, Any], database_url: str) -> dict[str, Any]:
    top_up_schema(database_url)
    return {**app_config, "sources": [dict(s) for s in SOURCES]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- the OpenAPI document


@pytest.mark.usefixtures("sandbox_off")
def test_openapi_document_is_valid_and_matches_the_routes(client: Any, app: Any) -> None:
    doc = client.get("/api/admin/openapi.json").get_json()
    validate(doc)
    assert doc["servers"] == [{"url": "http://localhost/api/admin"}]
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/admin/") and rule.endpoint != "admin_api.openapi":
            path = rule.rule.removeprefix("/api/admin")
            for part in rule.arguments:
                path = path.replace(f"<int:{part}>", f"{{{part}}}").replace(f"<{part}>", f"{{{part}}}")
            routed |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["security"] == [{"token": []}] and "401" in op["responses"]
            if "{" in path:
                assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == {
                    seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
    assert doc["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


@pytest.mark.usefixtures("sandbox_off")
def test_answers_match_their_documented_schemas(client: Any, app: Any, make_token: Any) -> None:
    """Every GET answer validates against the response schema the document gives for it."""
    from jsonschema import Draft202012Validator

    assert jobs.run_source(app, "sis").ok
    doc = client.get("/api/admin/openapi.json").get_json()
    token = make_token("north")
    with get_store(app).session() as session:
        run_id = session.scalars(select(jobs.models.SyncRun.id)).first()
        person = session.scalars(select(Person.id).where(Person.district_id == district_id(app, "north"))).first()
    values = {"run_id": run_id, "person_id": person}
    for path, ops in doc["paths"].items():
        if "get" not in ops:
            continue
        url = "/api/admin" + path.format(**values)
        resp = client.get(url, headers=bearer(token))
        assert resp.status_code == 200, (url, resp.get_json())
        schema = ops["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": doc["components"]}).validate(resp.get_json())


# --------------------------------------------------------------------------- tokens


@pytest.mark.usefixtures("sandbox_off")
def test_requests_without_a_live_token_are_refused(client: Any, app: Any, make_token: Any) -> None:
    assert client.get("/api/admin/platforms").status_code == 401
    resp = client.get("/api/admin/platforms", headers=bearer("tmk_not-a-real-token"))
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.get_json()["error"] == "Unauthorized"
    expired = make_token("north", days=1)
    with get_store(app).session() as session:
        row = session.scalars(select(ApiToken)).one()
        row.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    assert client.get("/api/admin/platforms", headers=bearer(expired)).status_code == 401
    live = make_token("north")
    assert client.get("/api/admin/platforms", headers=bearer(live)).status_code == 200
    with get_store(app).session() as session:
        for row in session.scalars(select(ApiToken)):
            row.revoked_at = datetime.now(UTC)
    assert client.get("/api/admin/platforms", headers=bearer(live)).status_code == 401


@pytest.mark.usefixtures("sandbox_off")
def test_tokens_are_stored_hashed(app: Any, make_token: Any) -> None:
    secret = make_token("north")
    with get_store(app).session() as session:
        row = session.scalars(select(ApiToken)).one()
    assert secret not in (row.token_hash, row.prefix) and len(row.token_hash) == 64
    assert secret.startswith(row.prefix)


def test_the_launch_session_ticket_is_not_an_api_token(client: Any, admin_ltik: str) -> None:
    assert client.get("/api/admin/platforms", headers=bearer(admin_ltik)).status_code == 401


# --------------------------------------------------------------------------- endpoints


@pytest.mark.usefixtures("sandbox_off")
def test_platforms_add_list_remove(client: Any, app: Any, make_token: Any) -> None:
    token = make_token("north")
    assert client.get("/api/admin/platforms", headers=bearer(token)).get_json() == []
    bad = client.post("/api/admin/platforms", json={**PLATFORM, "key_set_url": "nope"}, headers=bearer(token))
    assert bad.status_code == 400 and "key_set_url" in bad.get_json()["message"]
    missing = client.post("/api/admin/platforms", json={"issuer": "https://x.example"}, headers=bearer(token))
    assert missing.status_code == 400
    made = client.post("/api/admin/platforms", json=PLATFORM, headers=bearer(token))
    assert made.status_code == 201
    body = made.get_json()
    assert body["deployment_ids"] == ["8:abc"] and body["registered_via"] == "manual"
    listed = client.get("/api/admin/platforms", headers=bearer(token)).get_json()
    assert [p["client_id"] for p in listed] == ["10000000000123"]
    assert client.delete(f"/api/admin/platforms/{body['id']}", headers=bearer(token)).status_code == 204
    assert client.get("/api/admin/platforms", headers=bearer(token)).get_json() == []
    with get_store(app).session() as session:
        events = list(session.scalars(select(AuditEvent).where(AuditEvent.action.like("admin.platform_%"))))
    assert [e.action for e in events] == ["admin.platform_added", "admin.platform_removed"]
    assert all(e.actor.startswith("token:") and e.detail["via"] == "token" for e in events)


def test_a_token_sees_and_changes_only_its_district(client: Any, app: Any, make_token: Any) -> None:
    north, sandbox = make_token("north"), make_token("sandbox")
    listed = client.get("/api/admin/platforms", headers=bearer(sandbox)).get_json()
    assert [p["product_family"] for p in listed] == ["sandbox"]
    sandbox_platform = listed[0]["id"]
    assert client.get("/api/admin/platforms", headers=bearer(north)).get_json() == []
    assert client.delete(f"/api/admin/platforms/{sandbox_platform}", headers=bearer(north)).status_code == 404
    taken = client.post("/api/admin/platforms", headers=bearer(north), json={
        **PLATFORM, "issuer": listed[0]["issuer"], "client_id": listed[0]["client_id"],
        "auth_login_url": "http://localhost/a", "auth_token_url": "http://localhost/b",
        "key_set_url": "http://localhost/c"})
    assert taken.status_code == 409
    with get_store(app).session() as session:
        item = OutboxItem(district_id=district_id(app, "sandbox"), kind="score", idempotency_key="k",
                          payload={"type": "score"}, status="dead", attempts=8, next_attempt_at=datetime.now(UTC),
                          created_at=datetime.now(UTC), last_error="gone")
        session.add(item)
        session.flush()
        item_id = item.id
        maya = session.scalars(select(Person.id).where(Person.sis_id == "S-2001")).one()
    assert client.post(f"/api/admin/outbox/{item_id}/retry", headers=bearer(north)).status_code == 404
    assert client.get("/api/admin/outbox", headers=bearer(north)).get_json()["counts"]["dead"] == 0
    assert client.get(f"/api/admin/people/{maya}/export", headers=bearer(north)).status_code == 404
    assert client.post(f"/api/admin/people/{maya}/erase", json={"confirm": True},
                       headers=bearer(north)).status_code == 404
    assert client.get("/api/admin/district", headers=bearer(north)).get_json()["slug"] == "north"
    assert client.get("/api/admin/audit-events", headers=bearer(north)).get_json() == []
    retried = client.post(f"/api/admin/outbox/{item_id}/retry", headers=bearer(sandbox))
    assert retried.status_code == 200 and retried.get_json() == {"retried": 1}
    again = client.post(f"/api/admin/outbox/{item_id}/retry", headers=bearer(sandbox))
    assert again.status_code == 409


def test_sources_and_sync_runs(client: Any, app: Any, make_token: Any) -> None:
    assert jobs.run_source(app, "sis").ok
    token = make_token("north")
    (source,) = client.get("/api/admin/sources", headers=bearer(token)).get_json()
    assert source["name"] == "sis" and source["last_run"]["status"] == "succeeded"
    assert source["last_run"]["totals"]["added"] > 0 and source["next_run_at"] is None  # scheduler off in tests
    runs = client.get("/api/admin/sync-runs?source=sis&limit=5", headers=bearer(token)).get_json()
    assert len(runs) == 1
    detail = client.get(f"/api/admin/sync-runs/{runs[0]['id']}", headers=bearer(token)).get_json()
    assert detail["counts"]["person"]["added"] >= 2
    assert client.get(f"/api/admin/sync-runs/{runs[0]['id']}",
                      headers=bearer(make_token("sandbox"))).status_code == 404


@pytest.mark.usefixtures("sandbox_off")
def test_a_sync_asked_for_through_the_api(client: Any, app: Any, make_token: Any) -> None:
    from jsonschema import Draft202012Validator

    token = make_token("north")
    resp = client.post("/api/admin/sources/sis/sync", headers=bearer(token))
    assert resp.status_code == 202 and resp.get_json()["full"] is False and resp.get_json()["by"] == "tests"
    full = client.post("/api/admin/sources/sis/sync", json={"full": True}, headers=bearer(token))
    assert full.status_code == 202 and full.get_json()["full"] is True
    assert full.get_json()["at"] == resp.get_json()["at"]  # one request, made a full one
    (source,) = client.get("/api/admin/sources", headers=bearer(token)).get_json()
    doc = client.get("/api/admin/openapi.json").get_json()
    schema = doc["paths"]["/sources"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    Draft202012Validator({**schema, "components": doc["components"]}).validate([source])
    assert source["sync_requested"] == {k: v for k, v in full.get_json().items() if k != "source"}
    bad = client.post("/api/admin/sources/sis/sync", json={"full": "yes please"}, headers=bearer(token))
    assert bad.status_code == 400 and bad.get_json()["message"] == "Full: Not a valid boolean."
    with get_store(app).session() as session:
        session.add(District(slug="south", name="South", settings={}, created_at=datetime.now(UTC)))
    assert client.post("/api/admin/sources/sis/sync", headers=bearer(make_token("south"))).status_code == 404
    [result] = jobs.run_requested_syncs(app)
    assert result.ok and result.source == "sis"


@pytest.mark.usefixtures("sandbox_off")
def test_key_rotation_and_retirement(client: Any, app: Any, make_token: Any) -> None:
    token = make_token("north")
    (before,) = client.get("/api/admin/keys", headers=bearer(token)).get_json()
    rotated = client.post("/api/admin/keys/rotate", headers=bearer(token)).get_json()
    assert rotated["retiring"] == [before["kid"]]
    assert client.post(f"/api/admin/keys/{rotated['active']}/retire", headers=bearer(token)).status_code == 409
    assert client.post(f"/api/admin/keys/{before['kid']}/retire", headers=bearer(token)).status_code == 204
    assert client.post("/api/admin/keys/nope/retire", headers=bearer(token)).status_code == 404
    jwks = client.get("/lti/jwks").get_json()
    assert [k["kid"] for k in jwks["keys"]] == [rotated["active"]]


@pytest.mark.usefixtures("sandbox_off")
def test_config_check(client: Any, make_token: Any) -> None:
    body = client.get("/api/admin/config-check", headers=bearer(make_token("north"))).get_json()
    names = {c["name"]: c for c in body["checks"]}
    assert names["database"]["ok"] and names["encryption key"]["ok"] and names["source sis"]["ok"]
    assert not names["platforms"]["ok"]  # none registered for north yet
    assert body["ok"] is False


def test_privacy_requests_through_the_api(client: Any, app: Any, make_token: Any) -> None:
    token = make_token("sandbox")
    with get_store(app).session() as session:
        leo = session.scalars(select(Person.id).where(Person.sis_id == "S-2002")).one()
    export = client.get(f"/api/admin/people/{leo}/export", headers=bearer(token)).get_json()
    assert export["person"]["given_name"] == "Leo" and export["results"]
    assert client.post(f"/api/admin/people/{leo}/erase", json={"confirm": False},
                       headers=bearer(token)).status_code == 400
    erased = client.post(f"/api/admin/people/{leo}/erase", json={"confirm": True}, headers=bearer(token)).get_json()
    assert erased["deleted"]["result"] > 0 and not erased["already_erased"]
    after = client.get(f"/api/admin/people/{leo}/export", headers=bearer(token)).get_json()
    assert after["person"]["given_name"] == "" and after["results"] == [] and after["mastery"] == []
    actions = [e["action"] for e in client.get("/api/admin/audit-events", headers=bearer(token)).get_json()]
    assert actions[:3] == ["privacy.export", "privacy.erase", "privacy.export"]
