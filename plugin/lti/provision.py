"""Just-in-time rostering from a launch: find (or create) the person, the class and the enrollment.

A launch is matched to the roster the sync engine keeps: first by this platform's ``sub`` (an external reference in
namespace ``lti:<platform id>``), then by ``lis.person_sourcedid`` = the person's SIS id, and only then is a person
created from the launch's own claims. Mentor launches link the parent to the mentees the LMS lists.

Someone erased on request is never provisioned again: their ``sub`` still leads to the anonymised tombstone, and
a person about to be created is first looked up on the erasure list (this platform's ``sub``, the LIS person
sourcedid as SIS id, the e-mail). Either way the launch is refused with reason ``erased_on_request`` and an
audit event, until the district lifts the erasure.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from plugin import privacy
from plugin.cache import Cache
from plugin.lti.errors import LtiError
from plugin.lti.launch import LaunchContext, launcher_key
from plugin.lti.roles import ADMIN, PARENT, STUDENT, TEACHER
from plugin.lti.sessions import person_index
from plugin.store.models import AuditEvent, Class, Enrollment, Erasure, ExternalRef, GuardianLink, Person

PERSON_ROLE = {TEACHER: "teacher", STUDENT: "student", PARENT: "parent", ADMIN: "administrator"}
LAUNCHER_SECONDS = 600


class ErasedOnRequest(Exception):
    """The launching person was erased on request (``person_id``: their tombstone, when known)."""

    def __init__(self, person_id: int | None):
        super().__init__(f"person {person_id} was erased on request")
        self.person_id = person_id


def namespace(platform_id: int) -> str:
    return f"lti:{platform_id}"


def _ref(session: Session, district_id: int, kind: str, ns: str, external_id: str) -> ExternalRef | None:
    return session.scalars(select(ExternalRef).where(
        ExternalRef.district_id == district_id, ExternalRef.kind == kind, ExternalRef.namespace == ns,
        ExternalRef.external_id == external_id)).first()


def _link(session: Session, district_id: int, kind: str, ns: str, external_id: str, entity_id: int) -> None:
    session.add(ExternalRef(district_id=district_id, kind=kind, namespace=ns, external_id=external_id,
                            entity_id=entity_id, status="active"))


def find_person_by_sub(session: Session, district_id: int, platform_id: int, sub: str) -> Person | None:
    ref = _ref(session, district_id, "person", namespace(platform_id), sub)
    return session.get(Person, ref.entity_id) if ref else None


def _person(session: Session, ctx: LaunchContext, now: datetime) -> Person:
    ns = namespace(ctx.platform_id)
    person = find_person_by_sub(session, ctx.district_id, ctx.platform_id, ctx.user_sub)
    if person is not None:
        if person.status == privacy.ERASED:
            raise ErasedOnRequest(person.id)
        return person
    if ctx.person_sourcedid:
        person = session.scalars(select(Person).where(
            Person.district_id == ctx.district_id, Person.sis_id == ctx.person_sourcedid)).first()
    if person is None:
        _check_erasure_list(session, ctx)
        given = ctx.given_name or (ctx.name.split(" ", 1)[0] if ctx.name else "")
        family = ctx.family_name or (ctx.name.split(" ", 1)[1] if ctx.name and " " in ctx.name else "")
        person = Person(district_id=ctx.district_id, sourced_id=f"{ns}:{ctx.user_sub}",
                        role=PERSON_ROLE.get(ctx.view, "student"), given_name=given[:255], family_name=family[:255],
                        email=ctx.email, sis_id=ctx.person_sourcedid, status="active", updated_at=now)
        session.add(person)
        session.flush()
    _link(session, ctx.district_id, "person", ns, ctx.user_sub, person.id)
    session.flush()
    return person


def _check_erasure_list(session: Session, ctx: LaunchContext) -> None:
    """Raise ErasedOnRequest when the person a launch would create is on the erasure list (one query)."""
    erasures = privacy.erasure_list()
    who = privacy.Identity(ctx.user_sub, PERSON_ROLE.get(ctx.view, "student"), sis_id=ctx.person_sourcedid,
                           email=ctx.email, refs=((namespace(ctx.platform_id), ctx.user_sub),))
    found = erasures.find(session, ctx.district_id, [who])
    if found:
        erasure = session.get(Erasure, found[ctx.user_sub])
        raise ErasedOnRequest(erasure.person_id if erasure is not None else None)


def _refuse_erased(session: Session, ctx: LaunchContext, erased: ErasedOnRequest, now: datetime) -> LtiError:
    """Record the refused launch of an erased person (audited, nothing else) and say why."""
    session.add(AuditEvent(district_id=ctx.district_id, at=now, actor=f"platform:{ctx.platform_id}",
                           action="privacy.erased_launch_refused",
                           subject=f"person:{erased.person_id}" if erased.person_id else None,
                           detail={"view": ctx.view}))
    return LtiError("erased_on_request", "This account's data was erased from Trailmark at the family's request, "
                    "so Trailmark does not open for it. If the family wants to use Trailmark again, the district "
                    "can lift the erasure.", status=403)


def _class(session: Session, ctx: LaunchContext, now: datetime) -> Class | None:
    if not ctx.context_id:
        return None
    ns = namespace(ctx.platform_id)
    ref = _ref(session, ctx.district_id, "class", ns, ctx.context_id)
    if ref is not None:
        return session.get(Class, ref.entity_id)
    klass = None
    if ctx.course_sourcedid:
        klass = session.scalars(select(Class).where(
            Class.district_id == ctx.district_id, Class.sourced_id == ctx.course_sourcedid)).first()
    if klass is None:
        klass = session.scalars(select(Class).where(
            Class.district_id == ctx.district_id, Class.lti_context_id == ctx.context_id)).first()
    if klass is None:
        klass = Class(district_id=ctx.district_id, sourced_id=f"{ns}:{ctx.context_id}",
                      title=(ctx.context_title or ctx.context_label or "Untitled class")[:255],
                      class_code=ctx.context_label, lti_context_id=ctx.context_id, status="active", updated_at=now)
        session.add(klass)
        session.flush()
    elif not klass.lti_context_id:
        klass.lti_context_id = ctx.context_id
    _link(session, ctx.district_id, "class", ns, ctx.context_id, klass.id)
    session.flush()
    return klass


def _enroll(session: Session, ctx: LaunchContext, person: Person, klass: Class, now: datetime) -> None:
    role = {TEACHER: "teacher", STUDENT: "student"}.get(ctx.view)
    if role is None:
        return
    existing = session.scalars(select(Enrollment).where(
        Enrollment.class_id == klass.id, Enrollment.person_id == person.id, Enrollment.role == role)).first()
    if existing is None:
        session.add(Enrollment(district_id=ctx.district_id, sourced_id=f"lti:{klass.id}:{person.id}:{role}",
                               class_id=klass.id, person_id=person.id, role=role, status="active", updated_at=now))
    elif existing.status != "active":
        existing.status = "active"
        existing.updated_at = now


def _mentees(session: Session, ctx: LaunchContext, parent: Person, now: datetime) -> None:
    for sub in ctx.mentee_subs[:50]:
        child = find_person_by_sub(session, ctx.district_id, ctx.platform_id, sub)
        if child is None or child.id == parent.id or child.status == privacy.ERASED:
            continue
        sourced = f"{namespace(ctx.platform_id)}:{ctx.user_sub}>{sub}"
        link = session.scalars(select(GuardianLink).where(
            GuardianLink.district_id == ctx.district_id, GuardianLink.sourced_id == sourced)).first()
        if link is None:
            session.add(GuardianLink(district_id=ctx.district_id, sourced_id=sourced, guardian_id=parent.id,
                                     student_id=child.id, relation="parent", status="active", updated_at=now))


def _known_query(*, with_class: bool, role: bool) -> Select[Any]:
    person_ref, class_ref = aliased(ExternalRef), aliased(ExternalRef)
    query = select(Person.id).join(person_ref, person_ref.entity_id == Person.id).where(
        person_ref.district_id == bindparam("district_id"), person_ref.kind == "person",
        person_ref.namespace == bindparam("ns"), person_ref.external_id == bindparam("sub"),
        Person.district_id == bindparam("district_id"), Person.status != privacy.ERASED)
    if with_class:
        query = query.add_columns(Class.id).join(class_ref, and_(
            class_ref.district_id == bindparam("district_id"), class_ref.kind == "class",
            class_ref.namespace == bindparam("ns"), class_ref.external_id == bindparam("context_id"))
        ).join(Class, Class.id == class_ref.entity_id)
        if role:
            query = query.join(Enrollment, and_(
                Enrollment.class_id == Class.id, Enrollment.person_id == Person.id,
                Enrollment.role == bindparam("role"), Enrollment.status == "active"))
    return query.limit(1)


_KNOWN = {(with_class, role): _known_query(with_class=with_class, role=role)
          for with_class in (True, False) for role in (True, False)}


def _known(session: Session, ctx: LaunchContext) -> tuple[int, int | None] | None:
    """A returning launch: person, class and active enrollment all exist; one column query, no writes."""
    role = {TEACHER: "teacher", STUDENT: "student"}.get(ctx.view)
    query = _KNOWN[(ctx.context_id is not None, role is not None)]
    row = session.connection().execute(query, {
        "district_id": ctx.district_id, "ns": namespace(ctx.platform_id), "sub": ctx.user_sub,
        "context_id": ctx.context_id, "role": role}).first()
    if row is None:
        return None
    return (row[0], row[1]) if ctx.context_id is not None else (row[0], None)


def _decode_ids(raw: bytes | None) -> tuple[int, int | None] | None:
    if raw is None:
        return None
    try:
        person_id, class_id = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(person_id, int) or not (class_id is None or isinstance(class_id, int)):
        return None
    return person_id, class_id


def _take_write_lock(session: Session) -> None:
    """SQLite: hold the write lock before reading what is about to be written.

    A launch may have written nothing yet (login state and nonce in Redis), so the reads below would start a
    deferred transaction; if another worker commits before its first insert, SQLite cannot upgrade the stale
    snapshot and refuses at once ("database is locked") instead of waiting. ``BEGIN IMMEDIATE`` waits its turn.
    """
    conn = session.connection()
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        if raw is not None and not raw.in_transaction:
            raw.execute("BEGIN IMMEDIATE")


def provision(session: Session, ctx: LaunchContext, now: datetime | None = None, *, cache: Cache | None = None,
              cached: tuple[str, bytes | None] | None = None) -> tuple[int, int | None]:
    """Resolve the launch's person and class (their ids), creating what is missing; safe under concurrent launches.

    A returning launch (person, class and active enrollment already there) costs one read and writes nothing. With
    a shared ``cache`` (Redis) that read is remembered for ``LAUNCHER_SECONDS`` under the launch's issuer, client
    id, user, context and view (``cached``: that key and its value when the caller already read them, as
    ``check_launch`` does): a returning launch then
    reads nothing. The database stays the roster's source of truth: only ids read from it are remembered, never
    ids of rows this launch is creating, and within that time a re-activation the launch would have written is
    left to the next launch after it.
    """
    if ctx.view != PARENT:  # a parent's mentee links are refreshed on every launch
        key = launcher_key(ctx.issuer, ctx.client_id, ctx.user_sub, ctx.context_id, ctx.view)
        if cache is not None:
            hit = _decode_ids(cached[1] if cached is not None and cached[0] == key else cache.get(key))
            if hit is not None:
                return hit
        known = _known(session, ctx)
        if known is not None:
            if cache is not None:  # listed under the person: erasing them forgets it (end_sessions_of)
                cache.set(key, json.dumps(known), LAUNCHER_SECONDS, index=person_index(ctx.district_id, known[0]))
            return known
    now = now or datetime.now(UTC)
    _take_write_lock(session)
    for attempt in (1, 2):
        try:
            with session.begin_nested():
                person = _person(session, ctx, now)
                klass = _class(session, ctx, now)
                if klass is not None:
                    _enroll(session, ctx, person, klass, now)
                if ctx.view == PARENT:
                    _mentees(session, ctx, person, now)
                session.flush()
            return person.id, klass.id if klass is not None else None
        except IntegrityError:
            if attempt == 2:
                raise
        except ErasedOnRequest as erased:
            raise _refuse_erased(session, ctx, erased, now) from None
    raise AssertionError("unreachable")
