"""Learner profiles: skills, gaps, strengths, weaknesses, entries and growth."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from plugin.learning.mastery import Competency, MasteryScore
from plugin.learning.profile import (
    EntryKind,
    GoalStatus,
    Growth,
    ProfileEntry,
    build_profile,
    growth,
    margin,
    open_goals,
)

NOW = datetime(2025, 10, 20, 12, tzinfo=UTC)
COMPETENCIES = [Competency(f"k{i}", f"Skill {i}", points_possible=4.0, mastery_points=3.0) for i in range(6)]


def score(cid: str, value: float | None, mastered: bool | None = None) -> MasteryScore:
    is_mastered = value is not None and value >= 3.0 if mastered is None else mastered
    return MasteryScore("s1", cid, value, 1, is_mastered, NOW)


SCORES = {
    "k0": score("k0", 4.0),
    "k1": score("k1", 3.0),
    "k2": score("k2", 2.0),
    "k3": score("k3", None),  # n_mastery: not enough results yet
    "k4": score("k4", 3.5),
}


def entry(kind: EntryKind, text: str, minutes: int = 0, **kw: object) -> ProfileEntry:
    return ProfileEntry(
        f"e{minutes}", "s1", kind, text, "s1", "student", NOW + timedelta(minutes=minutes), **kw  # type: ignore[arg-type]
    )


class TestSnapshot:
    def test_skills_gaps_and_unassessed(self) -> None:
        snap = build_profile("s1", COMPETENCIES, SCORES, now=NOW)
        assert [s.competency_id for s in snap.skills] == ["k0", "k1", "k2", "k3", "k4"]
        assert snap.gaps == ("k2", "k3")
        assert snap.unassessed == ("k5",)
        assert snap.taken_at == NOW

    def test_strengths_and_weaknesses_against_the_threshold(self) -> None:
        # margins over 4 points: k0 +0.25, k4 +0.125, k1 0 (neither), k2 −0.25
        snap = build_profile("s1", COMPETENCIES, SCORES, now=NOW)
        assert snap.strengths == ("k0", "k4")
        assert snap.weaknesses == ("k2",)

    def test_against_the_class(self) -> None:
        means = {"k0": 4.0, "k1": 2.0, "k2": 1.0, "k4": 3.9}
        snap = build_profile("s1", COMPETENCIES, SCORES, now=NOW, class_means=means)
        # k1 +1, k2 +1 (ties keep curriculum order), k0 0, k4 −0.4
        assert snap.strengths == ("k1", "k2")
        assert snap.weaknesses == ("k4",)

    def test_missing_class_mean_falls_back_to_threshold(self) -> None:
        snap = build_profile("s1", COMPETENCIES, {"k2": score("k2", 2.0)}, now=NOW, class_means={"k2": None})
        assert snap.weaknesses == ("k2",)

    def test_top(self) -> None:
        scores = {c.id: score(c.id, 3.0 + i / 10) for i, c in enumerate(COMPETENCIES)}
        snap = build_profile("s1", COMPETENCIES, scores, now=NOW, top=2)
        assert snap.strengths == ("k5", "k4")
        assert build_profile("s1", COMPETENCIES, scores, now=NOW, top=0).strengths == ()

    def test_no_evidence(self) -> None:
        snap = build_profile("s1", COMPETENCIES, {}, now=NOW)
        assert snap.skills == snap.gaps == snap.strengths == snap.weaknesses == ()
        assert len(snap.unassessed) == 6

    def test_no_competencies(self) -> None:
        snap = build_profile("s1", [], SCORES, now=NOW)
        assert snap.skills == () and snap.unassessed == ()

    def test_entries_sorted_by_kind_and_time(self) -> None:
        entries = [
            entry(EntryKind.GOAL, "Finish unit 4", 5, target_date=date(2025, 11, 1), status=GoalStatus.ACTIVE,
                  co_authors=("t1",)),
            entry(EntryKind.INTEREST, "Robotics", 2),
            entry(EntryKind.INTEREST, "Drawing", 1),
            entry(EntryKind.ASPIRATION, "Engineer", 3),
            ProfileEntry(
                "n1", "s1", EntryKind.NOTE, "Strong on visual models", "t1", "teacher", NOW, competency_id="k0"
            ),
            ProfileEntry("x", "s2", EntryKind.INTEREST, "someone else's", "s2", "student", NOW),
        ]
        snap = build_profile("s1", COMPETENCIES, SCORES, now=NOW, entries=entries)
        assert [e.text for e in snap.interests] == ["Drawing", "Robotics"]
        assert [e.text for e in snap.aspirations] == ["Engineer"]
        assert [e.text for e in snap.goals] == ["Finish unit 4"] and snap.goals[0].co_authors == ("t1",)
        assert [e.competency_id for e in snap.notes] == ["k0"]

    def test_open_goals(self) -> None:
        goals = [
            entry(EntryKind.GOAL, "late", 1, target_date=date(2025, 10, 1), status=GoalStatus.ACTIVE),
            entry(EntryKind.GOAL, "on time", 2, target_date=date(2025, 12, 1)),
            entry(EntryKind.GOAL, "done", 3, status=GoalStatus.ACHIEVED),
            entry(EntryKind.GOAL, "undated", 4, status=GoalStatus.ACTIVE),
        ]
        snap = build_profile("s1", COMPETENCIES, {}, now=NOW, entries=goals)
        assert [(g.text, overdue) for g, overdue in open_goals(snap, date(2025, 10, 20))] == [
            ("late", True), ("on time", False), ("undated", False),
        ]

    def test_margin_scales(self) -> None:
        assert margin(4.0, Competency("k", points_possible=4.0, mastery_points=3.0)) == 0.25
        assert margin(4.0, Competency("k", points_possible=0.0, mastery_points=2.0)) == 1.0
        assert margin(1.0, Competency("k", points_possible=0.0, mastery_points=0.0)) == 1.0


class TestGrowth:
    def snapshots(self) -> list:  # type: ignore[type-arg]
        days = [NOW + timedelta(days=d) for d in (0, 30, 60)]
        series = [
            {"k0": score("k0", 2.1), "k1": score("k1", None)},
            {"k0": score("k0", 3.0), "k1": score("k1", 2.0)},
            {"k0": score("k0", 3.53), "k1": score("k1", 1.5), "k2": score("k2", 4.0)},
        ]
        return [build_profile("s1", COMPETENCIES, s, now=d) for s, d in zip(series, days, strict=True)]

    def test_growth_over_the_term(self) -> None:
        result = growth(self.snapshots())
        # 3.53 − 2.1 = 1.4299999999999997 in binary → 1.43
        assert result["k0"] == Growth("k0", 2.1, 3.53, 1.43, NOW, NOW + timedelta(days=60), NOW + timedelta(days=30))
        assert result["k1"].change is None and result["k1"].mastered_at is None
        assert result["k2"].change == 0.0 and result["k2"].first_at == NOW + timedelta(days=60)

    def test_window(self) -> None:
        result = growth(self.snapshots(), since=NOW + timedelta(days=1), until=NOW + timedelta(days=40))
        assert result["k0"].change == 0.0 and result["k0"].first_score == 3.0
        assert "k2" not in result

    def test_order_of_snapshots_does_not_matter(self) -> None:
        assert growth(reversed(self.snapshots())) == growth(self.snapshots())

    def test_no_snapshots(self) -> None:
        assert growth([]) == {}

    @given(st.lists(st.integers(0, 400).map(lambda i: i / 100), min_size=1, max_size=8))
    def test_change_is_last_minus_first(self, values: list[float]) -> None:
        snaps = [
            build_profile("s1", COMPETENCIES, {"k0": score("k0", v)}, now=NOW + timedelta(days=i))
            for i, v in enumerate(values)
        ]
        g = growth(snaps)["k0"]
        assert g.change is not None and abs(g.change - (values[-1] - values[0])) <= 0.005 + 1e-9
