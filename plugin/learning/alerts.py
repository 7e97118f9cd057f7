"""Pace alerts: opened when a student falls behind (or races far ahead, or stalls), escalated while the
condition persists, resolved when it clears; plus the weekly digest text for teachers, students and parents.

Alerts are keyed by (student, class, kind): :func:`reconcile` never opens a second alert for a key that is
already open, and resolves duplicates it finds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from plugin.learning.pace import PaceState, PaceStatus, TermPhase


class AlertKind(enum.StrEnum):
    BEHIND = "behind"
    FAR_AHEAD = "far_ahead"
    STALLED = "stalled"  # in term, not behind yet, but no module completed for a while


class Audience(enum.StrEnum):
    TEACHER = "teacher"
    STUDENT = "student"
    PARENT = "parent"


AlertKey = tuple[str, str, AlertKind]


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert about one student in one class."""

    student_id: str
    class_id: str
    kind: AlertKind
    level: int
    opened_at: datetime
    updated_at: datetime
    detail: str
    id: str | None = None
    resolved_at: datetime | None = None

    @property
    def key(self) -> AlertKey:
        return (self.student_id, self.class_id, self.kind)


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """When an alert's level rises: level 2 after ``level2_after_days`` days, level 3 after ``level3_after_days``.

    For "behind" the days are the larger of the student's days behind and the alert's age; for the other
    kinds the alert's age (stalls: the days since the last completion).
    """

    level2_after_days: int = 7
    level3_after_days: int = 14
    stall_days: int = 10
    alert_far_ahead: bool = True

    def level_for(self, days: int) -> int:
        """Return the level an alert has after persisting ``days`` days."""
        return 1 + (days >= self.level2_after_days) + (days >= self.level3_after_days)


@dataclass(frozen=True, slots=True)
class AlertChanges:
    """What to write: alerts to create, alerts whose level or detail changed, alerts to close."""

    to_open: tuple[Alert, ...] = ()
    to_update: tuple[Alert, ...] = ()
    to_resolve: tuple[Alert, ...] = ()

    def __iter__(self) -> Iterator[tuple[Alert, ...]]:
        """Unpack as ``to_open, to_update, to_resolve = reconcile(...)``."""
        return iter((self.to_open, self.to_update, self.to_resolve))


@dataclass(frozen=True, slots=True)
class _Wanted:
    kind: AlertKind
    days: int
    detail: str


# --------------------------------------------------------------------------- wording


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def describe_pace(status: PaceStatus) -> str:
    """Describe a pace status in a short phrase, e.g. "2 modules (9 days) behind the minimum pace"."""
    if status.total == 0:
        return "no modules planned yet"
    if status.finished:
        return f"finished all {_plural(status.total, 'module')}"
    if status.state is PaceState.BEHIND:
        return (
            f"{_plural(status.modules_behind, 'module')} ({_plural(status.days_behind, 'day')}) "
            "behind the minimum pace"
        )
    if status.state is PaceState.FAR_AHEAD:
        return f"{_plural(status.modules_ahead, 'module')} ahead of the minimum pace (far ahead)"
    if status.state is PaceState.AHEAD:
        return f"{_plural(status.modules_ahead, 'module')} ahead of the minimum pace"
    if status.phase is TermPhase.NOT_STARTED:
        return "on track; the term has not started"
    return "on track"


def _wanted(status: PaceStatus, today: date, policy: EscalationPolicy) -> list[_Wanted]:
    wanted: list[_Wanted] = []
    if status.state is PaceState.BEHIND:
        wanted.append(_Wanted(AlertKind.BEHIND, status.days_behind, describe_pace(status)))
        return wanted
    if status.state is PaceState.FAR_AHEAD and policy.alert_far_ahead:
        wanted.append(_Wanted(AlertKind.FAR_AHEAD, 0, describe_pace(status)))
    stallable = status.state in (PaceState.ON_TRACK, PaceState.AHEAD) and not status.finished
    if stallable and status.phase is TermPhase.IN_TERM and status.last_completed_on is not None:
        idle = (today - status.last_completed_on).days
        if idle >= policy.stall_days:
            wanted.append(
                _Wanted(AlertKind.STALLED, idle, f"no module completed in {_plural(idle, 'day')}")
            )
    return wanted


# --------------------------------------------------------------------------- reconcile


def reconcile(
    existing_open_alerts: Iterable[Alert],
    current_statuses: Iterable[PaceStatus],
    now: datetime,
    *,
    today: date | None = None,
    policy: EscalationPolicy | None = None,
) -> AlertChanges:
    """Compare open alerts with current pace statuses and say what to open, update and resolve.

    A condition without an open alert opens one at the level its persistence gives; an open alert whose
    condition holds keeps its id and opening time, and only ever rises in level; an open alert whose
    condition cleared is resolved. Alerts about a class covered by ``current_statuses`` but a student not in
    it (no longer enrolled) are resolved; alerts about other classes are left alone. Of two open alerts with
    one key the older stays and the newer is resolved. ``today`` defaults to ``now``'s date.
    """
    policy = policy or EscalationPolicy()
    today = today or now.date()
    open_by_key: dict[AlertKey, Alert] = {}
    to_resolve: list[Alert] = []
    for alert in sorted(existing_open_alerts, key=lambda a: a.opened_at):
        if alert.resolved_at is not None:
            continue
        if alert.key in open_by_key:
            to_resolve.append(replace(alert, resolved_at=now, updated_at=now))  # a duplicate
        else:
            open_by_key[alert.key] = alert
    to_open: list[Alert] = []
    to_update: list[Alert] = []
    covered_classes: set[str] = set()
    handled: set[AlertKey] = set()
    for status in current_statuses:
        covered_classes.add(status.class_id)
        for wanted in _wanted(status, today, policy):
            key = (status.student_id, status.class_id, wanted.kind)
            if key in handled:
                continue
            handled.add(key)
            existing = open_by_key.pop(key, None)
            if existing is None:
                to_open.append(
                    Alert(
                        status.student_id, status.class_id, wanted.kind, policy.level_for(wanted.days),
                        now, now, wanted.detail,
                    )
                )
                continue
            age = (today - existing.opened_at.date()).days
            level = max(existing.level, policy.level_for(max(wanted.days, age)))
            if level != existing.level or wanted.detail != existing.detail:
                to_update.append(replace(existing, level=level, detail=wanted.detail, updated_at=now))
    for key, alert in open_by_key.items():
        class_id = key[1]
        if class_id in covered_classes:
            to_resolve.append(replace(alert, resolved_at=now, updated_at=now))
    return AlertChanges(tuple(to_open), tuple(to_update), tuple(to_resolve))


