"""Read queries the panels use. Every query is scoped to one district."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, or_, select, union_all
from sqlalchemy.orm import Session, aliased

from plugin.store.models import (
    AcademicSession,
    AccommodationRecord,
    Activity,
    AlertRecord,
    Alignment,
    Class,
    Competency,
    Deployment,
    District,
    Enrollment,
    ExternalRef,
    GateOverrideRecord,
    GateRecord,
    GuardianLink,
    MasteryRecord,
    Module,
    PacePlanRecord,
    PaceRecord,
    Person,
    Platform,
    ProfileEntryRecord,
    ProfileSnapshotRecord,
    Result,
    ToolKey,
)


def get_person(session: Session, district_id: int, person_id: int) -> Person | None:
    """A person of the district by id (a primary-key lookup, served from the session when already loaded)."""
    person = session.get(Person, person_id)
    return person if person is not None and person.district_id == district_id else None


def get_class(session: Session, district_id: int, class_id: int) -> Class | None:
    return session.scalars(select(Class).where(Class.district_id == district_id, Class.id == class_id)).first()


def list_students(session: Session, district_id: int, class_id: int) -> list[Person]:
    """Active students of a class, by family name."""
    return list(session.scalars(
        select(Person).join(Enrollment, Enrollment.person_id == Person.id)
        .where(Enrollment.district_id == district_id, Enrollment.class_id == class_id,
               Enrollment.role == "student", Enrollment.status == "active", Person.status == "active")
        .order_by(Person.family_name, Person.given_name, Person.id)))


def list_modules(session: Session, district_id: int, class_id: int) -> list[Module]:
    return list(session.scalars(
        select(Module).where(Module.district_id == district_id, Module.class_id == class_id,
                             Module.status == "active").order_by(Module.position, Module.id)))


def list_classes_of(session: Session, district_id: int, person_id: int, role: str = "student") -> list[Class]:
    return list(session.scalars(
        select(Class).join(Enrollment, Enrollment.class_id == Class.id)
        .where(Enrollment.district_id == district_id, Enrollment.person_id == person_id, Enrollment.role == role,
               Enrollment.status == "active", Class.status == "active").order_by(Class.title)))


def list_children(session: Session, district_id: int, guardian_id: int) -> list[Person]:
    """The students a parent or guardian is linked to (roster agents, Canvas observees, LTI mentees)."""
    return list(session.scalars(
        select(Person).join(GuardianLink, GuardianLink.student_id == Person.id)
        .where(GuardianLink.district_id == district_id, GuardianLink.guardian_id == guardian_id,
               GuardianLink.status == "active", Person.status == "active")
        .order_by(Person.given_name, Person.id).distinct()))


def is_guardian_of(session: Session, district_id: int, guardian_id: int, student_id: int) -> bool:
    return session.scalars(select(GuardianLink.id).where(
        GuardianLink.district_id == district_id, GuardianLink.guardian_id == guardian_id,
        GuardianLink.student_id == student_id, GuardianLink.status == "active")).first() is not None


def teaches_student(session: Session, district_id: int, teacher_id: int, student_id: int) -> bool:
    """True when the teacher has an active teaching enrollment in a class where the student is enrolled."""
    teaching = select(Enrollment.class_id).where(
        Enrollment.district_id == district_id, Enrollment.person_id == teacher_id,
        Enrollment.role.in_(("teacher", "aide")), Enrollment.status == "active")
    return session.scalars(select(Enrollment.id).where(
        Enrollment.district_id == district_id, Enrollment.person_id == student_id, Enrollment.role == "student",
        Enrollment.status == "active", Enrollment.class_id.in_(teaching))).first() is not None


def list_platforms(session: Session, district_id: int) -> list[tuple[Platform, Sequence[str]]]:
    platforms = list(session.scalars(select(Platform).where(Platform.district_id == district_id)
                                     .order_by(Platform.id)))
    deployments: dict[int, list[str]] = {p.id: [] for p in platforms}
    if platforms:
        for platform_id, dep in session.execute(select(Deployment.platform_id, Deployment.deployment_id)
                                                .where(Deployment.platform_id.in_(deployments))):
            deployments[platform_id].append(dep)
    return [(p, deployments[p.id]) for p in platforms]


def list_keys(session: Session) -> list[ToolKey]:
    return list(session.scalars(select(ToolKey).order_by(ToolKey.id)))


# ============================================================================ learning panels
#
# The class view and the learner profile read plain rows: a fixed handful of queries per page whatever the class
# size (never one per student), columns rather than ORM objects where a page reads thousands of rows.


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """A class with its term dates (from the academic session)."""

    id: int
    title: str
    term_title: str | None
    term_start: date | None
    term_end: date | None


@dataclass(frozen=True, slots=True)
class StudentInfo:
    id: int
    given_name: str
    family_name: str
    sourced_id: str

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip() or self.sourced_id


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    id: int
    class_id: int
    title: str
    position: int
    prerequisite_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CompetencyInfo:
    """A competency of a class, in curriculum order: by the first module whose activities align to it."""

    id: int
    class_id: int
    title: str
    points_possible: float
    mastery_points: float
    ratings: tuple[tuple[float, str], ...]
    module_id: int | None


class MasteryRow(NamedTuple):
    """A student's score on a competency (a tuple: a class view reads thousands of them)."""

    class_id: int
    person_id: int
    competency_id: int
    score: float | None
    mastered: bool
    level: str | None
    evidence_count: int
    latest_at: datetime | None


