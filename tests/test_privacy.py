"""Privacy: private keys encrypted at rest, one person's export and erasure, retention purge, the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, text

from connectors import sync
from connectors.fake import FakeConnector, sample_district
from plugin import jobs, privacy
from plugin.config import ConfigError
from plugin.lti import keys
from plugin.store import models as m
from plugin.store.db import get_store
from tests.admin.conftest import district_id, sandbox_off  # noqa: F401 (fixture)
from tests.connectors.sync_support import top_up_schema
from tests.htmlforms import follow_sandbox_launch, parse

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def person_by_sis(app: Any, sis_id: str) -> m.Person:
    with get_store(app).session() as session:
        person = session.scalars(select(m.Person).where(m.Person.sis_id == sis_id)).one()
        session.expunge(person)
        return person


def raw_private_keys(app: Any) -> list[bytes]:
    with get_store(app).engine.connect() as conn:
        return [bytes(r[0]) for r in conn.execute(text("SELECT private_pem FROM tool_key ORDER BY id"))]


# =========================================================================== encryption at rest


@pytest.mark.usefixtures("sandbox_off")
def test_private_keys_are_encrypted_at_rest(app: Any) -> None:
    (stored,) = raw_private_keys(app)
    assert b"PRIVATE KEY" not in stored and stored.startswith(b"gAAAAA")
    with get_store(app).session() as session:
        key = keys.signing_key(session)
    assert key.private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_local_runs_create_a_key_file_readable_by_its_owner_only(app_config: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    from plugin.app import create_app

    key_file = tmp_path / "enc" / "encryption_key"
    app = create_app({**app_config, "sandbox": {"enabled": False}, "privacy": {"encryption_key": f"file:{key_file}"}},
                     env={})
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    Fernet(key_file.read_text().strip().encode())
    assert privacy.keyring(app).encrypt(b"x") != b"x"
    get_store(app).dispose()


def test_production_never_makes_a_key_and_says_what_is_missing(app_config: dict[str, Any],
                                                                tmp_path: Path) -> None:
    from plugin.app import create_app

    cfg = {**app_config, "mode": "production", "server": {**app_config["server"], "public_url": "https://t.example"},
           "sandbox": {"enabled": False}, "privacy": {"encryption_key": "env:TEST_TRAILMARK_ENCRYPTION_KEY"}}
    app = create_app(cfg, env={})
    with pytest.raises(ConfigError, match="TEST_TRAILMARK_ENCRYPTION_KEY"):
        privacy.keyring(app)
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and "TEST_TRAILMARK_ENCRYPTION_KEY" in resp.get_json()["checks"]["encryption_key"]
    get_store(app).dispose()


def test_a_malformed_key_is_named_without_showing_it() -> None:
    with pytest.raises(ConfigError) as exc:
        privacy.parse_keys(f"{Fernet.generate_key().decode()}, not-a-key-at-all")
    assert "key 2" in str(exc.value) and "not-a-key-at-all" not in str(exc.value)


def test_launches_and_deep_links_still_sign_with_the_encrypted_key(client: Any, app: Any) -> None:
    resp = follow_sandbox_launch(client, "teacher", hint="deep-link")
    picker = client.get(client.get(resp.headers["Location"]).headers["Location"])
    form = parse(picker.get_data(as_text=True)).forms[0]
    done = client.post(form["action"], data={**form["fields"], "item": ["dashboard"]})
    token = parse(done.get_data(as_text=True)).forms[0]["fields"]["JWT"]
    jwks = client.get("/lti/jwks").get_json()
    kid = jwt.get_unverified_header(token)["kid"]
    public = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid)).key
    claims = jwt.decode(token, public, algorithms=["RS256"], audience=jwt.decode(
        token, options={"verify_signature": False})["aud"])
    assert claims["https://purl.imsglobal.org/spec/lti/claim/message_type"] == "LtiDeepLinkingResponse"


@pytest.mark.usefixtures("sandbox_off")
def test_a_plaintext_key_from_before_is_encrypted_on_upgrade(app: Any) -> None:
    from plugin.cli import bootstrap

    with get_store(app).session() as session:
        row = session.scalars(select(m.ToolKey)).one()
        pem = keys.signing_key(session).private_pem
        row.private_pem = pem  # as stored before encryption existed
    with get_store(app).session() as session:
        assert keys.signing_key(session).private_pem == pem  # still readable
    bootstrap(app)
    (stored,) = raw_private_keys(app)
    assert b"PRIVATE KEY" not in stored
    with get_store(app).session() as session:
        assert keys.signing_key(session).private_pem == pem


def test_key_rotation_with_encryption(app_config: dict[str, Any], tmp_path: Path) -> None:
    """Rotate the encryption key: new key first, reencrypt, drop the old key; and rotate a signing key."""
    from plugin.app import create_app
    from plugin.cli import bootstrap

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    key_file = tmp_path / "keys"
    key_file.write_text(old)
    cfg = {**app_config, "sandbox": {"enabled": False}, "privacy": {"encryption_key": f"file:{key_file}"}}

    def signing_pem(application: Any) -> bytes:
        with get_store(application).session() as session:
            return keys.signing_key(session).private_pem

    first = create_app(cfg, env={})
    bootstrap(first)
    pem = signing_pem(first)
    get_store(first).dispose()

    key_file.write_text(f"{new}\n{old}\n")
    both = create_app(cfg, env={})
    assert signing_pem(both) == pem  # old ciphertext still opens
    result = both.test_cli_runner().invoke(args=["privacy", "reencrypt"])
    assert result.exit_code == 0 and "Re-encrypted 1" in result.output
    rotated = both.test_cli_runner().invoke(args=["keys", "rotate"])
    assert rotated.exit_code == 0
    get_store(both).dispose()

    key_file.write_text(new)
    only_new = create_app(cfg, env={})
    with get_store(only_new).session() as session:
        kids = [(k.kid, k.status) for k in session.scalars(select(m.ToolKey).order_by(m.ToolKey.id))]
        for key in session.scalars(select(m.ToolKey)):
            assert privacy.decrypt(key.private_pem).startswith(b"-----BEGIN")
    assert [s for _, s in kids] == ["retiring", "active"]
    assert signing_pem(only_new) != pem  # the new active signing key
    assert all(Fernet(new.encode()).decrypt(raw) for raw in raw_private_keys(only_new))
    get_store(only_new).dispose()


@pytest.mark.usefixtures("sandbox_off")
def test_a_missing_encryption_key_is_a_clear_error(app: Any, app_config: dict[str, Any], tmp_path: Path) -> None:
    from plugin.app import create_app

    other = tmp_path / "other-key"
    other.write_text(Fernet.generate_key().decode())
    wrong = create_app({**app_config, "sandbox": {"enabled": False}, "privacy": {"encryption_key": f"file:{other}"}},
                       env={})
    with get_store(wrong).session() as session, pytest.raises(ConfigError, match="cannot be decrypted"):
        keys.signing_key(session)
    get_store(wrong).dispose()


# =========================================================================== export


def test_export_has_the_students_data_and_nothing_of_other_students(client: Any, app: Any) -> None:
    maya = person_by_sis(app, "S-2001")
    teacher = follow_sandbox_launch(client, "teacher")  # a teacher opens Maya's profile: audited
    ltik = teacher.headers["Location"].split("ltik=")[1]
    assert client.get(f"/p/students/{maya.id}?ltik={ltik}").status_code == 200
    with get_store(app).session() as session:
        data = privacy.export_person(session, maya.district_id, maya.id, now=NOW)
    text_ = json.dumps(data)
    assert data["person"]["given_name"] == "Maya" and data["person"]["sis_id"] == "S-2001"
    assert data["enrollments"][0]["class"] == "Algebra I — Period 2"
    assert data["results"] and data["mastery"] and data["modules"] and data["pace"]
    assert {e["kind"] for e in data["profile_entries"]} == {"interest", "goal"}
    assert data["guardian_links"] == [{"relation": "parent", "status": "active", "guardian": "Grace Okafor"}]
    assert any(a["action"] == "view_student_profile" and a["detail"].get("view") == "teacher"
               for a in data["access_log"])
    for other in ("Leo", "Park", "Sofia", "Haddad", "Noah", "Aiden", "Zara", "S-2002", "Basketball",
                  "architect", "Amara", "Rivera"):
        assert other not in text_, other
    with get_store(app).session() as session:
        own = session.scalar(select(func.count()).select_from(m.Result).where(m.Result.person_id == maya.id))
        others = session.scalar(select(func.count()).select_from(m.Result).where(m.Result.person_id != maya.id))
    assert len(data["results"]) == own and others > 0  # the class's other results were left out


def test_export_refuses_a_person_of_another_district(app: Any) -> None:
    maya = person_by_sis(app, "S-2001")
    with get_store(app).session() as session, pytest.raises(LookupError):
        privacy.export_person(session, district_id(app, "north"), maya.id, now=NOW)


# =========================================================================== erasure


def test_erase_removes_the_students_data_and_keeps_a_tombstone(app: Any) -> None:
    maya = person_by_sis(app, "S-2001")
    with get_store(app).session() as session:
        report = privacy.erase_person(session, maya.district_id, maya.id, actor="cli", now=NOW)
    assert report.deleted["result"] > 0 and report.deleted["mastery"] > 0 and report.deleted["enrollment"] == 1
    with get_store(app).session() as session:
        person = session.get(m.Person, maya.id)
        assert (person.given_name, person.family_name, person.email, person.sis_id, person.status) == (
            "", "", None, None, privacy.ERASED)
        for model in (m.Result, m.MasteryRecord, m.GateRecord, m.PaceRecord, m.AlertRecord, m.ProfileEntryRecord,
                      m.ProfileSnapshotRecord, m.Enrollment, m.AppSession):
            assert session.scalar(select(func.count()).select_from(model).where(model.person_id == maya.id)) == 0
        assert session.scalar(select(func.count()).select_from(m.GuardianLink)
                              .where(m.GuardianLink.student_id == maya.id)) == 0
        refs = session.scalars(select(m.ExternalRef).where(m.ExternalRef.kind == "person",
                                                           m.ExternalRef.entity_id == maya.id)).all()
        assert refs and all(r.status == privacy.ERASED for r in refs)
        (event,) = session.scalars(select(m.AuditEvent).where(m.AuditEvent.action == "privacy.erase")).all()
        assert event.subject == f"person:{maya.id}" and event.actor == "cli"
        data = privacy.export_person(session, maya.district_id, maya.id, now=NOW)
        assert "Maya" not in json.dumps(data) and not data["results"] and not data["enrollments"]
        leo = session.scalars(select(m.Person).where(m.Person.sis_id == "S-2002")).one()
        assert session.scalar(select(func.count()).select_from(m.MasteryRecord)
                              .where(m.MasteryRecord.person_id == leo.id)) > 0  # nobody else lost anything
    with get_store(app).session() as session:
        again = privacy.erase_person(session, maya.district_id, maya.id, actor="cli", now=NOW)
    assert again.already_erased


def test_an_erased_student_who_launches_again_finds_nothing_of_theirs(client: Any, app: Any) -> None:
    maya = person_by_sis(app, "S-2001")
    with get_store(app).session() as session:
        privacy.erase_person(session, maya.district_id, maya.id, actor="cli", now=NOW)
    resp = follow_sandbox_launch(client, "maya")
    assert resp.status_code == 303
    with get_store(app).session() as session:
        person = session.get(m.Person, maya.id)
        assert person.given_name == "" and person.email is None


@pytest.fixture
def synced_app(app_config: dict[str, Any], database_url: str) -> Any:
    from plugin.app import create_app
    from plugin.cli import bootstrap

    top_up_schema(database_url)
    districts = [{"slug": "north", "name": "North District", "match_on": ["sis_id", "email"]}]
    application = create_app({**app_config, "sandbox": {"enabled": False}, "districts": districts}, env={})
    bootstrap(application)
    yield application
    get_store(application).dispose()


def _sync(app: Any, now: datetime) -> sync.SyncRunResult:
    connector = FakeConnector("sis", sample_district(classes=1, students_per_class=3))
    return sync.run_sync(get_store(app), district_id(app, "north"), "sis", connector, now=now,
                         max_removal_share=1.0)


ENGINE_SKIPS_ERASED = getattr(sync, "ERASED", None) == privacy.ERASED


@pytest.mark.xfail(not ENGINE_SKIPS_ERASED, strict=True, raises=AssertionError,
                   reason="connectors/sync.py does not yet skip references marked erased (see plugin/privacy.py)")
def test_a_following_sync_does_not_bring_an_erased_student_back(synced_app: Any) -> None:
    app = synced_app
    assert _sync(app, NOW).ok
    student = person_by_sis(app, "student-1-2")
    with get_store(app).session() as session:
        privacy.erase_person(session, student.district_id, student.id, actor="cli", now=NOW)
    result = _sync(app, NOW + timedelta(hours=1))
    assert result.ok
    with get_store(app).session() as session:
        person = session.get(m.Person, student.id)
        assert person.status == privacy.ERASED and person.given_name == "" and person.email is None
        assert session.scalar(select(func.count()).select_from(m.Person)
                              .where(m.Person.email == "student-1-2@example.org")) == 0
        for model in (m.Enrollment, m.Result):
            assert session.scalar(select(func.count()).select_from(model)
                                  .where(model.person_id == student.id)) == 0
    reported = [e for e in result.errors if e.get("record_id") in ("student-1-2", "enr-class-1-student-1-2")]
    assert reported, "the sync reports the erased record instead of importing it silently"


def test_erasure_marks_every_reference_the_engine_would_use(synced_app: Any) -> None:
    app = synced_app
    assert _sync(app, NOW).ok
    student = person_by_sis(app, "student-1-2")
    with get_store(app).session() as session:
        report = privacy.erase_person(session, student.district_id, student.id, actor="cli", now=NOW)
        refs = {(r.kind, r.namespace, r.external_id) for r in session.scalars(
            select(m.ExternalRef).where(m.ExternalRef.status == privacy.ERASED))}
    assert report.refs_marked == len(refs) == 4


# =========================================================================== retention


def test_purge_deletes_only_old_rows(app: Any) -> None:
    d = district_id(app, "north")
    old, recent = NOW - timedelta(days=400), NOW - timedelta(days=10)
    with get_store(app).session() as session:
        platform = session.scalars(select(m.Platform)).first()
        source = m.Source(district_id=d, name="sis", kind="fake", cursor={}, consecutive_failures=0, created_at=old)
        session.add(source)
        session.flush()
        person = m.Person(district_id=d, sourced_id="p1", role="student", status="active")
        klass = m.Class(district_id=d, sourced_id="c1", title="C", status="active")
        session.add_all([person, klass])
        session.flush()
        for at, tag in ((old, "old"), (recent, "new")):
            session.add(m.AuditEvent(district_id=d, at=at, actor="cli", action=f"test.{tag}", detail={}))
            session.add(m.OutboxItem(district_id=d, kind="score", idempotency_key=f"sent-{tag}", payload={},
                                     status="sent", next_attempt_at=at, created_at=at, sent_at=at))
            session.add(m.ProfileSnapshotRecord(district_id=d, class_id=klass.id, person_id=person.id,
                                                taken_on=at.date(), data={}))
            expires = NOW - timedelta(minutes=1) if tag == "old" else NOW + timedelta(hours=1)
            session.add(m.UsedNonce(nonce=f"n-{tag}", platform_id=platform.id, expires_at=expires))
        session.add(m.OutboxItem(district_id=d, kind="score", idempotency_key="pending-old", payload={},
                                 status="pending", next_attempt_at=old, created_at=old))
        for at in (old, old + timedelta(days=1), recent):
            session.add(m.SyncRun(district_id=d, source_id=source.id, scope="all", status="succeeded", started_at=at,
                                  finished_at=at, counts={}, errors=[]))
        session.add(m.AppSession(id="expired", district_id=d, user_sub="u", view="student", roles=[], claims={},
                                 csrf_token="x", created_at=old, expires_at=NOW - timedelta(minutes=5)))
    cfg = {"retention_days": 365, "audit_retention_days": None, "sync_run_retention_days": None,
           "outbox_retention_days": None, "snapshot_retention_days": None}
    counted = privacy.purge(get_store(app), cfg, now=NOW, dry_run=True)
    assert counted["audit_event"] >= 1
    with get_store(app).session() as session:
        assert session.scalar(select(func.count()).select_from(m.AuditEvent).where(
            m.AuditEvent.action == "test.old")) == 1  # a dry run deletes nothing
    counts = privacy.purge(get_store(app), cfg, now=NOW)
    assert counts["sync_run"] == 2 and counts["outbox_item"] == 1 and counts["profile_snapshot"] == 1
    assert counts["used_nonce"] == 1 and counts["app_session"] == 1
    with get_store(app).session() as session:
        actions = set(session.scalars(select(m.AuditEvent.action)))
        assert "test.new" in actions and "test.old" not in actions
        assert set(session.scalars(select(m.OutboxItem.idempotency_key))) == {"sent-new", "pending-old"}
        assert [r.started_at.date() for r in session.scalars(select(m.SyncRun))] == [recent.date()]
        assert list(session.scalars(select(m.ProfileSnapshotRecord.taken_on)
                                    .where(m.ProfileSnapshotRecord.person_id == person.id))) == [recent.date()]
        assert list(session.scalars(select(m.UsedNonce.nonce))) == ["n-new"]


@pytest.mark.usefixtures("sandbox_off")
def test_purge_keeps_the_latest_run_of_a_source_however_old(app: Any) -> None:
    d = district_id(app, "north")
    with get_store(app).session() as session:
        source = m.Source(district_id=d, name="yearly", kind="fake", cursor={}, consecutive_failures=0,
                          created_at=NOW)
        session.add(source)
        session.flush()
        for days in (900, 800):
            session.add(m.SyncRun(district_id=d, source_id=source.id, scope="all", status="succeeded",
                                  started_at=NOW - timedelta(days=days), counts={}, errors=[]))
    privacy.purge(get_store(app), {"retention_days": 30}, now=NOW)
    with get_store(app).session() as session:
        (kept,) = session.scalars(select(m.SyncRun)).all()
        assert kept.started_at.date() == (NOW - timedelta(days=800)).date()


def test_retention_per_kind_overrides_the_default() -> None:
    cfg = {"retention_days": 365, "audit_retention_days": 2555, "snapshot_retention_days": None}
    assert privacy.retention_days(cfg, "audit_event") == 2555
    assert privacy.retention_days(cfg, "profile_snapshot") == 365


@pytest.mark.usefixtures("sandbox_off")
def test_the_scheduler_runs_the_purge_daily(app: Any) -> None:
    scheduler = jobs.build_scheduler(app)
    job = scheduler.get_job("privacy:purge")
    assert job is not None and "hour='3'" in str(job.trigger)


# =========================================================================== the command line


def test_cli_export_erase_purge(app: Any, runner: Any, tmp_path: Path) -> None:
    out = tmp_path / "maya.json"
    result = runner.invoke(args=["privacy", "export", "S-2001", "--district", "sandbox", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["person"]["family_name"] == "Okafor"
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    printed = runner.invoke(args=["privacy", "export", "S-2002", "--district", "sandbox"])
    assert json.loads(printed.output)["person"]["given_name"] == "Leo"
    refused = runner.invoke(args=["privacy", "erase", "S-2001", "--district", "sandbox"], input="n\n")
    assert refused.exit_code != 0
    assert person_by_sis(app, "S-2001").status == "active"
    erased = runner.invoke(args=["privacy", "erase", "S-2001", "--district", "sandbox", "--yes"])
    assert erased.exit_code == 0 and "Erased person" in erased.output
    missing = runner.invoke(args=["privacy", "erase", "S-2001", "--district", "sandbox", "--yes"])
    assert missing.exit_code != 0 and "no person 'S-2001'" in missing.output
    purge = runner.invoke(args=["privacy", "purge", "--dry-run"])
    assert purge.exit_code == 0 and "audit_event" in purge.output and "dry run" in purge.output
    key = runner.invoke(args=["privacy", "new-key"]).output.strip()
    Fernet(key.encode())
    with get_store(app).session() as session:
        actions = set(session.scalars(select(m.AuditEvent.action).where(m.AuditEvent.actor == "cli")))
    assert {"privacy.export", "privacy.erase"} <= actions
