"""What the panels write: gate overrides, pace plans, accommodations, profile entries, audit events.

Each change is followed by :func:`refresh`, which recomputes the affected classes through ``plugin.progress`` so
the next page shows (and the LMS receives) the consequence at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from sqlalchemy.orm import Session

from plugin.learning.pace import spread_due_dates
from plugin.progress import RecomputeSummary, recompute
from plugin.store import queries
from plugin.store.models import (
    AccommodationRecord,
    AuditEvent,
    GateOverrideRecord,
    PacePlanRecord,
    ProfileEntryRecord,
)


def audit(session: Session, district_id: int, actor_id: int | None, action: str, subject: str, now: datetime,
          **detail: Any) -> None:
    """Record who did what to whom."""
    session.add(AuditEvent(district_id=district_id, at=now, actor=f"person:{actor_id}", action=action,
                           subject=subject, detail=detail))


def refresh(session: Session, district_id: int, class_ids: Iterable[int], now: datetime) -> RecomputeSummary:
    """Recompute mastery, gates, pace, alerts and profiles of some classes after a change."""
    return recompute(session, district_id, list(class_ids), now=now)


# --------------------------------------------------------------------------- overrides


def add_override(session: Session, *, district_id: int, class_id: int, student_id: int, module_id: int, kind: str,
                 note: str, author_id: int | None, now: datetime) -> GateOverrideRecord:
    """Record a teacher's decision on one student's module; the latest one in effect wins."""
    row = GateOverrideRecord(district_id=district_id, class_id=class_id, person_id=student_id, module_id=module_id,
                             kind=kind, note=note, author_id=author_id, at=now)
    session.add(row)
    session.flush()
    return row


def remove_override(session: Session, row: GateOverrideRecord, now: datetime) -> None:
    """Take an override out of effect: the module follows the mastery rules again."""
    row.revoked_at = now


# --------------------------------------------------------------------------- pace plan


def save_pace_plan(session: Session, *, district_id: int, class_id: int, module_ids: list[int],
                   term: tuple[date | None, date | None], start: date | None, end: date | None,
                   skip_weekends: bool, due: Mapping[int, date | None], reset: bool, author_id: int | None,
                   now: datetime) -> PacePlanRecord:
    """Store a class's plan: only the dates that differ from the even spread are kept as edits.

    A submitted date equal to the even spread the form was showing (the plan before this change) counts as
    untouched, so a new term or a change of weekends moves it with the new spread. ``start``/``end`` equal to
    the term's are stored as None (the plan follows the term if it moves). The caller has checked that every
    date lies within the term.
    """
    row = queries.get_pace_plan(session, district_id, class_id)
    term_start, term_end = term
    ids = [str(m) for m in module_ids]
    before: dict[str, date] = {}
    old_start = (row.start_date if row else None) or term_start
    old_end = (row.end_date if row else None) or term_end
    old_skips = [date.fromisoformat(d) for d in (row.skip_dates or [])] if row else []
    if old_start and old_end and old_end > old_start and ids:
        before = dict(spread_due_dates(ids, old_start, old_end, skip_weekends=row.skip_weekends if row else True,
                                       skip_dates=old_skips))
    if row is None:
        row = PacePlanRecord(district_id=district_id, class_id=class_id, due_edits={}, skip_dates=[],
                             updated_at=now)
        session.add(row)
    row.start_date = None if start == term_start else start
    row.end_date = None if end == term_end else end
    row.skip_weekends = skip_weekends
    edits: dict[str, str] = {}
    first, last = start or term_start, end or term_end
    if not reset and first and last and ids:
        even = dict(spread_due_dates(ids, first, last, skip_weekends=skip_weekends, skip_dates=old_skips))
        for module_id in module_ids:
            key = str(module_id)
            day = due.get(module_id)
            if day is not None and day != even.get(key) and day != before.get(key):
                edits[key] = day.isoformat()
    row.due_edits = edits
    row.updated_at = now
    row.updated_by = author_id
    session.flush()
    return row


def save_accommodation(session: Session, *, district_id: int, class_id: int, student_id: int, extra_days: int,
                       note: str, now: datetime) -> AccommodationRecord:
    """Set one student's extra days on every due date of a class."""
    row = queries.get_accommodation(session, district_id, class_id, student_id)
    if row is None:
        row = AccommodationRecord(district_id=district_id, class_id=class_id, person_id=student_id, factor=1.0)
        session.add(row)
    row.extra_days = extra_days
    row.note = note
    row.updated_at = now
    session.flush()
    return row


def remove_accommodation(session: Session, row: AccommodationRecord) -> None:
    session.delete(row)
    session.flush()


# --------------------------------------------------------------------------- profile entries


def add_entry(session: Session, *, district_id: int, student_id: int, kind: str, text: str, author_id: int | None,
              author_role: str, target_date: date | None, status: str | None, competency_id: int | None,
              now: datetime) -> ProfileEntryRecord:
    """Add an interest, aspiration, goal or note to a learner profile (goals start active)."""
    if kind == "goal":
        status = status or "active"
    else:
        target_date, status = None, None
    row = ProfileEntryRecord(district_id=district_id, person_id=student_id, kind=kind, text=text,
                             author_id=author_id, author_role=author_role, target_date=target_date, status=status,
                             competency_id=competency_id if kind == "note" else None, created_at=now,
                             updated_at=now)
    session.add(row)
    session.flush()
    return row


def edit_entry(session: Session, row: ProfileEntryRecord, *, text: str, target_date: date | None,
               status: str | None, now: datetime) -> None:
    """Change an entry's text (and a goal's target date and status)."""
    row.text = text
    if row.kind == "goal":
        row.target_date = target_date
        row.status = status or row.status or "active"
    row.updated_at = now


def archive_entry(session: Session, row: ProfileEntryRecord, now: datetime) -> None:
    """Archive an entry: it leaves the profile but stays in its history."""
    row.archived_at = now
    row.updated_at = now
