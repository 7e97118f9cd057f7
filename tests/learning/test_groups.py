"""Suggested small groups: students sharing a gap."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.learning.groups import Group, suggest_groups
from plugin.learning.mastery import Competency, MasteryScore

NOW = datetime(2025, 10, 20, tzinfo=UTC)
K = [Competency("k0", "Ratios"), Competency("k1", "Percents"), Competency("k2", "Rates")]


def sc(student: str, cid: str, value: float | None) -> MasteryScore:
    return MasteryScore(student, cid, value, 1, value is not None and value >= 3.0, NOW)


def table(rows: dict[str, dict[str, float | None]]) -> dict[str, dict[str, MasteryScore]]:
    return {s: {c: sc(s, c, v) for c, v in cs.items()} for s, cs in rows.items()}


SCORES = table(
    {
        "ana": {"k0": 1.0, "k1": 2.5, "k2": 4.0},
        "ben": {"k0": 2.0, "k1": 4.0, "k2": 1.0},
        "cy": {"k0": 2.9, "k1": 2.0},
        "dee": {"k0": 3.0, "k1": None},
    }
)


def test_groups_by_shared_gap_largest_first() -> None:
    assert suggest_groups(SCORES, K) == [
        Group("k0", "Ratios", ("ana", "ben", "cy"), 1.97, 3),  # (1.0 + 2.0 + 2.9) / 3 = 1.9666…
        Group("k1", "Percents", ("dee", "cy", "ana"), 2.25, 3),  # no score yet first, then lowest first
    ]


def test_minimum_size() -> None:
    assert [g.competency_id for g in suggest_groups(SCORES, K, min_size=1)] == ["k0", "k1", "k2"]
    assert suggest_groups(SCORES, K, min_size=4) == []


def test_large_gaps_are_split_evenly_by_score() -> None:
    scores = table({f"s{i:02}": {"k0": i / 10} for i in range(14)})
    groups = suggest_groups(scores, K, max_size=6)
    assert [len(g.student_ids) for g in groups] == [5, 5, 4]
    assert groups[0].student_ids == ("s00", "s01", "s02", "s03", "s04")
    assert {g.shared_by for g in groups} == {14}


def test_unassessed_students_join_when_asked() -> None:
    groups = suggest_groups(SCORES, K, student_ids=["ana", "ben", "cy", "dee", "eve"], include_unassessed=True)
    k2 = next(g for g in groups if g.competency_id == "k2")
    assert k2.student_ids == ("cy", "dee", "eve", "ben")
    assert k2.average_score == 1.0


def test_roster_limits_the_students() -> None:
    assert suggest_groups(SCORES, K, student_ids=["ana"]) == []


def test_nothing_to_group() -> None:
    assert suggest_groups({}, K) == []
    assert suggest_groups(SCORES, []) == []


@pytest.mark.parametrize("low, high", [(0, 3), (4, 3)])
def test_sizes_validated(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="min_size"):
        suggest_groups(SCORES, K, min_size=low, max_size=high)


@given(
    st.dictionaries(
        st.sampled_from([f"s{i}" for i in range(20)]),
        st.dictionaries(st.sampled_from(["k0", "k1", "k2"]), st.none() | st.integers(0, 40).map(lambda i: i / 10)),
    ),
    st.integers(1, 4),
    st.integers(4, 8),
)
def test_properties(raw: dict[str, dict[str, float | None]], low: int, high: int) -> None:
    scores = table(raw)
    groups = suggest_groups(scores, K, min_size=low, max_size=high)
    sizes = [len(g.student_ids) for g in groups]
    assert sizes == sorted(sizes, reverse=True)
    for g in groups:
        assert len(g.student_ids) <= high
        if -(-g.shared_by // high) * low <= g.shared_by:  # sizes within [min, max] are possible at all
            assert len(g.student_ids) >= low
        for student in g.student_ids:
            assert not scores[student][g.competency_id].mastered
    for cid in ("k0", "k1", "k2"):
        gap = {s for s, cs in scores.items() if cid in cs and not cs[cid].mastered}
        members = [s for g in groups if g.competency_id == cid for s in g.student_ids]
        assert len(members) == len(set(members))
        assert set(members) == (gap if len(gap) >= low else set())
