"""Privacy for children's data: encryption at rest, one person's export and erasure, retention.

Encryption. ``[privacy] encryption_key`` names one or more Fernet keys (``env:NAME`` or ``file:PATH``; several
keys separated by commas or whitespace). The first key encrypts; every key decrypts, so a key is rotated by
putting a new one first, restarting, running ``trailmark privacy reencrypt`` and then dropping the old one.
Local runs create ``var/encryption_key`` on first start; production never creates a key by itself. Trailmark's
LTI private keys are stored encrypted with it (``plugin/lti/keys.py`` calls ``encrypt``/``decrypt``); admin API
tokens are stored as SHA-256 digests only, which is stronger still.

Erasure. ``erase_person`` deletes a student's learning state, results, enrollments, guardian links, sessions and
sign-in links, anonymises the person row and marks every external reference to what it deleted as ``erased``:
the row and its references are the tombstone that tells the sync engine (and a returning launch) that this
person was erased on request, so a later sync reports the record instead of recreating it silently.

Retention. ``purge`` deletes operational records older than the configured retention: audit events, sync runs
(the latest run of each source is kept), sent outbox items and profile snapshots; used nonces, login states,
sessions, sign-in links and rate-limit windows as soon as they have expired.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.orm import Session

from plugin.config import ConfigError, resolve_secret
from plugin.store import models as m

if TYPE_CHECKING:
    from flask import Flask

    from plugin.store.db import Store

log = logging.getLogger("trailmark.privacy")

ERASED = "erased"  # status of an erased person and of every external reference to what was erased
KEY_EXTENSION = "trailmark.keyring"
PURGE_BATCH = 5000
_PEM = b"-----BEGIN"
_default_ring: Keyring | ConfigError | None = None


# =========================================================================== encryption at rest


class Keyring:
    """Fernet keys: the first encrypts, all decrypt."""

    def __init__(self, keys: Sequence[bytes]):
        if not keys:
            raise ConfigError("privacy.encryption_key: no key given")
        self._keys = [Fernet(k) for k in keys]
        self._fernet = MultiFernet(self._keys)
        self.size = len(keys)

    def encrypt(self, data: bytes) -> bytes:
        """Encrypt with the first key."""
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        """Decrypt with whichever key encrypted ``token``."""
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise ConfigError("privacy.encryption_key: a stored secret cannot be decrypted with any configured "
                              "key; the key that encrypted it is missing (restore it after the new one)") from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt ``token`` with the first key."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise ConfigError("privacy.encryption_key: a stored secret cannot be decrypted with any configured "
                              "key; the key that encrypted it is missing") from None

    def encrypted_by_primary(self, token: bytes) -> bool:
        """Whether the first key decrypts ``token``."""
        try:
            self._keys[0].decrypt(token)
        except InvalidToken:
            return False
        return True


def new_key() -> str:
    """A fresh Fernet key (32 random bytes, url-safe base64)."""
    return Fernet.generate_key().decode()


def parse_keys(text: str) -> list[bytes]:
    """Split a secret holding one or more Fernet keys; raise ConfigError naming a malformed one by position."""
    keys = [k for k in re.split(r"[\s,]+", text.strip()) if k]
    for i, key in enumerate(keys, 1):
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            raise ConfigError(f"privacy.encryption_key: key {i} is not a Fernet key (44 characters of url-safe "
                              "base64); make one with `trailmark privacy new-key`") from None
    if not keys:
        raise ConfigError("privacy.encryption_key: the secret is empty; make a key with `trailmark privacy new-key`")
    return [k.encode() for k in keys]


def load_keyring(cfg: Mapping[str, Any], *, create: bool = False) -> Keyring:
    """Read the configured keys; with ``create``, a missing key file is created with a new key first."""
    ref = cfg["privacy"]["encryption_key"]
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if create and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process created it first
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(new_key() + "\n")
        ref = f"file:{path}"
    return Keyring(parse_keys(resolve_secret(ref, key="privacy.encryption_key")))


def init_app(app: Flask) -> None:
    """Load the keys once; a missing key is reported when a secret is first needed (and by /readyz)."""
    global _default_ring
    cfg = app.config["TRAILMARK"]
    ring: Keyring | ConfigError
    try:
        ring = load_keyring(cfg, create=cfg["mode"] == "local")
    except ConfigError as exc:
        ring = exc
    app.extensions[KEY_EXTENSION] = ring
    _default_ring = ring


def keyring(app: Flask | None = None) -> Keyring:
    """The keyring of ``app`` (or the current app; outside an app, the last one created)."""
    ring: Keyring | ConfigError | None
    if app is None:
        from flask import current_app, has_app_context

        ring = current_app.extensions.get(KEY_EXTENSION) if has_app_context() else _default_ring
    else:
        ring = app.extensions.get(KEY_EXTENSION)
    if ring is None:
        raise ConfigError("privacy.encryption_key: no keys are loaded (the app was not created)")
    if isinstance(ring, ConfigError):
        raise ConfigError(str(ring))
    return ring


def keyring_problem(app: Flask) -> str | None:
    """Why the keys could not be loaded, or None when they are fine."""
    ring = app.extensions.get(KEY_EXTENSION)
    return str(ring) if isinstance(ring, ConfigError) else None


def is_encrypted(value: bytes) -> bool:
    """Whether a stored value is ciphertext (not a plaintext PEM from before encryption)."""
    return not bytes(value).startswith(_PEM)


def encrypt(data: bytes) -> bytes:
    """Encrypt a secret for storage."""
    return keyring().encrypt(data)


def decrypt(stored: bytes) -> bytes:
    """Decrypt a stored secret; a plaintext PEM stored before encryption is returned as it is."""
    stored = bytes(stored)
    if not is_encrypted(stored):
        return stored
    return keyring().decrypt(stored)


def reencrypt_keys(session: Session, ring: Keyring | None = None) -> int:
    """Encrypt plaintext private keys and re-encrypt the others with the first key; return how many changed."""
    ring = ring or keyring()
    changed = 0
    for key in session.scalars(select(m.ToolKey).order_by(m.ToolKey.id)):
        stored = bytes(key.private_pem)
        if not is_encrypted(stored):
            key.private_pem = ring.encrypt(stored)
        elif not ring.encrypted_by_primary(stored):
            key.private_pem = ring.rotate(stored)
        else:
            continue
        changed += 1
    session.flush()
    return changed


# =========================================================================== finding a person


def find_person(session: Session, district_id: int, ref: str) -> m.Person | None:
    """Find a person of the district by Trailmark id, SIS id or sourced id."""
    ref = ref.strip()
    if not ref:
        return None
    person = None
    if ref.isdigit():
        person = session.scalars(select(m.Person).where(m.Person.district_id == district_id,
                                                        m.Person.id == int(ref))).first()
    for column in (m.Person.sis_id, m.Person.sourced_id):
        if person is None:
            person = session.scalars(select(m.Person).where(m.Person.district_id == district_id, column == ref)
                                     .order_by(m.Person.id).limit(1)).first()
    return person


# =========================================================================== export


def _iso(value: date | datetime | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def export_person(session: Session, district_id: int, person_id: int, *, now: datetime) -> dict[str, Any]:
    """Everything Trailmark holds about one person of the district, as JSON-safe data."""
    p = session.scalars(select(m.Person).where(m.Person.district_id == district_id,
                                               m.Person.id == person_id)).first()
    if p is None:
        raise LookupError(f"no person {person_id} in this district")
    d = district_id
    klass = {c.id: c.title for c in session.scalars(
        select(m.Class).join(m.Enrollment, m.Enrollment.class_id == m.Class.id)
        .where(m.Enrollment.person_id == person_id, m.Class.district_id == d))}

    def class_title(class_id: int | None) -> str | None:
        if class_id is None:
            return None
        if class_id not in klass:
            found = session.get(m.Class, class_id)
            klass[class_id] = found.title if found is not None and found.district_id == d else None
        return klass[class_id]

    competencies: dict[int, str] = {}

    def competency_title(cid: int | None) -> str | None:
        if cid is None:
            return None
        if cid not in competencies:
            found = session.get(m.Competency, cid)
            competencies[cid] = found.title if found is not None and found.district_id == d else ""
        return competencies[cid]

    def rows(model: Any, *where: ColumnElement[bool]) -> list[Any]:
        return list(session.scalars(select(model).where(model.district_id == d, *where).order_by(model.id)))

    activities = {a.id: a for a in session.scalars(
        select(m.Activity).join(m.Result, m.Result.activity_id == m.Activity.id)
        .where(m.Result.person_id == person_id, m.Activity.district_id == d))}
    modules = {mod.id: mod.title for mod in session.scalars(
        select(m.Module).join(m.GateRecord, m.GateRecord.module_id == m.Module.id)
        .where(m.GateRecord.person_id == person_id, m.Module.district_id == d))}
    subject = f"person:{person_id}"
    guardians = rows(m.GuardianLink,
                     (m.GuardianLink.student_id == person_id) | (m.GuardianLink.guardian_id == person_id))
    linked = {g.guardian_id if g.student_id == person_id else g.student_id for g in guardians}
    names = {q.id: q.display_name for q in session.scalars(select(m.Person).where(m.Person.id.in_(linked)))} \
        if linked else {}
    return {
        "exported_at": _iso(now),
        "person": {
            "id": p.id, "sourced_id": p.sourced_id, "role": p.role, "given_name": p.given_name,
            "family_name": p.family_name, "email": p.email, "username": p.username, "sis_id": p.sis_id,
            "status": p.status, "enabled": p.enabled, "updated_at": _iso(p.updated_at),
        },
        "identifiers": [
            {"kind": r.kind, "system": r.namespace, "id": r.external_id, "status": r.status}
            for r in rows(m.ExternalRef, m.ExternalRef.kind == "person", m.ExternalRef.entity_id == person_id)
        ],
        "enrollments": [
            {"class_id": e.class_id, "class": class_title(e.class_id), "role": e.role, "status": e.status,
             "begin_date": _iso(e.begin_date), "end_date": _iso(e.end_date)}
            for e in rows(m.Enrollment, m.Enrollment.person_id == person_id)
        ],
        "guardian_links": [
            {"relation": g.relation, "status": g.status,
             "guardian" if g.student_id == person_id else "student":
                 names.get(g.guardian_id if g.student_id == person_id else g.student_id)}
            for g in guardians
        ],
        "results": [
            {"activity": activities[r.activity_id].title if r.activity_id in activities else None,
             "competency": competency_title(r.competency_id), "score": r.score, "score_maximum": r.score_maximum,
             "scored_at": _iso(r.scored_at), "status": r.score_status, "comment": r.comment, "origin": r.origin}
            for r in rows(m.Result, m.Result.person_id == person_id)
        ],
        "mastery": [
            {"class": class_title(x.class_id), "competency": competency_title(x.competency_id), "score": x.score,
             "evidence_count": x.evidence_count, "mastered": x.mastered, "level": x.level,
             "computed_at": _iso(x.computed_at)}
            for x in rows(m.MasteryRecord, m.MasteryRecord.person_id == person_id)
        ],
        "modules": [
            {"class": class_title(x.class_id), "module": modules.get(x.module_id), "status": x.status,
             "reason": x.reason, "opened_at": _iso(x.opened_at), "completed_on": _iso(x.completed_on)}
            for x in rows(m.GateRecord, m.GateRecord.person_id == person_id)
        ],
        "module_overrides": [
            {"class": class_title(x.class_id), "module_id": x.module_id, "kind": x.kind, "note": x.note,
             "at": _iso(x.at), "revoked_at": _iso(x.revoked_at)}
            for x in rows(m.GateOverrideRecord, m.GateOverrideRecord.person_id == person_id)
        ],
        "pace": [
            {"class": class_title(x.class_id), "state": x.state, "completed": x.completed, "expected": x.expected,
             "total": x.total, "next_due": _iso(x.next_due), "projected_finish": _iso(x.projected_finish),
             "accommodated": x.accommodated, "computed_at": _iso(x.computed_at)}
            for x in rows(m.PaceRecord, m.PaceRecord.person_id == person_id)
        ],
        "accommodations": [
            {"class": class_title(x.class_id), "extra_days": x.extra_days, "factor": x.factor, "note": x.note,
             "updated_at": _iso(x.updated_at)}
            for x in rows(m.AccommodationRecord, m.AccommodationRecord.person_id == person_id)
        ],
        "alerts": [
            {"class": class_title(x.class_id), "kind": x.kind, "level": x.level, "detail": x.detail,
             "opened_at": _iso(x.opened_at), "resolved_at": _iso(x.resolved_at)}
            for x in rows(m.AlertRecord, m.AlertRecord.person_id == person_id)
        ],
        "profile_entries": [
            {"kind": x.kind, "text": x.text, "author_role": x.author_role, "status": x.status,
             "target_date": _iso(x.target_date), "competency": competency_title(x.competency_id),
             "created_at": _iso(x.created_at), "updated_at": _iso(x.updated_at), "archived_at": _iso(x.archived_at)}
            for x in rows(m.ProfileEntryRecord, m.ProfileEntryRecord.person_id == person_id)
        ],
        "profile_snapshots": [
            {"class": class_title(x.class_id), "taken_on": _iso(x.taken_on), "data": x.data}
            for x in rows(m.ProfileSnapshotRecord, m.ProfileSnapshotRecord.person_id == person_id)
        ],
        "access_log": [
            {"at": _iso(a.at), "who": a.actor, "action": a.action, "detail": a.detail}
            for a in session.scalars(select(m.AuditEvent).where(m.AuditEvent.district_id == d,
                                                                m.AuditEvent.subject == subject)
                                     .order_by(m.AuditEvent.at, m.AuditEvent.id))
        ],
    }


# =========================================================================== erasure


@dataclass(frozen=True)
class ErasureReport:
    """What erasing one person removed."""

    person_id: int
    already_erased: bool = False
    deleted: Mapping[str, int] = field(default_factory=dict)
    refs_marked: int = 0
    class_ids: tuple[int, ...] = ()


def _delete(session: Session, model: Any, *where: ColumnElement[bool]) -> int:
    result = session.execute(delete(model).where(*where).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _mark_refs(session: Session, district_id: int, kind: str, entity_ids: Iterable[int]) -> int:
    ids = sorted(set(entity_ids))
    marked = 0
    for start in range(0, len(ids), 500):
        result = session.execute(
            update(m.ExternalRef)
            .where(m.ExternalRef.district_id == district_id, m.ExternalRef.kind == kind,
                   m.ExternalRef.entity_id.in_(ids[start:start + 500]))
            .values(status=ERASED, fingerprint=None).execution_options(synchronize_session=False))
        marked += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return marked


def erase_person(session: Session, district_id: int, person_id: int, *, actor: str, now: datetime,
                 recompute: bool = True) -> ErasureReport:
    """Erase one person's data on request and leave a tombstone; audited. The caller commits."""
    person = session.scalars(select(m.Person).where(m.Person.district_id == district_id,
                                                    m.Person.id == person_id)).first()
    if person is None:
        raise LookupError(f"no person {person_id} in this district")
    if person.status == ERASED:
        return ErasureReport(person_id=person_id, already_erased=True)
    d, pid = district_id, person_id
    class_ids = tuple(sorted(session.scalars(select(m.Enrollment.class_id).where(
        m.Enrollment.district_id == d, m.Enrollment.person_id == pid).distinct())))
    deleted: dict[str, int] = {}
    marked = 0
    # Canonical rows other systems send: mark their references first, so the engine knows them as erased.
    for kind, model, where in (
        ("result", m.Result, (m.Result.person_id == pid,)),
        ("enrollment", m.Enrollment, (m.Enrollment.person_id == pid,)),
        ("guardian_link", m.GuardianLink, ((m.GuardianLink.student_id == pid) | (m.GuardianLink.guardian_id == pid),)),
    ):
        ids = list(session.scalars(select(model.id).where(model.district_id == d, *where)))
        marked += _mark_refs(session, d, kind, ids)
        deleted[model.__tablename__] = _delete(session, model, model.district_id == d, *where) if ids else 0
    # Learning state, the profile and everything else keyed by the person.
    for model in (m.MasteryRecord, m.GateRecord, m.GateOverrideRecord, m.PaceRecord, m.AccommodationRecord,
                  m.AlertRecord, m.ProfileEntryRecord, m.ProfileSnapshotRecord, m.CheckPostRecord, m.SignInLink,
                  m.AppSession):
        deleted[model.__tablename__] = _delete(session, model, model.district_id == d, model.person_id == pid)
    session.execute(update(m.ProfileEntryRecord).where(m.ProfileEntryRecord.author_id == pid)
                    .values(author_id=None).execution_options(synchronize_session=False))
    session.execute(update(m.GateOverrideRecord).where(m.GateOverrideRecord.author_id == pid)
                    .values(author_id=None).execution_options(synchronize_session=False))
    marked += _mark_refs(session, d, "person", [pid])
    person.sourced_id = f"{ERASED}:{pid}"
    person.given_name = ""
    person.family_name = ""
    person.email = None
    person.username = None
    person.sis_id = None
    person.enabled = False
    person.status = ERASED
    person.updated_at = now
    deleted = {k: v for k, v in deleted.items() if v}
    session.add(m.AuditEvent(district_id=d, at=now, actor=actor, action="privacy.erase", subject=f"person:{pid}",
                             detail={"deleted": deleted, "refs_marked": marked}))
    session.flush()
    if recompute and class_ids:
        from plugin.progress import recompute as recompute_classes

        recompute_classes(session, d, list(class_ids), now=now)
    log.info("privacy.erased person=%s deleted=%s refs=%s", pid, sum(deleted.values()), marked)
    return ErasureReport(person_id=pid, deleted=deleted, refs_marked=marked, class_ids=class_ids)


