"""JSON logs with request ids and redaction, /metrics, /readyz."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine

from plugin import jobs, observability
from plugin.store.db import get_store
from plugin.store.models import OutboxItem
from tests.admin.conftest import district_id, sandbox_off  # noqa: F401 (fixture)
from tests.connectors.sync_support import top_up_schema
from tests.htmlforms import follow_sandbox_launch


def samples(client: Any, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --------------------------------------------------------------------------- request ids


@pytest.mark.usefixtures("sandbox_off")
def test_every_response_carries_a_request_id(client: Any) -> None:
    first = client.get("/healthz").headers["X-Request-Id"]
    second = client.get("/healthz").headers["X-Request-Id"]
    assert len(first) == 32 and first != second


@pytest.mark.usefixtures("sandbox_off")
def test_a_sane_incoming_request_id_is_kept_and_a_strange_one_replaced(client: Any) -> None:
    assert client.get("/healthz", headers={"X-Request-Id": "lb-7f3a9c01"}).headers["X-Request-Id"] == "lb-7f3a9c01"
    for bad in ("short", "x" * 200, "evil id; Set-Cookie: a=b", "<script>alert(1)</script>"):
        got = client.get("/healthz", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert got != bad and len(got) == 32


# --------------------------------------------------------------------------- logs


def test_logs_are_json_with_the_request_id_and_no_secrets(app: Any, client: Any, capsys: Any) -> None:
    log = logging.getLogger("trailmark.test")

    @app.get("/_log-test")
    def _log_test() -> str:
        log.info("signin.mail_failed to=maya.okafor@school.example token=abc123secret")
        log.warning("refused Authorization: Bearer tmk_0123456789abcdefghij ltik=Zm9vYmFyYmF6 state=s-1 id=7")
        try:
            raise ValueError("payload {'id_token': 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln', "
                             "'email': 'kid@example.edu'}")
        except ValueError:
            log.exception("crash while reading")
        return "ok"

    capsys.readouterr()
    resp = client.get("/_log-test", headers={"X-Request-Id": "req-12345678"})
    follow_sandbox_launch(client, "maya")
    err = capsys.readouterr().err
    lines = json_lines(err)
    ours = [entry for entry in lines if entry.get("request_id") == "req-12345678"]
    assert resp.headers["X-Request-Id"] == "req-12345678" and len(ours) == 3
    for entry in lines:
        assert {"ts", "level", "logger", "message"} <= entry.keys()
    for secret in ("maya.okafor@school.example", "abc123secret", "tmk_0123456789", "Zm9vYmFyYmF6", "s-1",
                   "eyJhbGciOiJSUzI1NiJ9", "kid@example.edu", "maya@sandbox.trailmark.invalid", "Maya"):
        assert secret not in err
    assert "id=7" in err and "ValueError" in ours[2]["exception"]
    launch = [e for e in lines if e["message"].startswith("lti.launch ")]
    assert launch and launch[0]["request_id"] and launch[0]["logger"] == "trailmark.lti"


@pytest.mark.parametrize(("message", "kept", "gone"), [
    ("user_sub=8f2e-user login_hint=hint-1", "user_sub=", "8f2e-user"),
    ('{"client_secret": "s3cr3t", "score": 4}', '"score": 4', "s3cr3t"),
    ("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----", "[pem]", "MIIEv"),
    ("stored gAAAAABmZ0abcdefghijklmnopqrstuvwx==", "[encrypted]", "gAAAAABmZ0"),
    ("outbox.retry item=3 target=source:2 attempt=1 reason=RateLimited", "target=source:2", "[redacted]"),
    ("reach parent at p.arent+kids@mail.example.org now", "[email]", "p.arent"),
])
def test_redaction(message: str, kept: str, gone: str) -> None:
    out = observability.redact(message)
    assert kept in out and gone not in out


def test_text_format_for_terminals() -> None:
    formatter = observability.TextFormatter()
    record = logging.LogRecord("trailmark.x", logging.INFO, __file__, 1, "hello token=%s", ("xyz",), None)
    line = formatter.format(record)
    assert "hello token=[redacted]" in line and "xyz" not in line


# --------------------------------------------------------------------------- metrics


def test_metrics_count_launches_and_refusals_by_reason(client: Any) -> None:
    launches = samples(client, "trailmark_lti_launches_total", view="student", message_type="resource_link")
    refused = samples(client, "trailmark_lti_launch_failures_total", reason="state_unknown")
    follow_sandbox_launch(client, "maya")
    resp = client.post("/lti/launch", data={"id_token": "x.y.z", "state": "never-issued"})
    assert resp.status_code >= 400
    assert samples(client, "trailmark_lti_launches_total", view="student",
                   message_type="resource_link") == launches + 1
    reasons = {s.labels["reason"] for f in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
               for s in f.samples if s.name == "trailmark_lti_launch_failures_total"}
    assert reasons, "a refused launch is counted under its reason"
    assert sum(samples(client, "trailmark_lti_launch_failures_total", reason=r) for r in reasons) >= refused + 1


@pytest.mark.usefixtures("sandbox_off")
def test_metrics_report_the_refusal_reason_of_a_bad_token(client: Any, lti: Any) -> None:
    before = samples(client, "trailmark_lti_launch_failures_total", reason="token_bad_signature")
    state, nonce = lti.login(client)
    from tests.lti_platform import new_rsa

    token = lti.sign(lti.claims(nonce), key=new_rsa())
    assert client.post("/lti/launch", data={"id_token": token, "state": state}).status_code >= 400
    text = client.get("/metrics").get_data(as_text=True)
    refused = [s for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "trailmark_lti_launch_failures_total"]
    assert sum(s.value for s in refused) >= before + 1


@pytest.fixture
def synced(app_config: dict[str, Any], database_url: str) -> dict[str, Any]:
    top_up_schema(database_url)
    sources = [{"name": "sis", "kind": "fake", "district": "north", "classes": 1, "students_per_class": 2},
               {"name": "down", "kind": "fake", "district": "north", "fail_after": 0}]
    return {**app_config, "sandbox": {"enabled": False}, "sources": sources}


def test_metrics_report_sync_runs_and_outbox_depth(synced: dict[str, Any]) -> None:
    from plugin.app import create_app
    from plugin.cli import bootstrap

    app = create_app(synced, env={})
    bootstrap(app)
    try:
        assert jobs.run_source(app, "sis").ok
        assert not jobs.run_source(app, "down").ok
        now = datetime.now(UTC)
        with get_store(app).session() as session:
            for i, status in enumerate(("pending", "pending", "dead")):
                session.add(OutboxItem(district_id=district_id(app, "north"), kind="score", idempotency_key=f"k{i}",
                                       payload={}, status=status, next_attempt_at=now,
                                       created_at=now - timedelta(minutes=10)))
        client = app.test_client()
        assert samples(client, "trailmark_outbox_items", status="pending") == 2
        assert samples(client, "trailmark_outbox_items", status="dead") == 1
        assert samples(client, "trailmark_outbox_items", status="sent") == 0
        assert samples(client, "trailmark_outbox_oldest_pending_age_seconds") >= 600
        assert samples(client, "trailmark_sync_runs_total", source="sis", status="succeeded") == 1
        assert samples(client, "trailmark_sync_runs_total", source="down", status="failed") == 1
        assert samples(client, "trailmark_sync_duration_seconds_count", source="sis") == 1
        assert samples(client, "trailmark_sync_duration_seconds_sum", source="sis") >= 0
        assert samples(client, "trailmark_sync_last_run_records", source="sis", change="added") > 0
        assert samples(client, "trailmark_source_consecutive_failures", source="down") == 1
        assert samples(client, "trailmark_source_paused", source="down") == 1
    finally:
        get_store(app).dispose()


@pytest.mark.usefixtures("sandbox_off")
def test_requests_are_counted_by_endpoint_in_a_single_process(client: Any) -> None:
    before = samples(client, "trailmark_http_requests_total", endpoint="healthz", status="200")
    for _ in range(3):
        client.get("/healthz")
    client.get("/no/such/page")
    assert samples(client, "trailmark_http_requests_total", endpoint="healthz", status="200") == before + 3
    assert samples(client, "trailmark_http_requests_total", endpoint="unmatched", status="404") >= 1
    assert "trailmark_web_workers" not in client.get("/metrics").get_data(as_text=True)  # not a gunicorn worker


def test_serve_counts_in_a_fresh_private_directory_and_cleans_up(tmp_path: Any) -> None:
    from prometheus_client import values

    from plugin.serve import metrics_directory

    parent = tmp_path / "run"
    before = (os.environ.get(observability.MULTIPROC_ENV), values.ValueClass)
    os.environ[observability.MULTIPROC_ENV] = str(parent)
    try:
        with metrics_directory() as path:
            assert os.path.dirname(path) == str(parent) and oct(os.stat(path).st_mode & 0o777) == "0o700"
            assert os.environ[observability.MULTIPROC_ENV] == path == observability.multiprocess_dir()
            assert getattr(values.ValueClass, "_multiprocess", False)
            observability.count_refusal("state_unknown")
            assert any(name.startswith("counter_") for name in os.listdir(path))
        assert not os.path.exists(path) and os.environ[observability.MULTIPROC_ENV] == str(parent)
    finally:
        if before[0] is None:
            os.environ.pop(observability.MULTIPROC_ENV, None)
        else:
            os.environ[observability.MULTIPROC_ENV] = before[0]
    assert values.ValueClass is before[1]


def test_a_multiprocess_directory_that_is_missing_never_breaks_a_request(app_config: dict[str, Any],
                                                                         tmp_path: Any) -> None:
    import subprocess
    import sys

    script = (
        "import json, sys\n"
        "from plugin.app import create_app\n"
        "app = create_app(json.loads(sys.argv[1]), env={})\n"
        "client = app.test_client()\n"
        "print(client.get('/healthz').status_code)\n"
        "print(client.get('/metrics').get_data(as_text=True))\n")
    cfg = {**app_config, "sandbox": {"enabled": False}}
    env = {**os.environ, observability.MULTIPROC_ENV: str(tmp_path / "missing")}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(cfg)], env=env, capture_output=True, text=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("200\n")
    assert 'trailmark_http_requests_total{endpoint="healthz",status="200"} 1.0' in done.stdout
    assert "metrics_dir_missing" in done.stderr and not (tmp_path / "missing").exists()


def test_metrics_can_require_a_token(app_config: dict[str, Any], tmp_path: Any) -> None:
    from plugin.app import create_app

    (tmp_path / "metrics-token").write_text("scrape-me\n")
    app = create_app({**app_config, "sandbox": {"enabled": False},
                      "observability": {"metrics_token": f"file:{tmp_path}/metrics-token"}}, env={})
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    get_store(app).dispose()


# --------------------------------------------------------------------------- readiness


@pytest.mark.usefixtures("sandbox_off")
def test_readyz_is_ready_on_a_migrated_database(client: Any) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ready", "checks": {"database": "ok", "schema": "ok",
                                                             "encryption_key": "ok"}}


@pytest.mark.usefixtures("sandbox_off")
def test_readyz_fails_when_the_database_is_unreachable(app: Any, client: Any) -> None:
    store = get_store(app)
    store.engine.dispose()
    store.engine = create_engine("postgresql+psycopg://trailmark@127.0.0.1:9/trailmark?connect_timeout=2")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "not ready" and body["checks"]["database"].startswith("unreachable")
    assert client.get("/healthz").status_code == 200


@pytest.mark.usefixtures("sandbox_off")
def test_readyz_fails_on_an_old_schema(app: Any, client: Any) -> None:
    from plugin.store.db import head_revision

    engine = get_store(app).engine
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000_old'")
    try:
        resp = client.get("/readyz")
    finally:  # PostgreSQL test databases are shared by the whole run
        with engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{head_revision()}'")
    assert resp.status_code == 503 and "trailmark db upgrade" in resp.get_json()["checks"]["schema"]


def test_readyz_checks_redis_when_configured(app_config: dict[str, Any]) -> None:
    from plugin.app import create_app

    app = create_app({**app_config, "sandbox": {"enabled": False},
                      "redis": {"url": "redis://127.0.0.1:9/0", "timeout_seconds": 0.2}}, env={})
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["checks"]["redis"] == "unreachable"
    get_store(app).dispose()
