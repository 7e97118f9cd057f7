"""Pace alerts: deduplicated, escalating, resolved; and the weekly digests."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from plugin.learning.alerts import (
    Alert,
    AlertChanges,
    AlertKind,
    Audience,
    Digest,
    DigestRoster,
    EscalationPolicy,
    build_digests,
    describe_pace,
    reconcile,
)
from plugin.learning.pace import PaceState, PaceStatus, TermPhase

NOW = datetime(2025, 10, 20, 7, 0, tzinfo=UTC)
TODAY = NOW.date()


def status(
    student: str = "s1",
    state: PaceState = PaceState.ON_TRACK,
    *,
    class_id: str = "c1",
    phase: TermPhase = TermPhase.IN_TERM,
    completed: int = 5,
    expected: int = 5,
    total: int = 20,
    behind: tuple[int, int] = (0, 0),
    ahead: int = 0,
    last: date | None = TODAY,
    **kw: object,
) -> PaceStatus:
    return PaceStatus(
        student, class_id, state, phase, completed, expected, total, behind[0], behind[1], ahead,
        last_completed_on=last, **kw,  # type: ignore[arg-type]
    )


def alert(kind: AlertKind = AlertKind.BEHIND, level: int = 1, days_old: int = 0, **kw: object) -> Alert:
    opened = NOW - timedelta(days=days_old)
    base: dict[str, object] = {
        "student_id": "s1", "class_id": "c1", "detail": "1 module (1 day) behind the minimum pace", "id": "a1"
    }
    base.update(kw)
    return Alert(kind=kind, level=level, opened_at=opened, updated_at=opened, **base)  # type: ignore[arg-type]


BEHIND_1 = status(state=PaceState.BEHIND, completed=4, behind=(1, 1))


class TestOpening:
    def test_falling_behind_opens_an_alert(self) -> None:
        changes = reconcile([], [BEHIND_1], NOW)
        assert changes == AlertChanges(
            to_open=(
                Alert("s1", "c1", AlertKind.BEHIND, 1, NOW, NOW, "1 module (1 day) behind the minimum pace"),
            )
        )

    def test_level_reflects_how_long_already_behind(self) -> None:
        for days, level in [(6, 1), (7, 2), (13, 2), (14, 3), (60, 3)]:
            changes = reconcile([], [status(state=PaceState.BEHIND, behind=(2, days))], NOW)
            assert changes.to_open[0].level == level

    def test_changes_unpack(self) -> None:
        to_open, to_update, to_resolve = reconcile([alert(student_id="s2")], [BEHIND_1, status("s2")], NOW)
        assert [a.student_id for a in to_open] == ["s1"] and to_update == () and [a.id for a in to_resolve] == ["a1"]

    def test_on_track_opens_nothing(self) -> None:
        assert reconcile([], [status()], NOW) == AlertChanges()

    def test_far_ahead(self) -> None:
        far = status(state=PaceState.FAR_AHEAD, completed=9, ahead=4)
        (opened,) = reconcile([], [far], NOW).to_open
        assert (opened.kind, opened.detail) == (AlertKind.FAR_AHEAD, "4 modules ahead of the minimum pace (far ahead)")
        assert reconcile([], [far], NOW, policy=EscalationPolicy(alert_far_ahead=False)) == AlertChanges()

    def test_stalled(self) -> None:
        idle = status(last=TODAY - timedelta(days=10))
        (opened,) = reconcile([], [idle], NOW).to_open
        assert (opened.kind, opened.detail, opened.level) == (AlertKind.STALLED, "no module completed in 10 days", 2)
        assert reconcile([], [status(last=TODAY - timedelta(days=9))], NOW) == AlertChanges()

    def test_no_stall_alert_when_it_does_not_apply(self) -> None:
        old = TODAY - timedelta(days=30)
        quiet = [
            status(last=None),  # never completed anything: the behind alert covers it
            status(phase=TermPhase.NOT_STARTED, last=old),
            status(phase=TermPhase.ENDED, last=old),
            status(completed=20, expected=18, state=PaceState.AHEAD, ahead=2, last=old),  # finished
        ]
        for s in quiet:
            assert reconcile([], [s], NOW).to_open == ()
        behind_and_idle = status(state=PaceState.BEHIND, behind=(1, 2), last=old)
        assert [a.kind for a in reconcile([], [behind_and_idle], NOW).to_open] == [AlertKind.BEHIND]


class TestPersisting:
    def test_an_open_alert_is_not_opened_twice(self) -> None:
        existing = alert()
        assert reconcile([existing], [BEHIND_1], NOW) == AlertChanges()

    def test_escalates_with_age(self) -> None:
        changes = reconcile([alert(days_old=8)], [BEHIND_1], NOW)
        assert changes.to_open == () and changes.to_resolve == ()
        (updated,) = changes.to_update
        assert (updated.id, updated.level, updated.opened_at, updated.updated_at) == (
            "a1", 2, NOW - timedelta(days=8), NOW,
        )

    def test_escalates_with_days_behind(self) -> None:
        worse = status(state=PaceState.BEHIND, completed=2, behind=(3, 15))
        (updated,) = reconcile([alert()], [worse], NOW).to_update
        assert (updated.level, updated.detail) == (3, "3 modules (15 days) behind the minimum pace")

    def test_never_de_escalates_while_open(self) -> None:
        assert reconcile([alert(level=3)], [BEHIND_1], NOW) == AlertChanges()

    def test_detail_change_updates(self) -> None:
        (updated,) = reconcile([alert(detail="old words")], [BEHIND_1], NOW).to_update
        assert updated.level == 1 and updated.detail == "1 module (1 day) behind the minimum pace"

    def test_escalation_policy(self) -> None:
        policy = EscalationPolicy(level2_after_days=2, level3_after_days=3)
        assert [policy.level_for(d) for d in range(5)] == [1, 1, 2, 3, 3]
        (updated,) = reconcile([alert(days_old=2)], [BEHIND_1], NOW, policy=policy).to_update
        assert updated.level == 2


class TestResolving:
    def test_back_on_track_resolves(self) -> None:
        (resolved,) = reconcile([alert()], [status()], NOW).to_resolve
        assert (resolved.id, resolved.resolved_at, resolved.updated_at) == ("a1", NOW, NOW)

    def test_kind_changes_swap_alerts(self) -> None:
        changes = reconcile([alert()], [status(state=PaceState.FAR_AHEAD, ahead=3)], NOW)
        assert [a.kind for a in changes.to_open] == [AlertKind.FAR_AHEAD]
        assert [a.kind for a in changes.to_resolve] == [AlertKind.BEHIND]

    def test_student_gone_from_the_class(self) -> None:
        changes = reconcile([alert(student_id="gone")], [status()], NOW)
        assert [a.student_id for a in changes.to_resolve] == ["gone"]

    def test_other_classes_left_alone(self) -> None:
        assert reconcile([alert(class_id="c2")], [status()], NOW) == AlertChanges()
        assert reconcile([alert()], [], NOW) == AlertChanges()

    def test_duplicates_resolved_oldest_kept(self) -> None:
        older, newer = alert(days_old=3, id="a1"), alert(days_old=1, id="a2")
        changes = reconcile([newer, older], [BEHIND_1], NOW)
        assert [a.id for a in changes.to_resolve] == ["a2"]
        assert changes.to_open == ()

    def test_already_resolved_alerts_are_ignored(self) -> None:
        closed = alert(resolved_at=NOW - timedelta(days=1))
        assert reconcile([closed], [BEHIND_1], NOW).to_open[0].id is None

    def test_duplicate_statuses_open_one_alert(self) -> None:
        assert len(reconcile([], [BEHIND_1, BEHIND_1], NOW).to_open) == 1

    def test_today_can_differ_from_nows_date(self) -> None:
        changes = reconcile([alert(days_old=6)], [BEHIND_1], NOW, today=TODAY + timedelta(days=1))
        assert changes.to_update[0].level == 2


statuses = st.builds(
    status,
    student=st.sampled_from(["s1", "s2", "s3"]),
    state=st.sampled_from(list(PaceState)),
    phase=st.sampled_from(list(TermPhase)),
    behind=st.tuples(st.integers(1, 5), st.integers(1, 30)),
    ahead=st.integers(0, 5),
    last=st.none() | st.dates(min_value=TODAY - timedelta(days=40), max_value=TODAY),
)


class TestProperties:
    @given(st.lists(statuses, max_size=6), st.lists(statuses, max_size=6))
    def test_applying_changes_reaches_a_fixed_point(self, first: list[PaceStatus], second: list[PaceStatus]) -> None:
        open_alerts: dict[tuple[str, str, AlertKind], Alert] = {}
        for statuses_now in (first, second):
            changes = reconcile(open_alerts.values(), statuses_now, NOW)
            for a in changes.to_resolve:
                open_alerts.pop(a.key, None)
            for a in changes.to_update + changes.to_open:
                assert a.key not in open_alerts or a in changes.to_update
                open_alerts[a.key] = a
            again = reconcile(open_alerts.values(), statuses_now, NOW)
            assert again.to_open == () and again.to_resolve == ()
            assert again.to_update == ()

    @given(st.lists(statuses, max_size=8))
    def test_one_alert_per_key(self, current: list[PaceStatus]) -> None:
        keys = [a.key for a in reconcile([], current, NOW).to_open]
        assert len(keys) == len(set(keys))


# --------------------------------------------------------------------------- digests

ROSTER = DigestRoster(
    names={"s1": "Ana Lopez", "s2": "Ben Okafor", "t1": "Ms Reyes", "p1": "Maria Lopez"},
    class_titles={"c1": "Algebra I", "c2": "Biology"},
    teacher_classes={"t1": ("c1", "c2"), "t2": ("c9",)},
    guardian_students={"p1": ("s1",), "p2": ("s9",)},
)


class TestDigests:
    def digests(self) -> list[Digest]:
        statuses_now = [
            status("s1", PaceState.BEHIND, completed=3, behind=(2, 9), next_due=date(2025, 10, 3)),
            status("s2", PaceState.ON_TRACK, projected_finish=date(2026, 1, 9), next_due=date(2025, 10, 24)),
            status("s1", PaceState.ON_TRACK, class_id="c2", completed=20, expected=20),
        ]
        alerts = [
            alert(level=2, detail="2 modules (9 days) behind the minimum pace"),
            alert(kind=AlertKind.STALLED, student_id="s2", detail="no module completed in 11 days"),
        ]
        return build_digests(statuses_now, alerts, ROSTER, week_of=date(2025, 10, 20))

    def test_recipients(self) -> None:
        assert [(d.recipient_id, d.audience) for d in self.digests()] == [
            ("t1", Audience.TEACHER), ("s1", Audience.STUDENT), ("s2", Audience.STUDENT), ("p1", Audience.PARENT),
        ]
        assert {d.subject for d in self.digests()} == {"Trailmark weekly summary, week of October 20, 2025"}

    def test_teacher(self) -> None:
        assert self.digests()[0].lines == (
            "Algebra I: 2 students; 1 on track, 1 behind, 0 ahead, 0 far ahead.",
            "- Ana Lopez: 2 modules (9 days) behind the minimum pace (level 2)",
            "- Ben Okafor: no module completed in 11 days (level 1)",
            "Biology: 1 student; 1 on track, 0 behind, 0 ahead, 0 far ahead.",
            "- No open alerts.",
        )

    def test_student(self) -> None:
        s1, s2 = self.digests()[1], self.digests()[2]
        assert s1.lines == (
            "Algebra I: 2 modules (9 days) behind the minimum pace; 3 of 20 modules done. "
            "Next module due October 3.",
            "Biology: finished all 20 modules; 20 of 20 modules done.",
        )
        assert s2.lines == (
            "Algebra I: on track; 5 of 20 modules done. Next module due October 24. "
            "At your recent pace you would finish by January 9.",
        )

    def test_parent(self) -> None:
        assert self.digests()[3].lines == (
            "Ana Lopez, Algebra I: 2 modules (9 days) behind the minimum pace; 3 of 20 modules done.",
            "Ana Lopez, Biology: finished all 20 modules; 20 of 20 modules done.",
        )

    def test_nothing_to_say(self) -> None:
        assert build_digests([], [], ROSTER, week_of=date(2025, 10, 20)) == []

    def test_unknown_names_fall_back_to_ids(self) -> None:
        (digest,) = build_digests([status("s7", class_id="c7")], [], DigestRoster(), week_of=date(2025, 10, 20))
        assert digest.lines == ("c7: on track; 5 of 20 modules done.",)


class TestWording:
    def test_describe(self) -> None:
        assert describe_pace(status(total=0)) == "no modules planned yet"
        assert describe_pace(status(phase=TermPhase.NOT_STARTED, completed=0, expected=0)) == (
            "on track; the term has not started"
        )
        assert describe_pace(status(state=PaceState.AHEAD, ahead=1)) == "1 module ahead of the minimum pace"
        assert describe_pace(replace(BEHIND_1, days_behind=1)) == "1 module (1 day) behind the minimum pace"
