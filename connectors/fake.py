"""An in-memory connector with fault injection, for tests and the sandbox.

It streams whatever records it holds (filtered by scope), can fail part-way through a pull, and logs every
acknowledged write so a test can check that each arrived exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from connectors.base import (
    AcademicSession,
    Activity,
    Alignment,
    Capability,
    Class,
    Competency,
    Complete,
    ConfigurationError,
    Course,
    Enrollment,
    GateWrite,
    GuardianLink,
    Item,
    MessageWrite,
    Module,
    Org,
    Person,
    PushResult,
    Rejected,
    Result,
    Scope,
    ScoreWrite,
    Tombstone,
    UpstreamError,
    Write,
    kind_of,
)

ROSTER_KINDS = frozenset({"org", "academic_session", "course", "class", "person", "enrollment", "guardian_link"})
CONTENT_KINDS = frozenset({"module", "activity", "competency", "alignment"})
PROGRESS_KINDS = frozenset({"result"})
WRITE_CAPABILITY: Mapping[type, Capability] = {
    ScoreWrite: Capability.WRITE_SCORES,
    GateWrite: Capability.WRITE_GATES,
    MessageWrite: Capability.WRITE_MESSAGES,
}
ALL_CAPABILITIES = frozenset(Capability)

PushFailures = int | Sequence[BaseException | None] | Callable[[Write, int], BaseException | None]


def item_kind(item: Item) -> str:
    """Return the record kind an item is about."""
    if isinstance(item, (Complete, Rejected, Tombstone)):
        return item.kind
    return kind_of(item)


def in_scope(kind: str, scope: Scope) -> bool:
    """Whether records of ``kind`` belong to a pull of ``scope``."""
    if scope is Scope.ALL:
        return True
    return kind in {Scope.ROSTER: ROSTER_KINDS, Scope.CONTENT: CONTENT_KINDS, Scope.PROGRESS: PROGRESS_KINDS}[scope]


class FakeConnector:
    """A connector over a list of items; ``fail_after`` and ``push_failures`` inject faults.

    ``push_failures`` is a number of leading pushes that raise :class:`UpstreamError`, a sequence of
    exceptions (``None`` = succeed) consumed one per push, or a function ``(write, call number) → exception``.
    """

    kind = "fake"

    def __init__(
        self,
        name: str = "fake",
        records: Iterable[Item] = (),
        writes_log: list[tuple[Write, str]] | None = None,
        *,
        fail_after: int | None = None,
        push_failures: PushFailures = 0,
        capabilities: Iterable[Capability] = ALL_CAPABILITIES,
        delta_records: Iterable[Item] | None = None,
    ) -> None:
        self.name = name
        self.records: list[Item] = list(records)
        self.delta_records = list(delta_records) if delta_records is not None else None
        self.writes_log: list[tuple[Write, str]] = writes_log if writes_log is not None else []
        self.fail_after = fail_after
        self.push_failures = push_failures
        self.capabilities = frozenset(capabilities)
        self.pulls: list[tuple[Scope, datetime | None]] = []
        self.push_calls = 0
        self._failures_left = push_failures if isinstance(push_failures, int) else 0
        self._failure_queue = list(push_failures) if isinstance(push_failures, Sequence) else []

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FakeConnector:
        """Build a fake source holding a small deterministic district (``classes``, ``students_per_class``)."""
        classes = int(cfg.get("classes", 2))
        students = int(cfg.get("students_per_class", 5))
        if classes < 0 or students < 0:
            raise ConfigurationError("classes and students_per_class must not be negative", source=cfg.get("name"))
        return cls(str(cfg.get("name", "fake")), sample_district(classes=classes, students_per_class=students),
                   fail_after=cfg.get("fail_after"))

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Yield the held items of ``scope`` (the delta items when ``since`` is given and some are set)."""
        self.pulls.append((scope, since))
        source = self.delta_records if since is not None and self.delta_records is not None else self.records
        for n, item in enumerate(i for i in source if in_scope(item_kind(i), scope)):
            if self.fail_after is not None and n >= self.fail_after:
                raise UpstreamError(f"{self.name}: the source went away after {n} items", source=self.name,
                                    status=503)
            yield item

    def push(self, write: Write) -> PushResult:
        """Acknowledge a write (or fail as configured); every acknowledged write is logged."""
        self.push_calls += 1
        needed = WRITE_CAPABILITY.get(type(write))
        if needed is None or needed not in self.capabilities:
            raise ConfigurationError(f"{self.name} cannot write {type(write).__name__}", source=self.name)
        failure = self._next_failure(write)
        if failure is not None:
            raise failure
        remote_id = f"{self.name}-{len(self.writes_log) + 1}"
        self.writes_log.append((write, remote_id))
        return PushResult(remote_id=remote_id)

    def _next_failure(self, write: Write) -> BaseException | None:
        if callable(self.push_failures) and not isinstance(self.push_failures, Sequence):
            return self.push_failures(write, self.push_calls)
        if self._failures_left > 0:
            self._failures_left -= 1
            return UpstreamError(f"{self.name} is down", source=self.name, status=503)
        if self._failure_queue:
            return self._failure_queue.pop(0)
        return None