@dataclass(frozen=True, slots=True)
class GateRow:
    class_id: int
    person_id: int
    module_id: int
    status: str
    reason: str
    missing: tuple[dict[str, Any], ...]
    opened_by_mastery: bool
    completed_on: date | None


@dataclass(frozen=True, slots=True)
class PaceRow:
    class_id: int
    person_id: int
    state: str
    phase: str
    completed: int
    expected: int
    total: int
    modules_behind: int
    days_behind: int
    modules_ahead: int
    days_ahead: int
    next_due: date | None
    projected_finish: date | None
    accommodated: bool


@dataclass(frozen=True, slots=True)
class AlertRow:
    id: int
    class_id: int
    person_id: int
    kind: str
    level: int
    detail: str
    opened_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class OverrideRow:
    id: int
    class_id: int
    person_id: int
    module_id: int
    kind: str
    note: str
    author_name: str
    at: datetime


@dataclass(frozen=True, slots=True)
class PlanRow:
    """A class's stored pace plan settings (None dates: the term's)."""

    class_id: int
    start_date: date | None
    end_date: date | None
    due_edits: dict[str, Any]
    skip_weekends: bool
    skip_dates: tuple[str, ...]
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class AccommodationRow:
    class_id: int
    person_id: int
    extra_days: int
    factor: float
    note: str


@dataclass(frozen=True, slots=True)
class EntryRow:
    id: int
    person_id: int
    kind: str
    text: str
    author_id: int | None
    author_name: str
    author_role: str
    target_date: date | None
    status: str | None
    competency_id: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    class_id: int
    taken_on: date
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """One recent result: what was scored, when, and the comment that came with it."""

    class_id: int
    title: str
    score: float | None
    score_maximum: float | None
    scored_at: datetime | None
    comment: str | None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _rows(session: Session, statement: Any, **params: Any) -> Sequence[Any]:
    """Run a prepared column query on the session's connection (pending changes flushed first) and fetch all."""
    if session.new or session.dirty or session.deleted:
        session.flush()
    return session.connection().execute(statement, params).all()


# Statements are built once with bound parameters: building a SELECT costs more than running it on a small table.
_DISTRICT = bindparam("district_id")
_CLASS = bindparam("class_id")
_CLASSES = bindparam("class_ids", expanding=True)
_PERSON = bindparam("person_id")


def _in_district(column: Any) -> Any:
    """``district_id + 0 = :district_id``: the same filter, written so that it never picks the index.

    Learning-state tables index both the district and the class (or person); without statistics SQLite may
    take the district's index and read every row of the district. The class or person index is the narrow one.
    """
    return (column + 0) == _DISTRICT


_CLASS_INFO = (
    select(Class.id, Class.title, AcademicSession.title, AcademicSession.start_date, AcademicSession.end_date)
    .outerjoin(AcademicSession, AcademicSession.id == Class.term_id)
    .where(Class.district_id == _DISTRICT, Class.id.in_(_CLASSES)))