# =========================================================================== retention


RETENTION_KINDS = ("audit_event", "sync_run", "outbox_item", "profile_snapshot")


def retention_days(privacy_cfg: Mapping[str, Any], kind: str) -> int:
    """Days to keep one kind of record (its own setting, else ``retention_days``)."""
    own = {"audit_event": "audit_retention_days", "sync_run": "sync_run_retention_days",
           "outbox_item": "outbox_retention_days", "profile_snapshot": "snapshot_retention_days"}[kind]
    return int(privacy_cfg.get(own) or privacy_cfg["retention_days"])


def _purge_rows(store: Store, model: Any, *where: ColumnElement[bool], dry_run: bool) -> int:
    """Delete matching rows in batches (one short transaction each); return how many."""
    pk = model.__mapper__.primary_key[0]
    total = 0
    while True:
        with store.session() as session:
            ids = list(session.scalars(select(pk).where(*where).limit(PURGE_BATCH)))
            if dry_run:
                return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
            if not ids:
                return total
            session.execute(delete(model).where(pk.in_(ids)).execution_options(synchronize_session=False))
        total += len(ids)
        if len(ids) < PURGE_BATCH:
            return total


def purge(store: Store, privacy_cfg: Mapping[str, Any], *, now: datetime, dry_run: bool = False) -> dict[str, int]:
    """Delete records past their retention; return the count per table."""
    def cutoff(kind: str) -> datetime:
        return now - timedelta(days=retention_days(privacy_cfg, kind))

    with store.session() as session:
        latest_runs = list(session.scalars(select(func.max(m.SyncRun.id)).group_by(m.SyncRun.source_id)))
    counts = {
        "audit_event": _purge_rows(store, m.AuditEvent, m.AuditEvent.at < cutoff("audit_event"), dry_run=dry_run),
        "sync_run": _purge_rows(store, m.SyncRun, m.SyncRun.started_at < cutoff("sync_run"),
                                m.SyncRun.status != "running", m.SyncRun.id.not_in(latest_runs or [0]),
                                dry_run=dry_run),
        "outbox_item": _purge_rows(store, m.OutboxItem, m.OutboxItem.status == "sent",
                                   m.OutboxItem.sent_at < cutoff("outbox_item"), dry_run=dry_run),
        "profile_snapshot": _purge_rows(store, m.ProfileSnapshotRecord,
                                        m.ProfileSnapshotRecord.taken_on < cutoff("profile_snapshot").date(),
                                        dry_run=dry_run),
        "used_nonce": _purge_rows(store, m.UsedNonce, m.UsedNonce.expires_at < now, dry_run=dry_run),
        "login_state": _purge_rows(store, m.LoginState, m.LoginState.expires_at < now, dry_run=dry_run),
        "app_session": _purge_rows(store, m.AppSession, m.AppSession.expires_at < now, dry_run=dry_run),
        "sign_in_link": _purge_rows(store, m.SignInLink, m.SignInLink.expires_at < now, dry_run=dry_run),
        "rate_limit": _purge_rows(store, m.RateLimit, m.RateLimit.window_start < now - timedelta(days=1),
                                  dry_run=dry_run),
    }
    if not dry_run and any(counts.values()):
        log.info("privacy.purged rows=%d", sum(counts.values()), extra={"purged": counts})
    return counts


def run_purge_job(app: Flask, now: datetime | None = None) -> dict[str, int] | None:
    """The daily retention job; never raises."""
    from plugin.store.db import get_store

    try:
        return purge(get_store(app), app.config["TRAILMARK"]["privacy"], now=now or datetime.now(UTC))
    except Exception:
        log.exception("privacy.purge.crashed")
        return None


def register_jobs(scheduler: Any, app: Flask) -> None:
    """Add the daily retention purge to a scheduler (at ``privacy.purge_hour`` UTC)."""
    from apscheduler.triggers.cron import CronTrigger

    hour = int(app.config["TRAILMARK"]["privacy"]["purge_hour"])
    scheduler.add_job(run_purge_job, CronTrigger(hour=hour, minute=17, timezone=UTC), args=(app,),
                      id="privacy:purge", name="privacy purge", max_instances=1, coalesce=True,
                      replace_existing=True)