def sample_district(*, classes: int = 2, students_per_class: int = 5, with_content: bool = True,
                    with_progress: bool = True, prefix: str = "") -> list[Item]:
    """Return a small, deterministic district as a complete stream (parents first, whole listings marked)."""
    p = prefix
    items: list[Item] = [
        Org(f"{p}district", "Sample District", type="district"),
        Org(f"{p}school-1", "Sample School", parent_sourced_id=f"{p}district"),
        AcademicSession(f"{p}term-1", "Fall", start_date=date(2026, 8, 24), end_date=date(2026, 12, 18)),
    ]
    people: list[Item] = []
    enrollments: list[Item] = []
    links: list[Item] = []
    content: list[Item] = []
    progress: list[Item] = []
    for c in range(1, classes + 1):
        course, klass, teacher = f"{p}course-{c}", f"{p}class-{c}", f"{p}teacher-{c}"
        items.append(Course(course, f"Course {c}", org_sourced_id=f"{p}school-1", sis_id=course))
        items.append(Class(klass, f"Class {c}", course_sourced_id=course, school_sourced_id=f"{p}school-1",
                           term_sourced_ids=(f"{p}term-1",), sis_id=klass))
        people.append(Person(teacher, "teacher", f"Teacher{c}", "Sample", email=f"{teacher}@example.org",
                             sis_id=teacher))
        enrollments.append(Enrollment(f"{p}enr-{klass}-{teacher}", klass, teacher, "teacher", primary=True))
        module, activity, comp = f"{p}module-{c}", f"{p}activity-{c}", f"{p}competency-{c}"
        content += [
            Module(module, klass, f"Unit {c}", position=1),
            Activity(activity, klass, f"Check {c}", module_sourced_id=module, score_maximum=10.0),
            Competency(comp, f"Skill {c}", class_sourced_id=klass, points_possible=4.0, mastery_points=3.0,
                       ratings=((4.0, "Exceeds"), (3.0, "Meets"), (0.0, "Not yet"))),
            Alignment(activity, comp),
        ]
        for s in range(1, students_per_class + 1):
            student, parent = f"{p}student-{c}-{s}", f"{p}parent-{c}-{s}"
            people.append(Person(student, "student", f"Student{c}{s}", "Sample", email=f"{student}@example.org",
                                 sis_id=student))
            people.append(Person(parent, "parent", f"Parent{c}{s}", "Sample", sis_id=parent))
            enrollments.append(Enrollment(f"{p}enr-{klass}-{student}", klass, student, "student"))
            links.append(GuardianLink(parent, student))
            progress.append(Result(f"{p}result-{activity}-{student}", student, activity_sourced_id=activity,
                                   score=float(5 + s % 6), score_maximum=10.0,
                                   scored_at=datetime(2026, 9, 1, 12, 0, tzinfo=UTC)))
    items += people + enrollments + links
    items += [Complete(k) for k in ("org", "academic_session", "course", "class", "person", "enrollment",
                                    "guardian_link")]
    if with_content:
        items += content + [Complete(k) for k in ("module", "activity", "competency", "alignment")]
    if with_progress:
        items += progress + [Complete("result")]
    return items