def class_info(session: Session, district_id: int, class_ids: Sequence[int]) -> dict[int, ClassInfo]:
    """Classes with their term dates."""
    if not class_ids:
        return {}
    rows = _rows(session, _CLASS_INFO, district_id=district_id, class_ids=list(class_ids))
    return {cid: ClassInfo(cid, title, term, start, end) for cid, title, term, start, end in rows}


_STUDENT_CLASSES = (
    select(Class.id, Class.title, AcademicSession.title, AcademicSession.start_date, AcademicSession.end_date)
    .join(Enrollment, Enrollment.class_id == Class.id)
    .outerjoin(AcademicSession, AcademicSession.id == Class.term_id)
    .where(Enrollment.district_id == _DISTRICT, Enrollment.person_id == _PERSON, Enrollment.role == "student",
           Enrollment.status == "active", Class.status == "active")
    .order_by(Class.id))


def student_classes(session: Session, district_id: int, person_id: int) -> dict[int, ClassInfo]:
    """The active classes a student is enrolled in, with their term dates (``class_ids_of_student`` and
    ``class_info`` in one query), by class id."""
    rows = _rows(session, _STUDENT_CLASSES, district_id=district_id, person_id=person_id)
    return {cid: ClassInfo(cid, title, term, start, end) for cid, title, term, start, end in rows}


_PERSON_INFO = (select(Person.id, Person.given_name, Person.family_name, Person.sourced_id)
                .where(Person.id == _PERSON, Person.district_id == _DISTRICT, Person.status != "erased"))
_PERSON_CLASSES = (
    select(Person.id, Person.given_name, Person.family_name, Person.sourced_id, Class.id, Class.title,
           AcademicSession.title, AcademicSession.start_date, AcademicSession.end_date)
    .outerjoin(Enrollment, (Enrollment.person_id == Person.id) & (Enrollment.district_id == _DISTRICT)
               & (Enrollment.role == "student") & (Enrollment.status == "active"))
    .outerjoin(Class, (Class.id == Enrollment.class_id) & (Class.status == "active"))
    .outerjoin(AcademicSession, AcademicSession.id == Class.term_id)
    .where(Person.id == _PERSON, Person.district_id == _DISTRICT, Person.status != "erased")
    .order_by(Class.id))


def student_with_classes(session: Session, district_id: int,
                         person_id: int) -> tuple[StudentInfo | None, dict[int, ClassInfo]]:
    """``person_info`` and ``student_classes`` in one query: the student (None when erased) and their classes."""
    rows = _rows(session, _PERSON_CLASSES, district_id=district_id, person_id=person_id)
    if not rows:
        return None, {}
    classes = {cid: ClassInfo(cid, title, term, start, end)
               for *_person, cid, title, term, start, end in rows if cid is not None}
    return StudentInfo(*rows[0][:4]), classes


def person_info(session: Session, district_id: int, person_id: int) -> StudentInfo | None:
    """A person of the district as a plain row (names for a page header or a profile); None when erased."""
    rows = _rows(session, _PERSON_INFO, district_id=district_id, person_id=person_id)
    return StudentInfo(*rows[0]) if rows else None


_STUDENT_INFOS = (
    select(Person.id, Person.given_name, Person.family_name, Person.sourced_id)
    .join(Enrollment, Enrollment.person_id == Person.id)
    .where(Enrollment.district_id == _DISTRICT, Enrollment.class_id == _CLASS, Enrollment.role == "student",
           Enrollment.status == "active", Person.status == "active")
    .order_by(Person.family_name, Person.given_name, Person.id))


def student_infos(session: Session, district_id: int, class_id: int) -> list[StudentInfo]:
    """Active students of a class as plain rows, by family name."""
    seen: set[int] = set()
    out: list[StudentInfo] = []
    for pid, given, family, sourced in _rows(session, _STUDENT_INFOS, district_id=district_id, class_id=class_id):
        if pid not in seen:
            seen.add(pid)
            out.append(StudentInfo(pid, given, family, sourced))
    return out


_MODULE_INFOS = (
    select(Module.id, Module.class_id, Module.title, Module.position, Module.prerequisite_ids)
    .where(Module.district_id == _DISTRICT, Module.class_id.in_(_CLASSES), Module.status == "active")
    .order_by(Module.class_id, Module.position, Module.id))


