"""Privacy for children's data: encryption at rest, one person's export and erasure, retention.

Encryption. ``[privacy] encryption_key`` names one or more Fernet keys (``env:NAME`` or ``file:PATH``; several
keys separated by commas or whitespace). The first key encrypts; every key decrypts, so a key is rotated by
putting a new one first, restarting, running ``trailmark privacy reencrypt`` and then dropping the old one.
Local runs create ``var/encryption_key`` on first start; production never creates a key by itself. Trailmark's
LTI private keys are stored encrypted with it (``plugin/lti/keys.py`` calls ``encrypt``/``decrypt``); admin API
tokens are stored as SHA-256 digests only, which is stronger still.

Erasure. ``erase_person`` deletes a student's learning state, results, enrollments, guardian links, sessions and
sign-in links, cancels the outbox writes still waiting for them (their scores, messages to them and alert
messages about them, pending or dead-lettered; the rows stay, with the reason and without their payload),
anonymises the person row and marks every external reference to what it deleted as ``erased``: the row and its
references are the tombstone that tells the source that sent them (and a returning launch from the same LMS)
that this person was erased on request, so a later sync reports the record instead of recreating it silently.
All of it is one transaction, the caller's.

The erasure list makes it hold everywhere else. A different source, or a launch from another platform, knows
the student by other ids, so the erasure also keeps keyed hashes (HMAC-SHA256 with a key derived from
``server.secret_key``) of the identifiers a record could name them by: SIS id, e-mail, username and each
system's own id. Never the values: a copy of the database alone cannot even test a guess. Before the sync
engine creates a person (the district's list is read once per run; each new person's identifiers are hashed
and looked up in memory) and before a launch provisions one (one query), the identifiers are checked; a match
is reported as "erased on request" and nothing is created (a launch is refused). An SIS id or a system id
alone names the person; an e-mail or username only within the same kind of role (learner, staff, family) and
when the record carries no other SIS id (two siblings may share a family address). ``lift_erasure`` takes the
student off the list when the family asks (audited): the next full sync or launch creates them afresh.

Retention. ``purge`` deletes operational records older than the configured retention: audit events, sync runs
(the latest run of each source is kept), sent and cancelled outbox items and profile snapshots; used nonces,
login states, sessions, sign-in links and rate-limit windows as soon as they have expired.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import ColumnElement, Connection, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from connectors import outbox
from connectors.sync import ROLE_GROUPS
from plugin.config import ConfigError, create_private_file, resolve_secret
from plugin.store import models as m

if TYPE_CHECKING:
    from flask import Flask

    from plugin.store.db import Store

log = logging.getLogger("trailmark.privacy")

ERASED = "erased"  # status of an erased person and of every external reference to what was erased
ERASED_REASON = "erased on request; not imported again"  # what a sync or launch reports for an erased person
OUTBOX_CANCEL_REASON = "cancelled: the person was erased on request"
KEY_EXTENSION = "trailmark.keyring"
ERASURES_EXTENSION = "trailmark.erasures"
ERASURE_KEY_LABEL = b"trailmark erasure list v1"
WEAK_KINDS = frozenset({"email", "username"})  # name a person only within a role group, and with no other SIS id
LOOKUP_CHUNK = 5000
PURGE_BATCH = 5000
_PEM = b"-----BEGIN"
_default_ring: Keyring | ConfigError | None = None
_default_erasures: ErasureList | None = None


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
            create_private_file(path, (new_key() + "\n").encode())
        ref = f"file:{path}"
    return Keyring(parse_keys(resolve_secret(ref, key="privacy.encryption_key")))


def init_app(app: Flask) -> None:
    """Load the keys once (a missing key is reported when a secret is first needed, and by /readyz); key the
    erasure list with the app's secret and hand it to the store, where the sync engine finds it."""
    global _default_ring, _default_erasures
    from plugin.store.db import get_store

    cfg = app.config["TRAILMARK"]
    ring: Keyring | ConfigError
    try:
        ring = load_keyring(cfg, create=cfg["mode"] == "local")
    except ConfigError as exc:
        ring = exc
    app.extensions[KEY_EXTENSION] = ring
    _default_ring = ring
    erasures = ErasureList(erasure_key(app.config["SECRET_KEY"]))
    app.extensions[ERASURES_EXTENSION] = erasures
    get_store(app).erasures = erasures
    _default_erasures = erasures


