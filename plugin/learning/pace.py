"""Minimum pace: a plan of expected completion dates per class, and each student's status against it.

The plan spreads the modules evenly over the term's school days unless a teacher edits a date. A module is
expected by the end of its date: on ``today`` a student is expected to have completed every module due before
``today``. Accommodations extend a student's dates (extra days and/or a factor on the elapsed time).
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from plugin.learning._records import positional_constructor

ONE_DAY = timedelta(days=1)


class PaceState(enum.StrEnum):
    ON_TRACK = "on_track"
    BEHIND = "behind"
    AHEAD = "ahead"
    FAR_AHEAD = "far_ahead"


class TermPhase(enum.StrEnum):
    NOT_STARTED = "not_started"
    IN_TERM = "in_term"
    ENDED = "ended"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class PacePlan:
    """A class's minimum pace: term dates and the expected completion date of each module, in module order."""

    class_id: str
    start: date
    end: date
    due: tuple[tuple[str, date], ...]
    skip_weekends: bool = False
    skip_dates: frozenset[date] = frozenset()
    # derived once from ``due``
    planned: frozenset[str] = field(init=False, repr=False, compare=False)
    sorted_dates: tuple[date, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "planned", frozenset(module_id for module_id, _ in self.due))
        object.__setattr__(self, "sorted_dates", tuple(sorted(day for _, day in self.due)))

    @property
    def module_ids(self) -> tuple[str, ...]:
        return tuple(module_id for module_id, _ in self.due)


@dataclass(frozen=True, slots=True)
class Accommodation:
    """Extended dates for one student: each due date moves by ``factor`` on the elapsed time, then ``extra_days``."""

    student_id: str
    extra_days: int = 0
    factor: float = 1.0
    note: str = ""


@dataclass(frozen=True, slots=True)
class PaceStatus:
    """Where one student stands against the minimum pace on a given day."""

    student_id: str
    class_id: str
    state: PaceState
    phase: TermPhase
    completed: int
    expected: int
    total: int
    modules_behind: int = 0
    days_behind: int = 0  # days since the first missed due date
    modules_ahead: int = 0
    days_ahead: int = 0  # days before its due date the latest module was finished ahead of the line
    next_due: date | None = None  # the student's due date for the next module to complete
    projected_finish: date | None = None  # from recent velocity; None when there is none
    on_time: bool | None = None  # projected finish on or before the student's last due date
    last_completed_on: date | None = None
    accommodated: bool = False

    @property
    def finished(self) -> bool:
        return self.completed >= self.total


_new_status = positional_constructor(PaceStatus)


# --------------------------------------------------------------------------- calendar


def is_school_day(day: date, *, skip_weekends: bool = False, skip_dates: Collection[date] = ()) -> bool:
    """Return whether a day counts for pacing."""
    return not (skip_weekends and day.weekday() >= 5) and day not in skip_dates


def school_days(
    start: date, end: date, *, skip_weekends: bool = False, skip_dates: Collection[date] = ()
) -> list[date]:
    """List the days from start to end inclusive that count for pacing."""
    days: list[date] = []
    day = start
    while day <= end:
        if is_school_day(day, skip_weekends=skip_weekends, skip_dates=skip_dates):
            days.append(day)
        day += ONE_DAY
    return days


def _next_school_day(day: date, plan: PacePlan) -> date:
    if not plan.skip_weekends and not plan.skip_dates:
        return day
    for _ in range(3660):
        if is_school_day(day, skip_weekends=plan.skip_weekends, skip_dates=plan.skip_dates):
            return day
        day += ONE_DAY
    raise ValueError("no school day within ten years after the given date; check the skip dates")


def count_school_days(
    start: date, end: date, *, skip_weekends: bool = False, skip_dates: Collection[date] = ()
) -> int:
    """Count the days from start to end inclusive that count for pacing."""
    if end < start:
        return 0
    days = (end - start).days + 1
    if skip_weekends:
        weeks, rest = divmod(days, 7)
        first = start.weekday()
        days = weeks * 5 + sum(1 for i in range(rest) if (first + i) % 7 < 5)
    return days - sum(1 for d in skip_dates if start <= d <= end and not (skip_weekends and d.weekday() >= 5))