def module_infos(session: Session, district_id: int, class_ids: Sequence[int]) -> list[ModuleInfo]:
    """Active modules of some classes, by class and position."""
    if not class_ids:
        return []
    rows = _rows(session, _MODULE_INFOS, district_id=district_id, class_ids=list(class_ids))
    return [ModuleInfo(mid, cid, title, position, tuple(int(p) for p in (prereqs or [])))
            for mid, cid, title, position, prereqs in rows]


_ALIGNED = (
    select(Activity.class_id, Alignment.competency_id, Module.id, Module.position)
    .join(Alignment, Alignment.activity_id == Activity.id)
    .outerjoin(Module, (Module.id == Activity.module_id) & (Module.status == "active"))
    .where(Activity.district_id == _DISTRICT, Activity.class_id.in_(_CLASSES), Activity.status == "active",
           Alignment.status == "active"))
_DISTRICT_SETTINGS = select(District.settings).where(District.id == _DISTRICT)
_COMPETENCIES = (
    select(Competency.id, Competency.class_id, Competency.title, Competency.points_possible,
           Competency.mastery_points, Competency.ratings)
    .where(Competency.district_id == _DISTRICT, Competency.status == "active",
           or_(Competency.class_id.in_(_CLASSES), Competency.id.in_(bindparam("competency_ids", expanding=True)))))


def competency_infos(session: Session, district_id: int, class_ids: Sequence[int]) -> list[CompetencyInfo]:
    """The competencies of some classes (the class's own and those aligned to its activities), curriculum order.

    Mastery points fall back to the district's ``mastery_threshold`` as the recompute does.
    """
    if not class_ids:
        return []
    ids = list(class_ids)
    first_module: dict[tuple[int, int], tuple[int, int]] = {}  # (class, competency) → (position, module)
    members: dict[int, set[int]] = {cid: set() for cid in ids}
    for cid, comp, mid, position in _rows(session, _ALIGNED, district_id=district_id, class_ids=ids):
        members[cid].add(comp)
        if mid is not None:
            key = (cid, comp)
            found = first_module.get(key)
            if found is None or (position, mid) < found:
                first_module[key] = (position, mid)
    wanted = sorted({c for cs in members.values() for c in cs}) or [-1]
    rows = _rows(session, _COMPETENCIES, district_id=district_id, class_ids=ids, competency_ids=wanted)
    default_points = 0.0
    if any(not mastery for _id, _class, _title, _points, mastery, _ratings in rows):  # read only when needed
        settings = _rows(session, _DISTRICT_SETTINGS, district_id=district_id)
        default_points = float(((settings[0][0] if settings else None) or {}).get("mastery_threshold") or 0.0)
    out: list[tuple[tuple[int, int, int], CompetencyInfo]] = []
    for comp_id, own_class, title, points, mastery, ratings in rows:
        parsed = tuple((float(r[0]), str(r[1])) for r in (ratings or []) if isinstance(r, list) and len(r) >= 2)
        for cid in ids:
            if comp_id not in members[cid] and own_class != cid:
                continue
            position, mid = first_module.get((cid, comp_id), (1 << 30, None))  # type: ignore[assignment]
            info = CompetencyInfo(comp_id, cid, title, float(points or 0.0), float(mastery or default_points),
                                  parsed, mid)
            out.append(((cid, position, comp_id), info))
    out.sort(key=lambda item: item[0])
    return [info for _, info in out]


Score = tuple[float | None, bool, str | None, int]
"""A score as the class view reads it: (score, mastered, level, evidence count)."""

_CLASS_MASTERY = (
    select(MasteryRecord.person_id, MasteryRecord.competency_id, MasteryRecord.score, MasteryRecord.mastered,
           MasteryRecord.level, MasteryRecord.evidence_count)
    .where(_in_district(MasteryRecord.district_id), MasteryRecord.class_id == _CLASS))