def _extension(app: Flask | None, key: str, default: Any) -> Any:
    """``app``'s extension ``key``; without an app, the current app's, or outside one ``default``."""
    if app is not None:
        return app.extensions.get(key)
    from flask import current_app, has_app_context

    return current_app.extensions.get(key) if has_app_context() else default


def keyring(app: Flask | None = None) -> Keyring:
    """The keyring of ``app`` (or the current app; outside an app, the last one created)."""
    ring: Keyring | ConfigError | None = _extension(app, KEY_EXTENSION, _default_ring)
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


# =========================================================================== the erasure list


def erasure_key(secret: str) -> bytes:
    """Derive the erasure list's HMAC key from ``server.secret_key``."""
    return hmac.new(secret.encode(), ERASURE_KEY_LABEL, hashlib.sha256).digest()


def role_group(role: str | None) -> str:
    """The group of roles one person may hold at once (learner, staff, family), as the sync engine matches."""
    return ROLE_GROUPS.get(role or "", role or "")


@dataclass(frozen=True, slots=True)
class Identity:
    """The identifiers a record or a launch brings for someone who may have been erased."""

    key: str  # the record's own id (a sourced id, a launch's sub), to report it by
    role: str | None = None
    sis_id: str | None = None
    email: str | None = None
    username: str | None = None
    refs: tuple[tuple[str, str], ...] = ()  # (namespace, external id): a source's or platform's own id


Entry = tuple[str, int, str, str | None]  # what one listed hash says: kind, erasure id, role group, SIS-id hash


class ErasureList:
    """The erased people's identifiers as keyed hashes, one district at a time."""

    def __init__(self, key: bytes):
        self.key = key
        self.key_id = hashlib.sha256(b"key id:" + key).hexdigest()[:12]
        # HMAC-SHA256 (RFC 2104) with its two padded keys hashed once: a third of hmac.digest()'s time per hash
        block = (key if len(key) <= 64 else hashlib.sha256(key).digest()).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(self, message: bytes) -> str:
        """HMAC-SHA256 of ``message`` under the list's key, in hex."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def digest(self, kind: str, value: str | None) -> str | None:
        """Hash one identifier (SIS ids and system ids exactly, e-mails and usernames case-folded)."""
        if value is None:
            return None
        text = str(value).strip()
        if not text:
            return None
        if kind in WEAK_KINDS:
            text = text.casefold()
        return self.mac(f"{kind}\x1f{text}".encode())

    def ref_digest(self, namespace: str, external_id: str) -> str | None:
        """Hash one system's own id for a person (its namespace is part of it)."""
        return self.digest("ref", f"{namespace}\x1f{external_id}") if external_id else None

    def digests(self, who: Identity) -> list[tuple[str, str]]:
        """Return (kind, digest) for every identifier ``who`` carries."""
        out = [(kind, d) for kind, value in (("sis_id", who.sis_id), ("email", who.email),
                                             ("username", who.username))
               if (d := self.digest(kind, value)) is not None]
        out += [("ref", d) for ns, ext in who.refs if (d := self.ref_digest(ns, ext)) is not None]
        return out

    @staticmethod
    def _entries(conn: Connection | Session, district_id: int, digests: Sequence[str] | None
                 ) -> dict[str, list[Entry]]:
        """The district's listed hashes (all of them, or those among ``digests``) with what each says."""
        ident, erasure = m.ErasedIdentifier, m.Erasure
        query = (select(ident.digest, ident.kind, erasure.id, erasure.role_group, erasure.sis_digest)
                 .join(erasure, erasure.id == ident.erasure_id)
                 .where(ident.district_id == district_id, erasure.lifted_at.is_(None)))
        chunks = [None] if digests is None else [digests[i:i + LOOKUP_CHUNK]
                                                 for i in range(0, len(digests), LOOKUP_CHUNK)]
        entries: dict[str, list[Entry]] = {}
        for chunk in chunks:
            stmt = query if chunk is None else query.where(ident.digest.in_(chunk))
            for digest, kind, erasure_id, group, sis_digest in conn.execute(stmt):
                entries.setdefault(digest, []).append((kind, erasure_id, group, sis_digest))
        return entries

    @staticmethod
    def _decide(role: str | None, own_sis: str | None, hashes: Iterable[str | None],
                entries: Mapping[str, list[Entry]]) -> int | None:
        """The erasure these hashes of one person name, if any (a strong match wins over a weak one)."""
        weak = None
        for d in hashes:
            for kind, erasure_id, group, sis_digest in entries.get(d, ()) if d else ():
                if kind not in WEAK_KINDS:
                    return erasure_id
                other_sis = bool(own_sis and sis_digest and own_sis != sis_digest)
                if weak is None and role_group(role) == group and not other_sis:
                    weak = erasure_id  # not someone else who merely shares an address, or a name
        return weak

    def _match(self, people: Iterable[Identity], entries: Mapping[str, list[Entry]]) -> dict[str, int]:
        """Return ``key`` → erasure id for the people the entries name."""
        found: dict[str, int] = {}
        for who in people:
            hashes = self.digests(who)
            own_sis = next((d for kind, d in hashes if kind == "sis_id"), None)
            erasure_id = self._decide(who.role, own_sis, (d for _kind, d in hashes), entries)
            if erasure_id is not None:
                found[who.key] = erasure_id
        return found

    def find(self, conn: Connection | Session, district_id: int, people: Sequence[Identity]) -> dict[str, int]:
        """Return ``key`` → erasure id for those of ``people`` who were erased (one query per 5,000 hashes)."""
        digests = list(dict.fromkeys(d for who in people for _kind, d in self.digests(who)))
        if not digests:
            return {}
        return self._match(people, self._entries(conn, district_id, digests))

    def checker(self, conn: Connection, district_id: int) -> ErasureCheck:
        """The list as one sync run asks it, batch after batch."""
        return ErasureCheck(self, conn, district_id)


