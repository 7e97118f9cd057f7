"""Just-in-time rostering from a launch: find (or create) the person, the class and the enrollment.

A launch is matched to the roster the sync engine keeps: first by this platform's ``sub`` (an external reference in
namespace ``lti:<platform id>``), then by ``lis.person_sourcedid`` = the person's SIS id, and only then is a person
created from the launch's own claims. Mentor launches link the parent to the mentees the LMS lists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from plugin.lti.launch import LaunchContext
from plugin.lti.roles import ADMIN, PARENT, STUDENT, TEACHER
from plugin.store.models import Class, Enrollment, ExternalRef, GuardianLink, Person

PERSON_ROLE = {TEACHER: "teacher", STUDENT: "student", PARENT: "parent", ADMIN: "administrator"}


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
        return person
    if ctx.person_sourcedid:
        person = session.scalars(select(Person).where(
            Person.district_id == ctx.district_id, Person.sis_id == ctx.person_sourcedid)).first()
    if person is None:
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
        if child is None or child.id == parent.id:
            continue
        sourced = f"{namespace(ctx.platform_id)}:{ctx.user_sub}>{sub}"
        link = session.scalars(select(GuardianLink).where(
            GuardianLink.district_id == ctx.district_id, GuardianLink.sourced_id == sourced)).first()
        if link is None:
            session.add(GuardianLink(district_id=ctx.district_id, sourced_id=sourced, guardian_id=parent.id,
                                     student_id=child.id, relation="parent", status="active", updated_at=now))


def _known_query(*, with_class: bool, role: bool) -> Select[Any]:
    person_ref, class_ref = aliased(ExternalRef), aliased(ExternalRef)
    query = select(Person).join(person_ref, person_ref.entity_id == Person.id).where(
        person_ref.district_id == bindparam("district_id"), person_ref.kind == "person",
        person_ref.namespace == bindparam("ns"), person_ref.external_id == bindparam("sub"),
        Person.district_id == bindparam("district_id"))
    if with_class:
        query = query.add_columns(Class).join(class_ref, and_(
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


def _known(session: Session, ctx: LaunchContext) -> tuple[Person, Class | None] | None:
    """A returning launch: person, class and active enrollment all exist; one query, no writes."""
    role = {TEACHER: "teacher", STUDENT: "student"}.get(ctx.view)
    query = _KNOWN[(ctx.context_id is not None, role is not None)]
    row = session.execute(query, {"district_id": ctx.district_id, "ns": namespace(ctx.platform_id),
                                  "sub": ctx.user_sub, "context_id": ctx.context_id, "role": role}).first()
    if row is None:
        return None
    return (row[0], row[1]) if ctx.context_id is not None else (row[0], None)


def provision(session: Session, ctx: LaunchContext, now: datetime | None = None) -> tuple[Person, Class | None]:
    """Resolve the launch's person and class, creating what is missing; safe under concurrent first launches."""
    if ctx.view != PARENT:  # a parent's mentee links are refreshed on every launch
        known = _known(session, ctx)
        if known is not None:
            return known
    now = now or datetime.now(UTC)
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
            return person, klass
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