def class_scores(session: Session, district_id: int, class_id: int) -> dict[int, dict[int, Score]]:
    """Every student's current score on every competency of a class (only where there is evidence).

    Student → competency → (score, mastered, level, evidence count): plain tuples, since a class view reads
    thousands and equal scores share a rendering.
    """
    out: dict[int, dict[int, Score]] = {}
    for pid, cid, score, mastered, level, count in _rows(session, _CLASS_MASTERY, district_id=district_id,
                                                         class_id=class_id):
        found = out.get(pid)
        if found is None:
            found = out[pid] = {}
        found[cid] = (score, mastered, level, count)
    return out


_STUDENT_MASTERY = (
    select(MasteryRecord.class_id, MasteryRecord.person_id, MasteryRecord.competency_id, MasteryRecord.score,
           MasteryRecord.mastered, MasteryRecord.level, MasteryRecord.evidence_count, MasteryRecord.latest_at)
    .where(_in_district(MasteryRecord.district_id), MasteryRecord.person_id == _PERSON))


def student_mastery(session: Session, district_id: int, person_id: int) -> list[MasteryRow]:
    """One student's current scores, in every class."""
    rows = _rows(session, _STUDENT_MASTERY, district_id=district_id, person_id=person_id)
    return [MasteryRow(cid, pid, comp, score, bool(mastered), level, count, _aware(at))
            for cid, pid, comp, score, mastered, level, count, at in rows]


_COMPLETIONS = (
    select(GateRecord.person_id, GateRecord.completed_on)
    .where(_in_district(GateRecord.district_id), GateRecord.class_id == _CLASS, GateRecord.status == "complete",
           GateRecord.completed_on.is_not(None)))


def class_completions(session: Session, district_id: int, class_id: int) -> dict[int, list[date]]:
    """The days each student completed modules of a class, oldest first (undated completions left out)."""
    out: dict[int, list[date]] = {}
    for pid, day in _rows(session, _COMPLETIONS, district_id=district_id, class_id=class_id):
        out.setdefault(pid, []).append(day)
    for days in out.values():
        days.sort()
    return out


_STUDENT_GATES = (
    select(GateRecord.class_id, GateRecord.person_id, GateRecord.module_id, GateRecord.status, GateRecord.reason,
           GateRecord.missing, GateRecord.opened_by_mastery, GateRecord.completed_on)
    .where(_in_district(GateRecord.district_id), GateRecord.person_id == _PERSON))


def student_gates(session: Session, district_id: int, person_id: int) -> list[GateRow]:
    """One student's gate per module, in every class."""
    rows = _rows(session, _STUDENT_GATES, district_id=district_id, person_id=person_id)
    return [GateRow(cid, pid, mid, status, reason, tuple(missing or ()), bool(by_mastery), done)
            for cid, pid, mid, status, reason, missing, by_mastery, done in rows]


_PACE_COLUMNS = (PaceRecord.class_id, PaceRecord.person_id, PaceRecord.state, PaceRecord.phase,
                 PaceRecord.completed, PaceRecord.expected, PaceRecord.total, PaceRecord.modules_behind,
                 PaceRecord.days_behind, PaceRecord.modules_ahead, PaceRecord.days_ahead, PaceRecord.next_due,
                 PaceRecord.projected_finish, PaceRecord.accommodated)
_CLASS_PACE = select(*_PACE_COLUMNS).where(_in_district(PaceRecord.district_id), PaceRecord.class_id == _CLASS)
_STUDENT_PACE = select(*_PACE_COLUMNS).where(_in_district(PaceRecord.district_id), PaceRecord.class_id.in_(_CLASSES),
                                             PaceRecord.person_id == _PERSON)


def class_pace(session: Session, district_id: int, class_id: int) -> dict[int, PaceRow]:
    """Each student's pace status in a class."""
    rows = _rows(session, _CLASS_PACE, district_id=district_id, class_id=class_id)
    return {row[1]: PaceRow(*row) for row in rows}


def student_pace(session: Session, district_id: int, person_id: int, class_ids: Sequence[int]) -> dict[int, PaceRow]:
    """One student's pace status in each of some classes."""
    if not class_ids:
        return {}
    rows = _rows(session, _STUDENT_PACE, district_id=district_id, person_id=person_id, class_ids=list(class_ids))
    return {row[0]: PaceRow(*row) for row in rows}