class ErasureCheck:
    """One run's questions to the erasure list.

    The district's listed hashes are read once, on the first batch that would create people (the list only
    grows by hand, one erasure request at a time, so it stays small); then each batch is hashed and looked up in
    memory. A district nobody was erased in costs one query per run, and no hashing.
    """

    def __init__(self, erasures: ErasureList, conn: Connection, district_id: int):
        self.erasures = erasures
        self.conn = conn
        self.district_id = district_id
        self._entries: dict[str, list[Entry]] | None = None
        self._weak: list[str] = []

    def people(self, namespace: str, records: Sequence[Any]) -> dict[str, int]:
        """Return sourced id → erasure id for the person records (of source ``namespace``) that were erased.

        Only the kinds of identifier on the list are hashed. The source's own id is not: a record this source
        sent before has a reference, and the engine itself reports the erased ones.
        """
        entries = self._entries
        if entries is None:
            entries = self._entries = self.erasures._entries(self.conn, self.district_id, None)
            self._weak = [k for k in ("email", "username") if any(e[0] == k for es in entries.values() for e in es)]
        if not entries or not records:
            return {}
        digest, decide, weak = self.erasures.digest, self.erasures._decide, self._weak
        found: dict[str, int] = {}
        for r in records:
            own_sis = digest("sis_id", r.sis_id)
            erasure_id = decide(r.role, own_sis, [own_sis, *(digest(k, getattr(r, k)) for k in weak)], entries)
            if erasure_id is not None:
                found[r.sourced_id] = erasure_id
        return found


def erasure_list(app: Flask | None = None) -> ErasureList:
    """The erasure list of ``app`` (or the current app; outside an app, the last one created)."""
    erasures: ErasureList | None = _extension(app, ERASURES_EXTENSION, _default_erasures)
    if erasures is None:
        raise ConfigError("the erasure list needs server.secret_key, and no app was created to read it")
    return erasures


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