# --------------------------------------------------------------------------- weekly digest


@dataclass(frozen=True, slots=True)
class DigestRoster:
    """Who receives which digest: names, class titles, teachers' classes and guardians' students."""

    names: Mapping[str, str] = field(default_factory=dict)
    class_titles: Mapping[str, str] = field(default_factory=dict)
    teacher_classes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    guardian_students: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Digest:
    """One recipient's weekly summary as plain lines of text."""

    recipient_id: str
    audience: Audience
    subject: str
    lines: tuple[str, ...]


def build_digests(
    statuses: Iterable[PaceStatus],
    open_alerts: Iterable[Alert],
    roster: DigestRoster,
    *,
    week_of: date,
) -> list[Digest]:
    """Build the weekly digests: per teacher (their classes and open alerts), per student, per parent."""
    by_class: dict[str, list[PaceStatus]] = {}
    by_student: dict[str, list[PaceStatus]] = {}
    for status in statuses:
        by_class.setdefault(status.class_id, []).append(status)
        by_student.setdefault(status.student_id, []).append(status)
    alerts_by_class: dict[str, list[Alert]] = {}
    for alert in open_alerts:
        alerts_by_class.setdefault(alert.class_id, []).append(alert)
    subject = f"Trailmark weekly summary, week of {week_of:%B} {week_of.day}, {week_of.year}"
    name = _namer(roster)
    title = _titler(roster)
    digests: list[Digest] = []

    for teacher_id in sorted(roster.teacher_classes):
        lines: list[str] = []
        for class_id in roster.teacher_classes[teacher_id]:
            class_statuses = by_class.get(class_id, [])
            if not class_statuses and not alerts_by_class.get(class_id):
                continue
            lines.append(f"{title(class_id)}: {_class_counts(class_statuses)}")
            alerts = sorted(
                alerts_by_class.get(class_id, []), key=lambda a: (-a.level, name(a.student_id), a.kind.value)
            )
            for alert in alerts:
                lines.append(f"- {name(alert.student_id)}: {alert.detail} (level {alert.level})")
            if not alerts:
                lines.append("- No open alerts.")
        if lines:
            digests.append(Digest(teacher_id, Audience.TEACHER, subject, tuple(lines)))

    for student_id in sorted(by_student):
        lines = [_student_line(s, title) for s in sorted(by_student[student_id], key=lambda s: title(s.class_id))]
        digests.append(Digest(student_id, Audience.STUDENT, subject, tuple(lines)))

    for guardian_id in sorted(roster.guardian_students):
        lines = []
        for student_id in roster.guardian_students[guardian_id]:
            for status in sorted(by_student.get(student_id, []), key=lambda s: title(s.class_id)):
                lines.append(f"{name(student_id)}, {title(status.class_id)}: {_progress(status)}")
        if lines:
            digests.append(Digest(guardian_id, Audience.PARENT, subject, tuple(lines)))
    return digests


def _namer(roster: DigestRoster) -> Callable[[str], str]:
    return lambda person_id: roster.names.get(person_id) or person_id


def _titler(roster: DigestRoster) -> Callable[[str], str]:
    return lambda class_id: roster.class_titles.get(class_id) or class_id


def _class_counts(statuses: list[PaceStatus]) -> str:
    counts = {state: 0 for state in PaceState}
    for status in statuses:
        counts[status.state] += 1
    parts = [f"{_plural(len(statuses), 'student')}"]
    parts.append(
        f"{counts[PaceState.ON_TRACK]} on track, {counts[PaceState.BEHIND]} behind, "
        f"{counts[PaceState.AHEAD]} ahead, {counts[PaceState.FAR_AHEAD]} far ahead"
    )
    return "; ".join(parts) + "."


def _progress(status: PaceStatus) -> str:
    text = f"{describe_pace(status)}; {status.completed} of {_plural(status.total, 'module')} done"
    return text + "."


def _student_line(status: PaceStatus, title: Callable[[str], str]) -> str:
    text = f"{title(status.class_id)}: {_progress(status)}"
    if not status.finished and status.next_due is not None:
        text += f" Next module due {status.next_due:%B} {status.next_due.day}."
    if not status.finished and status.projected_finish is not None:
        text += (
            f" At your recent pace you would finish by {status.projected_finish:%B} "
            f"{status.projected_finish.day}."
        )
    return text