_OPEN_ALERTS = (
    select(AlertRecord.id, AlertRecord.class_id, AlertRecord.person_id, AlertRecord.kind, AlertRecord.level,
           AlertRecord.detail, AlertRecord.opened_at, AlertRecord.updated_at)
    .where(AlertRecord.district_id == _DISTRICT, AlertRecord.class_id == _CLASS, AlertRecord.resolved_at.is_(None))
    .order_by(AlertRecord.level.desc(), AlertRecord.opened_at, AlertRecord.id))


def open_alerts(session: Session, district_id: int, class_id: int) -> list[AlertRow]:
    """A class's open alerts, highest level and oldest first."""
    rows = _rows(session, _OPEN_ALERTS, district_id=district_id, class_id=class_id)
    return [AlertRow(aid, cid, pid, kind, level, detail, _aware(opened), _aware(updated))  # type: ignore[arg-type]
            for aid, cid, pid, kind, level, detail, opened, updated in rows]


_AUTHOR = aliased(Person)
_OVERRIDES = (
    select(GateOverrideRecord.id, GateOverrideRecord.class_id, GateOverrideRecord.person_id,
           GateOverrideRecord.module_id, GateOverrideRecord.kind, GateOverrideRecord.note, _AUTHOR.given_name,
           _AUTHOR.family_name, GateOverrideRecord.at)
    .outerjoin(_AUTHOR, _AUTHOR.id == GateOverrideRecord.author_id)
    .where(_in_district(GateOverrideRecord.district_id), GateOverrideRecord.class_id.in_(_CLASSES),
           GateOverrideRecord.revoked_at.is_(None))
    .order_by(GateOverrideRecord.at.desc(), GateOverrideRecord.id.desc()))
_STUDENT_OVERRIDES = _OVERRIDES.where(GateOverrideRecord.person_id == _PERSON)


def active_overrides(session: Session, district_id: int, class_ids: Sequence[int],
                     person_id: int | None = None) -> list[OverrideRow]:
    """Teachers' gate overrides still in effect (not removed), newest first; one student's when ``person_id``."""
    if not class_ids:
        return []
    if person_id is None:
        rows = _rows(session, _OVERRIDES, district_id=district_id, class_ids=list(class_ids))
    else:
        rows = _rows(session, _STUDENT_OVERRIDES, district_id=district_id, class_ids=list(class_ids),
                     person_id=person_id)
    return [OverrideRow(oid, cid, pid, mid, kind, note or "", f"{given or ''} {family or ''}".strip(),
                        _aware(at))  # type: ignore[arg-type]
            for oid, cid, pid, mid, kind, note, given, family, at in rows]


_PLANS = (
    select(PacePlanRecord.class_id, PacePlanRecord.start_date, PacePlanRecord.end_date, PacePlanRecord.due_edits,
           PacePlanRecord.skip_weekends, PacePlanRecord.skip_dates, PacePlanRecord.updated_at)
    .where(PacePlanRecord.district_id == _DISTRICT, PacePlanRecord.class_id.in_(_CLASSES)))


def pace_plans(session: Session, district_id: int, class_ids: Sequence[int]) -> dict[int, PlanRow]:
    """The stored pace plan settings of some classes (classes without one are missing)."""
    if not class_ids:
        return {}
    rows = _rows(session, _PLANS, district_id=district_id, class_ids=list(class_ids))
    return {cid: PlanRow(cid, start, end, dict(edits or {}), bool(skip), tuple(str(d) for d in (dates or [])),
                         _aware(updated))
            for cid, start, end, edits, skip, dates, updated in rows}


_ACCOMMODATIONS = (
    select(AccommodationRecord.class_id, AccommodationRecord.person_id, AccommodationRecord.extra_days,
           AccommodationRecord.factor, AccommodationRecord.note)
    .where(_in_district(AccommodationRecord.district_id), AccommodationRecord.class_id.in_(_CLASSES)))
_STUDENT_ACCOMMODATIONS = _ACCOMMODATIONS.where(AccommodationRecord.person_id == _PERSON)