def iso_time(value: date | datetime | None) -> str | None:
    """A date or time as ISO 8601 text (naive times read as UTC), or None."""
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
        "exported_at": iso_time(now),
        "person": {
            "id": p.id, "sourced_id": p.sourced_id, "role": p.role, "given_name": p.given_name,
            "family_name": p.family_name, "email": p.email, "username": p.username, "sis_id": p.sis_id,
            "status": p.status, "enabled": p.enabled, "updated_at": iso_time(p.updated_at),
        },
        "identifiers": [
            {"kind": r.kind, "system": r.namespace, "id": r.external_id, "status": r.status}
            for r in rows(m.ExternalRef, m.ExternalRef.kind == "person", m.ExternalRef.entity_id == person_id)
        ],
        "enrollments": [
            {"class_id": e.class_id, "class": class_title(e.class_id), "role": e.role, "status": e.status,
             "begin_date": iso_time(e.begin_date), "end_date": iso_time(e.end_date)}
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
             "scored_at": iso_time(r.scored_at), "status": r.score_status, "comment": r.comment, "origin": r.origin}
            for r in rows(m.Result, m.Result.person_id == person_id)
        ],
        "mastery": [
            {"class": class_title(x.class_id), "competency": competency_title(x.competency_id), "score": x.score,
             "evidence_count": x.evidence_count, "mastered": x.mastered, "level": x.level,
             "computed_at": iso_time(x.computed_at)}
            for x in rows(m.MasteryRecord, m.MasteryRecord.person_id == person_id)
        ],
        "modules": [
            {"class": class_title(x.class_id), "module": modules.get(x.module_id), "status": x.status,
             "reason": x.reason, "opened_at": iso_time(x.opened_at), "completed_on": iso_time(x.completed_on)}
            for x in rows(m.GateRecord, m.GateRecord.person_id == person_id)
        ],
        "module_overrides": [
            {"class": class_title(x.class_id), "module_id": x.module_id, "kind": x.kind, "note": x.note,
             "at": iso_time(x.at), "revoked_at": iso_time(x.revoked_at)}
            for x in rows(m.GateOverrideRecord, m.GateOverrideRecord.person_id == person_id)
        ],
        "pace": [
            {"class": class_title(x.class_id), "state": x.state, "completed": x.completed, "expected": x.expected,
             "total": x.total, "next_due": iso_time(x.next_due), "projected_finish": iso_time(x.projected_finish),
             "accommodated": x.accommodated, "computed_at": iso_time(x.computed_at)}
            for x in rows(m.PaceRecord, m.PaceRecord.person_id == person_id)
        ],
        "accommodations": [
            {"class": class_title(x.class_id), "extra_days": x.extra_days, "factor": x.factor, "note": x.note,
             "updated_at": iso_time(x.updated_at)}
            for x in rows(m.AccommodationRecord, m.AccommodationRecord.person_id == person_id)
        ],
        "alerts": [
            {"class": class_title(x.class_id), "kind": x.kind, "level": x.level, "detail": x.detail,
             "opened_at": iso_time(x.opened_at), "resolved_at": iso_time(x.resolved_at)}
            for x in rows(m.AlertRecord, m.AlertRecord.person_id == person_id)
        ],
        "profile_entries": [
            {"kind": x.kind, "text": x.text, "author_role": x.author_role, "status": x.status,
             "target_date": iso_time(x.target_date), "competency": competency_title(x.competency_id),
             "created_at": iso_time(x.created_at), "updated_at": iso_time(x.updated_at),
             "archived_at": iso_time(x.archived_at)}
            for x in rows(m.ProfileEntryRecord, m.ProfileEntryRecord.person_id == person_id)
        ],
        "profile_snapshots": [
            {"class": class_title(x.class_id), "taken_on": iso_time(x.taken_on), "data": x.data}
            for x in rows(m.ProfileSnapshotRecord, m.ProfileSnapshotRecord.person_id == person_id)
        ],
        "access_log": [
            {"at": iso_time(a.at), "who": a.actor, "action": a.action, "detail": a.detail}
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
    outbox_cancelled: int = 0
    erasure_id: int | None = None


def _delete(session: Session, model: Any, *where: ColumnElement[bool]) -> int:
    result = session.execute(delete(model).where(*where).execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _mark_refs(session: Session, district_id: int, kind: str, entity_ids: Iterable[int]) -> list[int]:
    """Mark the references to these rows erased; return their ids."""
    ids = sorted(set(entity_ids))
    marked: list[int] = []
    ref = m.ExternalRef
    for start in range(0, len(ids), 500):
        found = list(session.scalars(select(ref.id).where(ref.district_id == district_id, ref.kind == kind,
                                                          ref.entity_id.in_(ids[start:start + 500]))))
        if found:
            session.execute(update(ref).where(ref.id.in_(found)).values(status=ERASED, fingerprint=None)
                            .execution_options(synchronize_session=False))
            marked += found
    return marked


def _queued_writes(session: Session, district_id: int, person_refs: Sequence[tuple[str, str]],
                   alert_ids: Sequence[int]) -> list[int]:
    """The pending and dead outbox items that carry this person: their scores, messages to them, and the
    alert messages about them (to their teachers and parents)."""
    from plugin.alert_messages import KEY_PREFIX

    item = m.OutboxItem
    sources = dict(session.execute(select(m.Source.name, m.Source.id).where(m.Source.district_id == district_id)).all())
    ids_at: dict[tuple[str, int], set[str]] = {}  # target → the person's ids in that system
    for ns, ext in person_refs:
        if ns.startswith("lti:") and ns[4:].isdigit():
            ids_at.setdefault(("platform", int(ns[4:])), set()).add(ext)
        elif ns in sources:
            ids_at.setdefault(("source", sources[ns]), set()).add(ext)
    about = tuple(f"{KEY_PREFIX}:{aid}:" for aid in alert_ids)
    found = []
    for item_id, source_id, platform_id, kind, key, payload in session.execute(
            select(item.id, item.source_id, item.platform_id, item.kind, item.idempotency_key, item.payload)
            .where(item.status.in_((outbox.PENDING, outbox.DEAD)), item.district_id == district_id,
                   item.kind.in_(("score", "message")))):
        theirs = ids_at.get(("source", source_id) if source_id is not None else ("platform", platform_id or 0), set())
        data = payload if isinstance(payload, Mapping) else {}
        if (kind == "score" and data.get("person_sourced_id") in theirs) or (
                kind == "message" and (theirs.intersection(data.get("recipient_sourced_ids") or ())
                                       or (about and str(key).startswith(about)))):
            found.append(item_id)
    return found


def _list_erasure(session: Session, erasures: ErasureList, person: m.Person, person_refs: Sequence[tuple[str, str]],
                  ref_ids: Sequence[int], *, actor: str, now: datetime) -> m.Erasure:
    """Put the person's identifiers on the erasure list, as keyed hashes."""
    who = Identity(str(person.id), person.role, person.sis_id, person.email, person.username, tuple(person_refs))
    erasure = m.Erasure(district_id=person.district_id, person_id=person.id, role_group=role_group(person.role),
                        sis_digest=erasures.digest("sis_id", person.sis_id), key_id=erasures.key_id,
                        ref_ids=sorted(set(ref_ids)), erased_at=now, erased_by=actor)
    session.add(erasure)
    session.flush()
    session.add_all([m.ErasedIdentifier(district_id=person.district_id, erasure_id=erasure.id, kind=kind, digest=d)
                     for kind, d in dict.fromkeys(erasures.digests(who))])
    return erasure


def erase_person(session: Session, district_id: int, person_id: int, *, actor: str, now: datetime,
                 recompute: bool = True, erasures: ErasureList | None = None) -> ErasureReport:
    """Erase one person's data on request, cancel their queued writes, list their identifiers (hashed) so no
    source or launch brings them back, and leave a tombstone; audited. The caller commits."""
    erasures = erasures or erasure_list()
    person = session.scalars(select(m.Person).where(m.Person.district_id == district_id,
                                                    m.Person.id == person_id)).first()
    if person is None:
        raise LookupError(f"no person {person_id} in this district")
    if person.status == ERASED:
        return ErasureReport(person_id=person_id, already_erased=True)
    d, pid = district_id, person_id
    class_ids = tuple(sorted(session.scalars(select(m.Enrollment.class_id).where(
        m.Enrollment.district_id == d, m.Enrollment.person_id == pid).distinct())))
    person_refs = [(ns, ext) for ns, ext in session.execute(
        select(m.ExternalRef.namespace, m.ExternalRef.external_id).where(
            m.ExternalRef.district_id == d, m.ExternalRef.kind == "person", m.ExternalRef.entity_id == pid)).all()]
    alert_ids = list(session.scalars(select(m.AlertRecord.id).where(m.AlertRecord.district_id == d,
                                                                    m.AlertRecord.person_id == pid)))
    cancelled = outbox.cancel(session, _queued_writes(session, d, person_refs, alert_ids), OUTBOX_CANCEL_REASON,
                              forget=True)
    deleted: dict[str, int] = {}
    marked: list[int] = []
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
    erasure = _list_erasure(session, erasures, person, person_refs, marked, actor=actor, now=now)
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
                             detail={"deleted": deleted, "refs_marked": len(marked), "outbox_cancelled": cancelled,
                                     "erasure": erasure.id}))
    session.flush()
    if recompute and class_ids:
        from plugin.progress import recompute as recompute_classes

        recompute_classes(session, d, list(class_ids), now=now)
    log.info("privacy.erased person=%s deleted=%s refs=%s outbox_cancelled=%s", pid, sum(deleted.values()),
             len(marked), cancelled)
    return ErasureReport(person_id=pid, deleted=deleted, refs_marked=len(marked), class_ids=class_ids,
                         outbox_cancelled=cancelled, erasure_id=erasure.id)


