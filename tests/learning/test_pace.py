"""Minimum pace: plans, accommodations, and each student's status on a given day."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.learning.pace import (
    Accommodation,
    PacePlan,
    PaceState,
    TermPhase,
    _add_school_days,
    assess_pace,
    build_plan,
    count_school_days,
    due_dates_for,
    is_school_day,
    pace_line,
    school_days,
    spread_due_dates,
    term_phase,
    velocity,
)

D = date
SEP1 = D(2025, 9, 1)  # a Monday


def plan_of(dates: list[date], start: date = SEP1, end: date | None = None, **kw: object) -> PacePlan:
    due = tuple((f"m{i + 1}", d) for i, d in enumerate(dates))
    return PacePlan("c1", start, end or (max(dates) if dates else start), due, **kw)  # type: ignore[arg-type]


# four modules due Sep 2, 4, 6 and 8 (no skipped days)
PLAN = plan_of([D(2025, 9, 2), D(2025, 9, 4), D(2025, 9, 6), D(2025, 9, 8)])


def done(*pairs: tuple[str, date | None]) -> dict[str, date | None]:
    return dict(pairs)


class TestSpread:
    def test_even_over_calendar_days(self) -> None:
        # 8 days, 4 modules: module k on day ⌈k × 8 / 4⌉ = 2, 4, 6, 8
        assert spread_due_dates(["a", "b", "c", "d"], SEP1, D(2025, 9, 8)) == (
            ("a", D(2025, 9, 2)), ("b", D(2025, 9, 4)), ("c", D(2025, 9, 6)), ("d", D(2025, 9, 8)),
        )

    def test_school_days_only(self) -> None:
        # Mon 1 – Fri 12 Sep without weekends and without the 4th: 1 2 3 5 8 9 10 11 12 (9 days)
        # module k on school day ⌈9k / 5⌉ = 2, 4, 6, 8, 9 → Sep 2, 5, 9, 11, 12
        got = spread_due_dates(list("abcde"), SEP1, D(2025, 9, 12), skip_weekends=True, skip_dates={D(2025, 9, 4)})
        assert [d for _, d in got] == [D(2025, 9, 2), D(2025, 9, 5), D(2025, 9, 9), D(2025, 9, 11), D(2025, 9, 12)]

    def test_more_modules_than_days(self) -> None:
        got = spread_due_dates(["a", "b", "c"], SEP1, D(2025, 9, 2))
        assert [d for _, d in got] == [SEP1, D(2025, 9, 2), D(2025, 9, 2)]

    def test_one_day_term(self) -> None:
        assert [d for _, d in spread_due_dates(["a", "b"], SEP1, SEP1)] == [SEP1, SEP1]

    def test_zero_modules(self) -> None:
        assert spread_due_dates([], SEP1, D(2025, 9, 30)) == ()

    def test_bad_terms(self) -> None:
        with pytest.raises(ValueError, match="ends .* before it starts"):
            spread_due_dates(["a"], SEP1, D(2025, 8, 31))
        with pytest.raises(ValueError, match="no school days"):
            spread_due_dates(["a"], D(2025, 9, 6), D(2025, 9, 7), skip_weekends=True)  # a weekend

    @given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=200), st.booleans())
    def test_spread_properties(self, modules: int, length: int, skip_weekends: bool) -> None:
        end = SEP1 + timedelta(days=length)
        days = school_days(SEP1, end, skip_weekends=skip_weekends)
        ids = [f"m{i}" for i in range(modules)]
        got = [d for _, d in spread_due_dates(ids, SEP1, end, skip_weekends=skip_weekends)]
        assert got == sorted(got)
        assert got[-1] == days[-1]
        assert all(d in days for d in got)


class TestPlan:
    def test_edits_override_spread_dates(self) -> None:
        plan = build_plan("c1", SEP1, D(2025, 9, 8), ["a", "b"], edits={"a": D(2025, 9, 6)})
        assert plan.due == (("a", D(2025, 9, 6)), ("b", D(2025, 9, 8)))
        assert plan.module_ids == ("a", "b")

    @pytest.mark.parametrize(
        "edits, message",
        [
            ({"zz": D(2025, 9, 3)}, "not in the plan: zz"),
            ({"a": D(2025, 8, 31)}, "outside the term"),
            ({"a": D(2025, 9, 9)}, "outside the term"),
        ],
    )
    def test_bad_edits(self, edits: dict[str, date], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            build_plan("c1", SEP1, D(2025, 9, 8), ["a", "b"], edits=edits)

    def test_duplicate_modules(self) -> None:
        with pytest.raises(ValueError, match="twice"):
            build_plan("c1", SEP1, D(2025, 9, 8), ["a", "a"])

    def test_pace_line(self) -> None:
        plan = plan_of([D(2025, 9, 2), D(2025, 9, 2), D(2025, 9, 5)])
        assert pace_line(plan) == [(SEP1, 0), (D(2025, 9, 2), 2), (D(2025, 9, 5), 3)]
        assert pace_line(plan_of([])) == [(SEP1, 0)]

    def test_term_phase_boundaries(self) -> None:
        plan = plan_of([D(2025, 9, 8)], end=D(2025, 9, 30))
        assert term_phase(plan, D(2025, 8, 31)) is TermPhase.NOT_STARTED
        assert term_phase(plan, SEP1) is TermPhase.IN_TERM
        assert term_phase(plan, D(2025, 9, 30)) is TermPhase.IN_TERM
        assert term_phase(plan, D(2025, 10, 1)) is TermPhase.ENDED


class TestAccommodations:
    def test_extra_days_and_factor(self) -> None:
        # due 10 days after start; × 1.5 = 15, + 2 = 17 days after start
        plan = plan_of([D(2025, 9, 11)])
        assert due_dates_for(plan, Accommodation("s1", extra_days=2, factor=1.5)) == {"m1": D(2025, 9, 18)}

    def test_factor_rounds_up_to_whole_days(self) -> None:
        plan = plan_of([D(2025, 9, 4)])  # 3 days × 1.25 = 3.75 → 4
        assert due_dates_for(plan, Accommodation("s1", factor=1.25)) == {"m1": D(2025, 9, 5)}

    def test_moved_to_the_next_school_day(self) -> None:
        plan = plan_of([D(2025, 9, 4)], skip_weekends=True, skip_dates=frozenset({D(2025, 9, 8)}))
        # Thu 4 + 2 days = Sat 6 → Mon 8 is skipped too → Tue 9
        assert due_dates_for(plan, Accommodation("s1", extra_days=2)) == {"m1": D(2025, 9, 9)}

    def test_no_accommodation(self) -> None:
        assert due_dates_for(PLAN) == dict(PLAN.due)

    @pytest.mark.parametrize("kw", [{"extra_days": -1}, {"factor": 0.5}, {"factor": float("nan")}])
    def test_accommodations_only_extend(self, kw: dict[str, float]) -> None:
        with pytest.raises(ValueError, match="extends dates"):
            due_dates_for(PLAN, Accommodation("s1", **kw))  # type: ignore[arg-type]

    def test_accommodated_student_is_on_track_where_others_are_behind(self) -> None:
        today = D(2025, 9, 5)  # m1 (Sep 2) and m2 (Sep 4) are due for everyone else
        assert assess_pace(PLAN, "s1", {}, today).state is PaceState.BEHIND
        status = assess_pace(PLAN, "s1", {}, today, accommodation=Accommodation("s1", extra_days=7))
        assert status.state is PaceState.ON_TRACK and status.expected == 0 and status.accommodated
        assert status.next_due == D(2025, 9, 9)


class TestStatus:
    def test_before_the_term(self) -> None:
        status = assess_pace(PLAN, "s1", {}, D(2025, 8, 20))
        assert (status.state, status.phase, status.expected, status.total) == (
            PaceState.ON_TRACK, TermPhase.NOT_STARTED, 0, 4,
        )
        assert status.next_due == D(2025, 9, 2)

    def test_working_ahead_before_the_term(self) -> None:
        status = assess_pace(PLAN, "s1", done(("m1", D(2025, 8, 20))), D(2025, 8, 21))
        assert status.state is PaceState.AHEAD and status.modules_ahead == 1

    def test_due_today_is_not_late_yet(self) -> None:
        assert assess_pace(PLAN, "s1", {}, D(2025, 9, 2)).state is PaceState.ON_TRACK

    def test_the_day_after_a_due_date(self) -> None:
        status = assess_pace(PLAN, "s1", {}, D(2025, 9, 3))
        assert (status.state, status.modules_behind, status.days_behind) == (PaceState.BEHIND, 1, 1)

    def test_behind_counts_days_since_the_first_missed_date(self) -> None:
        status = assess_pace(PLAN, "s1", done(("m1", D(2025, 9, 2))), D(2025, 9, 7))
        # expected 3 (due 2, 4, 6), done 1 → 2 behind; first missed: Sep 4 → 3 days
        assert (status.expected, status.completed, status.modules_behind, status.days_behind) == (3, 1, 2, 3)
        assert status.next_due == D(2025, 9, 4)

    def test_order_of_completion_does_not_matter(self) -> None:
        status = assess_pace(PLAN, "s1", done(("m3", D(2025, 9, 3))), D(2025, 9, 3))
        assert status.state is PaceState.ON_TRACK and status.completed == 1

    def test_ahead_and_far_ahead(self) -> None:
        today = D(2025, 9, 3)  # expected 1
        two = done(("m1", today), ("m2", today))
        three = done(("m1", today), ("m2", today), ("m3", today))
        assert assess_pace(PLAN, "s1", two, today).state is PaceState.AHEAD
        status = assess_pace(PLAN, "s1", three, today)
        assert (status.state, status.modules_ahead, status.days_ahead) == (PaceState.FAR_AHEAD, 2, 3)
        assert assess_pace(PLAN, "s1", three, today, far_ahead=3).state is PaceState.AHEAD

    def test_after_the_term(self) -> None:
        today = D(2025, 9, 20)
        status = assess_pace(PLAN, "s1", done(("m1", D(2025, 9, 2))), today)
        assert (status.phase, status.state, status.modules_behind, status.days_behind) == (
            TermPhase.ENDED, PaceState.BEHIND, 3, 16,
        )

    def test_finished(self) -> None:
        dates = [D(2025, 9, 2), D(2025, 9, 3), D(2025, 9, 5), D(2025, 9, 7)]
        status = assess_pace(PLAN, "s1", {f"m{i + 1}": d for i, d in enumerate(dates)}, D(2025, 9, 20))
        assert status.finished and status.state is PaceState.ON_TRACK
        assert status.projected_finish == D(2025, 9, 7) and status.on_time
        assert status.next_due is None and status.last_completed_on == D(2025, 9, 7)

    def test_zero_modules(self) -> None:
        status = assess_pace(plan_of([]), "s1", {}, D(2025, 9, 3))
        assert (status.state, status.expected, status.total, status.projected_finish) == (
            PaceState.ON_TRACK, 0, 0, None,
        )
        assert status.finished and status.on_time is None

    def test_modules_outside_the_plan_are_ignored(self) -> None:
        status = assess_pace(PLAN, "s1", done(("elsewhere", D(2025, 9, 2))), D(2025, 9, 3))
        assert status.completed == 0

    def test_validation(self) -> None:
        with pytest.raises(ValueError):
            assess_pace(PLAN, "s1", {}, SEP1, far_ahead=0)
        with pytest.raises(ValueError):
            assess_pace(PLAN, "s1", {}, SEP1, window_days=0)


class TestProjection:
    LONG = plan_of([SEP1 + timedelta(days=7 * i) for i in range(1, 11)], end=D(2025, 11, 30))

    def test_from_recent_velocity(self) -> None:
        today = D(2025, 9, 14)
        # 2 completions in the 14 days up to today, 8 remaining → 8 × 14 / 2 = 56 days
        status = assess_pace(self.LONG, "s1", done(("m1", D(2025, 9, 5)), ("m2", D(2025, 9, 12))), today)
        assert status.projected_finish == D(2025, 11, 9)  # today + 56 days
        assert status.on_time is True  # the last due date is Nov 10

    def test_on_time(self) -> None:
        today = D(2025, 9, 14)
        recent = {f"m{i}": D(2025, 9, 10 + i % 4) for i in range(1, 9)}  # 8 in the window, 2 left
        status = assess_pace(self.LONG, "s1", recent, today)
        assert status.projected_finish == today + timedelta(days=4) and status.on_time is True

    def test_window_edges(self) -> None:
        today = D(2025, 9, 14)
        edge = assess_pace(self.LONG, "s1", done(("m1", D(2025, 9, 1))), today)  # first day of the window
        assert edge.projected_finish == today + timedelta(days=9 * 14) and edge.on_time is False
        outside = assess_pace(self.LONG, "s1", done(("m1", D(2025, 8, 31))), today)
        assert outside.projected_finish is None and outside.on_time is None

    def test_no_velocity(self) -> None:
        status = assess_pace(self.LONG, "s1", {}, D(2025, 9, 14))
        assert status.projected_finish is None
        undated = assess_pace(self.LONG, "s1", done(("m1", None)), D(2025, 9, 14))
        assert undated.completed == 1 and undated.projected_finish is None

    def test_school_days(self) -> None:
        plan = plan_of([D(2025, 9, 12)] * 3, skip_weekends=True)
        today = D(2025, 9, 12)  # Friday; the 14-day window Aug 30 – Sep 12 holds 10 school days
        status = assess_pace(plan, "s1", done(("m1", D(2025, 9, 8)), ("m2", D(2025, 9, 9))), today)
        # 1 remaining × 10 / 2 = 5 school days after Friday → Friday Sep 19
        assert status.projected_finish == D(2025, 9, 19)

    def test_velocity(self) -> None:
        assert velocity([D(2025, 9, 14), D(2025, 9, 1), D(2025, 8, 31)], D(2025, 9, 14)) == 2 / 14


class TestCalendar:
    def test_is_school_day(self) -> None:
        sat = D(2025, 9, 6)
        assert is_school_day(sat) and not is_school_day(sat, skip_weekends=True)
        assert not is_school_day(SEP1, skip_dates={SEP1})

    @given(
        st.dates(min_value=D(2024, 1, 1), max_value=D(2026, 12, 31)),
        st.integers(min_value=0, max_value=400),
        st.booleans(),
        st.sets(st.dates(min_value=D(2024, 1, 1), max_value=D(2028, 12, 31)), max_size=15),
    )
    def test_counting_and_adding_agree_with_walking(
        self, start: date, length: int, skip_weekends: bool, skipped: set[date]
    ) -> None:
        end = start + timedelta(days=length)
        kw = {"skip_weekends": skip_weekends, "skip_dates": frozenset(skipped)}
        walked = school_days(start, end, **kw)  # type: ignore[arg-type]
        assert count_school_days(start, end, **kw) == len(walked)  # type: ignore[arg-type]
        plan = PacePlan("c", start, end, (), **kw)  # type: ignore[arg-type]
        count = max(1, length // 3)
        day, seen = start, 0
        while seen < count:
            day += timedelta(days=1)
            seen += is_school_day(day, **kw)  # type: ignore[arg-type]
        assert _add_school_days(start, count, plan) == day
        assert _add_school_days(start, 0, plan) == start

    def test_count_of_an_empty_range(self) -> None:
        assert count_school_days(D(2025, 9, 2), SEP1) == 0


def test_edited_dates_out_of_module_order() -> None:
    plan = build_plan("c1", SEP1, D(2025, 9, 30), ["a", "b", "c"], edits={"a": D(2025, 9, 25)})
    # b (Sep 20) and a (Sep 25) are due; the line counts dates, whatever the module order
    status = assess_pace(plan, "s1", done(("b", D(2025, 9, 19))), D(2025, 9, 26))
    assert (status.expected, status.completed, status.state, status.days_behind) == (2, 1, PaceState.BEHIND, 1)
    assert pace_line(plan)[1:] == [(D(2025, 9, 20), 1), (D(2025, 9, 25), 2), (D(2025, 9, 30), 3)]


def test_accommodation_beyond_the_term_end() -> None:
    status = assess_pace(PLAN, "s1", {}, D(2025, 9, 10), accommodation=Accommodation("s1", extra_days=10))
    assert status.phase is TermPhase.ENDED and status.state is PaceState.ON_TRACK and status.expected == 0