def accommodations(session: Session, district_id: int, class_ids: Sequence[int],
                   person_id: int | None = None) -> list[AccommodationRow]:
    """Pace accommodations of some classes (one student's when ``person_id``)."""
    if not class_ids:
        return []
    if person_id is None:
        rows = _rows(session, _ACCOMMODATIONS, district_id=district_id, class_ids=list(class_ids))
    else:
        rows = _rows(session, _STUDENT_ACCOMMODATIONS, district_id=district_id, class_ids=list(class_ids),
                     person_id=person_id)
    return [AccommodationRow(cid, pid, days, float(factor or 1.0), note or "") for cid, pid, days, factor, note in rows]


_ENTRIES = (
    select(ProfileEntryRecord.id, ProfileEntryRecord.person_id, ProfileEntryRecord.kind, ProfileEntryRecord.text,
           ProfileEntryRecord.author_id, _AUTHOR.given_name, _AUTHOR.family_name, ProfileEntryRecord.author_role,
           ProfileEntryRecord.target_date, ProfileEntryRecord.status, ProfileEntryRecord.competency_id,
           ProfileEntryRecord.created_at, ProfileEntryRecord.updated_at)
    .outerjoin(_AUTHOR, _AUTHOR.id == ProfileEntryRecord.author_id)
    .where(ProfileEntryRecord.district_id == _DISTRICT, ProfileEntryRecord.person_id == _PERSON,
           ProfileEntryRecord.archived_at.is_(None))
    .order_by(ProfileEntryRecord.created_at, ProfileEntryRecord.id))


def profile_entries(session: Session, district_id: int, person_id: int) -> list[EntryRow]:
    """What the student and teachers wrote in a profile (archived entries left out), oldest first."""
    rows = _rows(session, _ENTRIES, district_id=district_id, person_id=person_id)
    return [EntryRow(eid, pid, kind, text, aid, f"{given or ''} {family or ''}".strip(), role, target, status, comp,
                     _aware(created), _aware(updated))  # type: ignore[arg-type]
            for eid, pid, kind, text, aid, given, family, role, target, status, comp, created, updated in rows]


def get_entry(session: Session, district_id: int, entry_id: int) -> ProfileEntryRecord | None:
    return session.scalars(select(ProfileEntryRecord).where(ProfileEntryRecord.district_id == district_id,
                                                            ProfileEntryRecord.id == entry_id)).first()


_SNAPSHOTS = (
    select(ProfileSnapshotRecord.class_id, ProfileSnapshotRecord.taken_on, ProfileSnapshotRecord.data)
    .where(_in_district(ProfileSnapshotRecord.district_id), ProfileSnapshotRecord.class_id.in_(_CLASSES),
           ProfileSnapshotRecord.person_id == _PERSON)
    .order_by(ProfileSnapshotRecord.class_id, ProfileSnapshotRecord.taken_on))


def student_snapshots(session: Session, district_id: int, person_id: int,
                      class_ids: Sequence[int]) -> list[SnapshotRow]:
    """A student's profile snapshots in some classes (one per class and day), oldest first: the history."""
    if not class_ids:
        return []
    rows = _rows(session, _SNAPSHOTS, district_id=district_id, person_id=person_id, class_ids=list(class_ids))
    return [SnapshotRow(cid, day, data or {}) for cid, day, data in rows]


_LIMIT = bindparam("limit")
_SCORED = (
    select(Activity.class_id, Activity.title, Result.score, Result.score_maximum, Result.scored_at, Result.comment,
           Result.id)
    .join(Activity, Activity.id == Result.activity_id)
    .where(Result.district_id == _DISTRICT, Result.person_id == _PERSON, Result.status == "active",
           Activity.class_id.in_(_CLASSES), Activity.status == "active",
           or_(Activity.category.is_(None), Activity.category != "trailmark-mastery-check"))
    .order_by(Result.scored_at.desc(), Result.id.desc()).limit(_LIMIT))
_OUTCOMES = (
    select(Competency.class_id, Competency.title, Result.score, Result.score_maximum, Result.scored_at,
           Result.comment, Result.id)
    .join(Competency, Competency.id == Result.competency_id)
    .where(Result.district_id == _DISTRICT, Result.person_id == _PERSON, Result.status == "active",
           Result.activity_id.is_(None), Competency.class_id.in_(_CLASSES))
    .order_by(Result.scored_at.desc(), Result.id.desc()).limit(_LIMIT))
_FEEDBACK = union_all(select(_SCORED.subquery()), select(_OUTCOMES.subquery()))  # each newest first, then merged