@dataclass(frozen=True)
class LiftReport:
    """What lifting one erasure released."""

    person_id: int | None
    erasure_id: int | None
    refs_freed: int


def find_erasure(session: Session, district_id: int, ref: str, erasures: ErasureList | None = None
                 ) -> m.Erasure | None:
    """Find the district's active erasure of a person by Trailmark id (of the tombstone), SIS id or e-mail."""
    ref = ref.strip()
    e = m.Erasure
    active = (e.district_id == district_id, e.lifted_at.is_(None))
    if ref.isdigit():
        found = session.scalars(select(e).where(*active, e.person_id == int(ref)).order_by(e.id.desc())).first()
        if found is not None:
            return found
    erasures = erasures or erasure_list()
    digests = [d for d in (erasures.digest("sis_id", ref), erasures.digest("email", ref)) if d]
    return session.scalars(select(e).join(m.ErasedIdentifier, m.ErasedIdentifier.erasure_id == e.id).where(
        *active, m.ErasedIdentifier.district_id == district_id, m.ErasedIdentifier.kind.in_(("sis_id", "email")),
        m.ErasedIdentifier.digest.in_(digests)).order_by(e.id.desc())).first()


def lift_erasure(session: Session, district_id: int, person_id: int, *, actor: str, now: datetime,
                 reason: str = "") -> LiftReport:
    """Take an erased person off the erasure list at the family's request; audited. The caller commits.

    Their hashed identifiers are deleted and the references the erasure kept are freed, so the next full sync
    (or launch) creates them afresh; nothing erased comes back by itself. The anonymised tombstone stays.
    """
    person = session.scalars(select(m.Person).where(m.Person.district_id == district_id,
                                                    m.Person.id == person_id)).first()
    if person is None or person.status != ERASED:
        raise LookupError(f"person {person_id} of this district is not erased")
    found = list(session.scalars(select(m.Erasure).where(m.Erasure.district_id == district_id,
                                                         m.Erasure.person_id == person_id,
                                                         m.Erasure.lifted_at.is_(None))))
    if not found and session.scalar(select(func.count()).select_from(m.Erasure).where(
            m.Erasure.district_id == district_id, m.Erasure.person_id == person_id)):
        raise LookupError(f"the erasure of person {person_id} was already lifted")
    ref = m.ExternalRef
    ref_ids = {int(i) for e in found for i in (e.ref_ids or [])}
    ref_ids.update(session.scalars(select(ref.id).where(ref.district_id == district_id, ref.kind == "person",
                                                       ref.entity_id == person_id, ref.status == ERASED)))
    freed = 0
    ids = sorted(ref_ids)
    for start in range(0, len(ids), 500):
        freed += _delete(session, ref, ref.district_id == district_id, ref.status == ERASED,
                         ref.id.in_(ids[start:start + 500]))
    for erasure in found:
        _delete(session, m.ErasedIdentifier, m.ErasedIdentifier.erasure_id == erasure.id)
        erasure.lifted_at = now
        erasure.lifted_by = actor
    detail: dict[str, Any] = {"refs_freed": freed, "erasures": [e.id for e in found]}
    if reason.strip():
        detail["reason"] = reason.strip()[:500]
    session.add(m.AuditEvent(district_id=district_id, at=now, actor=actor, action="privacy.erasure_lifted",
                             subject=f"person:{person_id}", detail=detail))
    session.flush()
    log.info("privacy.erasure_lifted person=%s refs=%s", person_id, freed)
    return LiftReport(person_id=person_id, erasure_id=found[0].id if found else None, refs_freed=freed)


def list_erasures(session: Session, district_id: int, *, include_lifted: bool = False) -> list[m.Erasure]:
    """The district's erasures, newest first."""
    e = m.Erasure
    where = [e.district_id == district_id] + ([] if include_lifted else [e.lifted_at.is_(None)])
    return list(session.scalars(select(e).where(*where).order_by(e.erased_at.desc(), e.id.desc())))


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
        "outbox_item": _purge_rows(store, m.OutboxItem, or_(
            and_(m.OutboxItem.status == outbox.SENT, m.OutboxItem.sent_at < cutoff("outbox_item")),
            and_(m.OutboxItem.status == outbox.CANCELLED, m.OutboxItem.created_at < cutoff("outbox_item"))),
            dry_run=dry_run),
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