def _add_weekdays(day: date, count: int) -> date:
    """Return the count-th weekday after ``day`` (count ≥ 1)."""
    weeks, rest = divmod(count, 5)
    if rest == 0:
        weeks, rest = weeks - 1, 5
    day += timedelta(days=7 * weeks)  # any 7 consecutive days hold 5 weekdays
    while rest:
        day += ONE_DAY
        if day.weekday() < 5:
            rest -= 1
    return day


def _add_school_days(day: date, count: int, plan: PacePlan) -> date:
    """Return the count-th school day after ``day``."""
    if count <= 0:
        return day
    if not plan.skip_weekends and not plan.skip_dates:
        return day + timedelta(days=count)
    remaining = count
    while remaining > 0:
        reached = _add_weekdays(day, remaining) if plan.skip_weekends else day + timedelta(days=remaining)
        remaining = sum(
            1
            for skipped in plan.skip_dates
            if day < skipped <= reached and not (plan.skip_weekends and skipped.weekday() >= 5)
        )
        day = reached
    return day


# --------------------------------------------------------------------------- plan


def spread_due_dates(
    module_ids: Sequence[str],
    start: date,
    end: date,
    *,
    skip_weekends: bool = False,
    skip_dates: Collection[date] = (),
) -> tuple[tuple[str, date], ...]:
    """Spread modules evenly over the term's school days; the last one is due on the last school day.

    Module k of n is due on school day ⌈k × days / n⌉ (1-based), so with more modules than days several
    share a day.
    """
    if end < start:
        raise ValueError(f"the term ends ({end}) before it starts ({start})")
    if not module_ids:
        return ()
    days = school_days(start, end, skip_weekends=skip_weekends, skip_dates=skip_dates)
    if not days:
        raise ValueError(f"the term {start} – {end} has no school days")
    n = len(module_ids)
    return tuple((module_id, days[-(-(k * len(days)) // n) - 1]) for k, module_id in enumerate(module_ids, 1))


def build_plan(
    class_id: str,
    start: date,
    end: date,
    module_ids: Sequence[str],
    *,
    edits: Mapping[str, date] | None = None,
    skip_weekends: bool = False,
    skip_dates: Collection[date] = (),
) -> PacePlan:
    """Build a pace plan: dates spread evenly, then a teacher's edited dates applied per module."""
    if len(set(module_ids)) != len(module_ids):
        raise ValueError("a module appears twice in the pace plan")
    due = spread_due_dates(module_ids, start, end, skip_weekends=skip_weekends, skip_dates=skip_dates)
    edits = edits or {}
    unknown = sorted(set(edits) - set(module_ids))
    if unknown:
        raise ValueError(f"edited dates for modules not in the plan: {', '.join(unknown)}")
    for module_id, day in edits.items():
        if not start <= day <= end:
            raise ValueError(f"the date {day} for {module_id} is outside the term {start} – {end}")
    due = tuple((module_id, edits.get(module_id, day)) for module_id, day in due)
    return PacePlan(class_id, start, end, due, skip_weekends, frozenset(skip_dates))


def due_dates_for(plan: PacePlan, accommodation: Accommodation | None = None) -> dict[str, date]:
    """Return one student's due date per module, with their accommodation applied."""
    if accommodation is None:
        return dict(plan.due)
    if accommodation.extra_days < 0 or not accommodation.factor >= 1.0:
        raise ValueError("an accommodation extends dates: extra_days must be ≥ 0 and factor ≥ 1")
    result: dict[str, date] = {}
    for module_id, day in plan.due:
        elapsed = max((day - plan.start).days, 0)
        moved = plan.start + timedelta(days=math.ceil(elapsed * accommodation.factor) + accommodation.extra_days)
        result[module_id] = _next_school_day(max(moved, day), plan)
    return result


def pace_line(plan: PacePlan, accommodation: Accommodation | None = None) -> list[tuple[date, int]]:
    """Return the minimum-pace line as steps: (start, 0), then (due date, modules expected by its end)."""
    dates = sorted(due_dates_for(plan, accommodation).values())
    line = [(plan.start, 0)]
    for count, day in enumerate(dates, 1):
        if line[-1][0] == day:
            line[-1] = (day, count)
        else:
            line.append((day, count))
    return line


def term_phase(plan: PacePlan, today: date) -> TermPhase:
    """Return whether the term has not started, is running, or has ended on ``today``."""
    if today < plan.start:
        return TermPhase.NOT_STARTED
    if today > plan.end:
        return TermPhase.ENDED
    return TermPhase.IN_TERM


# --------------------------------------------------------------------------- status


def assess_pace(
    plan: PacePlan,
    student_id: str,
    completed_on: Mapping[str, date | None],
    today: date,
    *,
    accommodation: Accommodation | None = None,
    far_ahead: int = 2,
    window_days: int = 14,
) -> PaceStatus:
    """Compare one student's completed modules with the minimum-pace line on ``today``.

    ``completed_on`` maps each completed module to its completion date (None when unknown; it still counts as
    completed but not towards velocity). Modules outside the plan are ignored. Velocity is the number of
    completions in the ``window_days`` days up to ``today`` per school day of that window; the projected
    finish adds the remaining modules at that rate.
    """
    if far_ahead < 1 or window_days < 1:
        raise ValueError("far_ahead and window_days must be at least 1")
    if accommodation is not None:
        dues: Sequence[date] = sorted(due_dates_for(plan, accommodation).values())
    else:
        dues = plan.sorted_dates
    total = len(dues)
    planned = plan.planned
    done_dates: list[date] = []
    completed = 0
    for module_id, day in completed_on.items():
        if module_id not in planned:
            continue
        completed += 1
        if day is not None:
            done_dates.append(day)
    expected = bisect_left(dues, today)
    last_completed_on = max(done_dates) if done_dates else None
    state = PaceState.ON_TRACK
    modules_behind = days_behind = modules_ahead = days_ahead = 0
    if completed < expected:
        state = PaceState.BEHIND
        modules_behind = expected - completed
        days_behind = (today - dues[completed]).days
    elif completed > expected:
        modules_ahead = completed - expected
        state = PaceState.FAR_AHEAD if modules_ahead >= far_ahead else PaceState.AHEAD
        days_ahead = max((dues[completed - 1] - today).days, 0)
    next_due = dues[completed] if completed < total else None
    projected = None
    if total:
        projected = _project_finish(plan, total - completed, done_dates, today, window_days, last_completed_on)
    last_due = dues[-1] if dues else None
    on_time = None if projected is None or last_due is None else projected <= last_due
    return _new_status(
        student_id,
        plan.class_id,
        state,
        term_phase(plan, today),
        completed,
        expected,
        total,
        modules_behind,
        days_behind,
        modules_ahead,
        days_ahead,
        next_due,
        projected,
        on_time,
        last_completed_on,
        accommodation is not None,
    )


def _project_finish(
    plan: PacePlan,
    remaining: int,
    done_dates: Iterable[date],
    today: date,
    window_days: int,
    last_completed_on: date | None,
) -> date | None:
    if remaining <= 0:
        return last_completed_on or today
    window_start = today - timedelta(days=window_days - 1)
    recent = sum(1 for day in done_dates if window_start <= day <= today)
    if recent == 0:
        return None
    window = count_school_days(window_start, today, skip_weekends=plan.skip_weekends, skip_dates=plan.skip_dates)
    if window == 0:
        return None
    return _add_school_days(today, math.ceil(remaining * window / recent), plan)


def velocity(done_dates: Iterable[date], today: date, window_days: int = 14) -> float:
    """Return completions per day over the ``window_days`` days up to ``today``."""
    window_start = today - timedelta(days=window_days - 1)
    return sum(1 for day in done_dates if window_start <= day <= today) / window_days


def plan_from_settings(
    class_id: str,
    start: date | None,
    end: date | None,
    module_ids: Sequence[str],
    *,
    edits: Mapping[str, object] | None = None,
    skip_weekends: bool = True,
    skip_dates: Iterable[object] = (),
) -> PacePlan | None:
    """Build a plan from stored settings, or None without a term or modules.

    Edits for modules no longer in the class, unreadable dates and dates outside the term are left out rather than
    refused, so one stale edit never stops a recompute.
    """
    if not (start and end and end > start and module_ids):
        return None
    known = set(module_ids)
    kept: dict[str, date] = {}
    for key, value in (edits or {}).items():
        day = _as_date(value)
        if key in known and day is not None and start <= day <= end:
            kept[key] = day
    skips = [d for d in (_as_date(v) for v in skip_dates) if d is not None]
    return build_plan(class_id, start, end, module_ids, edits=kept, skip_weekends=skip_weekends, skip_dates=skips)


def _as_date(value: object) -> date | None:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return None
    return None