def recent_feedback(session: Session, district_id: int, person_id: int, class_ids: Sequence[int],
                    limit: int = 8) -> list[FeedbackRow]:
    """A student's latest scored results in some classes: activity scores and outcome results, newest first."""
    if not class_ids:
        return []
    params = {"district_id": district_id, "person_id": person_id, "class_ids": list(class_ids), "limit": limit}
    rows = list(_rows(session, _FEEDBACK, **params))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    rows.sort(key=lambda r: (_aware(r[4]) or epoch, r[6]), reverse=True)
    return [FeedbackRow(cid, title, score, maximum, _aware(at), comment)
            for cid, title, score, maximum, at, comment, _rid in rows[:limit]]


_CLASS_IDS_OF_STUDENT = (
    select(Enrollment.class_id).join(Class, Class.id == Enrollment.class_id)
    .where(Enrollment.district_id == _DISTRICT, Enrollment.person_id == _PERSON, Enrollment.role == "student",
           Enrollment.status == "active", Class.status == "active")
    .order_by(Enrollment.class_id).distinct())


def class_ids_of_student(session: Session, district_id: int, person_id: int) -> list[int]:
    """The active classes a student is enrolled in."""
    return [cid for (cid,) in _rows(session, _CLASS_IDS_OF_STUDENT, district_id=district_id, person_id=person_id)]


def enrolled_student(session: Session, district_id: int, class_id: int, person_id: int) -> bool:
    """True when the person is an active student of the class."""
    return session.scalars(select(Enrollment.id).where(
        Enrollment.district_id == district_id, Enrollment.class_id == class_id, Enrollment.person_id == person_id,
        Enrollment.role == "student", Enrollment.status == "active")).first() is not None


_TEACHER_CLASS_IDS = select(Enrollment.class_id).where(
    Enrollment.district_id == _DISTRICT, Enrollment.person_id == _PERSON, Enrollment.role.in_(("teacher", "aide")),
    Enrollment.status == "active").distinct()


def teacher_class_ids(session: Session, district_id: int, teacher_id: int) -> list[int]:
    """The classes a teacher (or aide) teaches."""
    return [cid for (cid,) in _rows(session, _TEACHER_CLASS_IDS, district_id=district_id, person_id=teacher_id)]


def get_module(session: Session, district_id: int, class_id: int, module_id: int) -> Module | None:
    return session.scalars(select(Module).where(Module.district_id == district_id, Module.class_id == class_id,
                                                Module.id == module_id, Module.status == "active")).first()


def get_override(session: Session, district_id: int, class_id: int, override_id: int) -> GateOverrideRecord | None:
    return session.scalars(select(GateOverrideRecord).where(
        GateOverrideRecord.district_id == district_id, GateOverrideRecord.class_id == class_id,
        GateOverrideRecord.id == override_id)).first()


def get_pace_plan(session: Session, district_id: int, class_id: int) -> PacePlanRecord | None:
    return session.scalars(select(PacePlanRecord).where(PacePlanRecord.district_id == district_id,
                                                        PacePlanRecord.class_id == class_id)).first()


def get_accommodation(session: Session, district_id: int, class_id: int,
                      person_id: int) -> AccommodationRecord | None:
    return session.scalars(select(AccommodationRecord).where(
        AccommodationRecord.district_id == district_id, AccommodationRecord.class_id == class_id,
        AccommodationRecord.person_id == person_id)).first()


def external_ids(session: Session, district_id: int, namespace: str,
                 wanted: Mapping[str, Iterable[int]]) -> dict[tuple[str, int], str]:
    """Return the ids one system (``namespace``) knows some canonical rows by, keyed by (kind, canonical id).

    One query; references marked erased or removed are left out."""
    conditions = [(ExternalRef.kind == kind) & ExternalRef.entity_id.in_(list(ids))
                  for kind, ids in wanted.items() if ids]
    if not conditions:
        return {}
    return {(kind, entity): ext for kind, entity, ext in session.execute(
        select(ExternalRef.kind, ExternalRef.entity_id, ExternalRef.external_id).where(
            ExternalRef.district_id == district_id, ExternalRef.namespace == namespace,
            ExternalRef.status == "active", or_(*conditions)))}
