"""Mastery gates: open, locked or complete, why, what next, and what to post to the LMS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.learning.gating import (
    CheckPost,
    GateOverride,
    GateReason,
    GateStatus,
    MasteryCheck,
    MissingCompetency,
    Module,
    OverrideKind,
    StudentPath,
    build_graph,
    effective_overrides,
    evaluate_path,
    find_dropped_prerequisites,
    plan_check_posts,
)
from plugin.learning.mastery import Competency, MasteryScore

T = datetime(2025, 10, 6, 12, tzinfo=UTC)

COMPETENCIES = [
    Competency("add", "Adding fractions", mastery_points=3.0),
    Competency("sub", "Subtracting fractions", mastery_points=3.0),
    Competency("mul", "Multiplying fractions", mastery_points=3.0),
    Competency("div", "Dividing fractions", mastery_points=3.0),
    Competency("dec", "Decimals", mastery_points=3.0),
]
M1 = Module("m1", "Unit 1", 1, (), ("add", "sub"))
M2 = Module("m2", "Unit 2", 2, ("m1",), ("mul", "div"))
M3 = Module("m3", "Unit 3", 3, ("m2",), ("dec",))
GRAPH = build_graph([M3, M1, M2], COMPETENCIES)


def score(cid: str, value: float | None, mastered: bool | None = None) -> MasteryScore:
    return MasteryScore("s1", cid, value, 1, value is not None and value >= 3.0 if mastered is None else mastered, T)


def path(mastered: set[str], **kw: object) -> StudentPath:
    return evaluate_path("s1", GRAPH, mastered, **kw)  # type: ignore[arg-type]


def states(p: StudentPath) -> dict[str, tuple[GateStatus, GateReason]]:
    return {g.module_id: (g.status, g.reason) for g in p.gates}


class TestGraph:
    def test_orders_by_position_and_collects_prerequisite_competencies(self) -> None:
        assert [m.id for m in GRAPH.modules] == ["m1", "m2", "m3"]
        assert [n.competency_id for n in GRAPH.required["m2"]] == ["add", "sub"]
        assert GRAPH.required["m1"] == ()
        assert GRAPH.required["m3"][0] == MissingCompetency("mul", "Multiplying fractions", "m2", "Unit 2", None, 3.0)

    def test_several_prerequisites_deduplicated(self) -> None:
        a = Module("a", "A", 1, (), ("x", "y"))
        b = Module("b", "B", 2, (), ("y", "z"))
        c = Module("c", "C", 3, ("a", "b", "a"), ())
        graph = build_graph([a, b, c])
        assert [(n.competency_id, n.module_id) for n in graph.required["c"]] == [("x", "a"), ("y", "a"), ("z", "b")]
        assert graph.required["c"][0].title == "x"  # no competency record: the id stands in

    def test_unknown_prerequisite_is_reported_and_ignored(self) -> None:
        graph = build_graph([Module("a", "A", 1, ("gone",), ())])
        assert graph.unknown_prerequisites == (("a", "gone"),)
        assert evaluate_path("s1", graph, set()).gates[0].status is GateStatus.OPEN

    def test_canvas_drops_prerequisites_that_are_not_earlier(self) -> None:
        modules = [Module("a", "A", 1, ("b",)), Module("b", "B", 2, ("a",)), Module("c", "C", 2, ("b",))]
        assert find_dropped_prerequisites(modules) == [("a", "b"), ("c", "b")]
        assert find_dropped_prerequisites([M1, M2, M3]) == []


class TestGates:
    def test_nothing_mastered(self) -> None:
        p = path(set())
        assert states(p) == {
            "m1": (GateStatus.OPEN, GateReason.NO_PREREQUISITES),
            "m2": (GateStatus.LOCKED, GateReason.MISSING_MASTERY),
            "m3": (GateStatus.LOCKED, GateReason.MISSING_MASTERY),
        }
        assert p.next_module_id == "m1"
        assert p.next_step == "Next: continue with Unit 1."

    def test_locked_reason_names_what_is_missing_and_what_to_do(self) -> None:
        p = path({"sub"}, scores={"add": score("add", 2.5), "sub": score("sub", 3.5)})
        m2 = p.gates[1]
        assert m2.missing == (MissingCompetency("add", "Adding fractions", "m1", "Unit 1", 2.5, 3.0),)
        assert m2.message == "Locked until you master Adding fractions (from Unit 1)."
        assert m2.next_step == "Next: work on Adding fractions in Unit 1 (2.5 of 3 points so far)."
        assert not m2.opened_by_mastery

    def test_locked_without_evidence(self) -> None:
        m3 = path(set()).gates[2]
        assert m3.message == "Locked until you master Multiplying fractions and Dividing fractions (from Unit 2)."
        assert m3.next_step == "Next: work on Multiplying fractions in Unit 2 (no evidence yet)."

    def test_long_lists_are_shortened(self) -> None:
        a = Module("a", "A", 1, (), tuple("pqrst"))
        b = Module("b", "B", 2, ("a",))
        gate = evaluate_path("s1", build_graph([a, b]), set()).gates[1]
        assert gate.message == "Locked until you master p, q, r and 2 more (from A)."

    def test_prerequisites_mastered_open_the_next_module(self) -> None:
        p = path({"add", "sub"})
        assert states(p)["m1"] == (GateStatus.COMPLETE, GateReason.MASTERED)
        assert states(p)["m2"] == (GateStatus.OPEN, GateReason.PREREQUISITES_MASTERED)
        assert p.gates[1].opened_by_mastery
        assert p.gates[1].message == "You have mastered what the modules before this one require."
        assert p.next_module_id == "m2"

    def test_opened_by_mastery_stays_open_after_a_lower_score(self) -> None:
        p = path({"sub"}, previously_opened={"m2"})
        assert states(p)["m2"] == (GateStatus.OPEN, GateReason.STAYS_OPEN)
        assert p.gates[1].opened_by_mastery
        assert "stays open" in p.gates[1].message

    def test_teacher_closes_even_when_mastered(self) -> None:
        close = GateOverride("s1", "m2", OverrideKind.CLOSED_BY_TEACHER, by="t1")
        p = path({"add", "sub", "mul", "div"}, overrides=[close], previously_opened={"m2"})
        gate = p.gates[1]
        assert (gate.status, gate.reason) == (GateStatus.LOCKED, GateReason.CLOSED_BY_TEACHER)
        assert not gate.opened_by_mastery  # closing ends the stickiness
        assert gate.message == "Your teacher has closed this module for now."
        assert gate.next_step == "Ask your teacher what to work on before it reopens."

    def test_shown_mastery_another_way(self) -> None:
        p = path(set(), overrides=[GateOverride("s1", "m2", OverrideKind.SHOWN_MASTERY)])
        assert states(p)["m2"] == (GateStatus.OPEN, GateReason.SHOWN_MASTERY)
        assert not p.gates[1].opened_by_mastery
        assert p.gates[1].message == "Your teacher opened this module: you have shown mastery another way."

    def test_accommodation(self) -> None:
        p = path(set(), overrides=[GateOverride("s1", "m3", OverrideKind.ACCOMMODATION)])
        assert states(p)["m3"] == (GateStatus.OPEN, GateReason.ACCOMMODATION)

    def test_latest_override_wins(self) -> None:
        close = GateOverride("s1", "m2", OverrideKind.CLOSED_BY_TEACHER, at=T)
        reopen = GateOverride("s1", "m2", OverrideKind.SHOWN_MASTERY, at=T + timedelta(hours=1))
        undated = GateOverride("s1", "m2", OverrideKind.ACCOMMODATION)
        assert states(path(set(), overrides=[reopen, close, undated]))["m2"][1] is GateReason.SHOWN_MASTERY
        assert effective_overrides([close, reopen])["m2"] is reopen
        assert effective_overrides([undated, close])["m2"] is close
        tie = GateOverride("s1", "m2", OverrideKind.ACCOMMODATION, at=T)
        assert effective_overrides([close, tie])["m2"] is tie

    def test_overrides_as_a_mapping(self) -> None:
        close = GateOverride("s1", "m1", OverrideKind.CLOSED_BY_TEACHER)
        assert path(set(), overrides={"m1": close}).gates[0].status is GateStatus.LOCKED

    def test_skip_ahead_by_showing_mastery(self) -> None:
        # unit 2 is locked (unit 1 not mastered) but the student masters unit 2's own competencies
        p = path({"mul", "div"})
        m2, m3 = p.gates[1], p.gates[2]
        assert (m2.status, m2.reason, m2.skipped) == (GateStatus.COMPLETE, GateReason.MASTERED, True)
        assert m2.message == "You already show mastery of this module, so you can move ahead."
        assert m3.status is GateStatus.OPEN  # what unit 3 needs is mastered
        assert p.next_module_id == "m1"  # unit 1 is still open and not mastered

    def test_mastered_when_opened_normally(self) -> None:
        gate = path({"add", "sub"}).gates[0]
        assert not gate.skipped and gate.message == "You have mastered every competency in this module."

    def test_modules_without_competencies(self) -> None:
        intro = Module("intro", "Welcome", 1)
        unit = Module("unit", "Unit", 2, ("intro",), ("add",))
        graph = build_graph([intro, unit])
        p = evaluate_path("s1", graph, set())
        assert states(p) == {
            "intro": (GateStatus.OPEN, GateReason.NO_PREREQUISITES),
            "unit": (GateStatus.OPEN, GateReason.PREREQUISITES_MASTERED),  # nothing to master before it
        }
        p = evaluate_path("s1", graph, set(), completed={"intro"})
        assert states(p)["intro"] == (GateStatus.COMPLETE, GateReason.COMPLETED)
        assert p.gates[0].message == "You have completed this module."

    def test_lms_completion_does_not_complete_a_module_with_competencies(self) -> None:
        assert path(set(), completed={"m1"}).gates[0].status is GateStatus.OPEN

    def test_mastered_may_be_any_collection(self) -> None:
        assert states(path(["add", "sub"]))["m2"][0] is GateStatus.OPEN  # type: ignore[arg-type]


class TestPath:
    def test_no_modules(self) -> None:
        p = evaluate_path("s1", build_graph([]), set())
        assert p.gates == () and p.next_module_id is None
        assert p.next_step == "There are no modules yet."

    def test_everything_complete(self) -> None:
        p = path({"add", "sub", "mul", "div", "dec"})
        assert {g.status for g in p.gates} == {GateStatus.COMPLETE}
        assert p.next_module_id is None and p.next_step == "You have completed every module."

    def test_only_locked_modules_left(self) -> None:
        close = GateOverride("s1", "m1", OverrideKind.CLOSED_BY_TEACHER)
        p = path(set(), overrides=[close])
        assert p.next_module_id == "m1"
        assert p.next_step == "Ask your teacher what to work on before it reopens."

    def test_locked_next_module_explains_itself(self) -> None:
        close = GateOverride("s1", "m1", OverrideKind.CLOSED_BY_TEACHER)
        p = path({"add", "sub", "mul", "div"}, overrides=[close])
        assert p.next_module_id == "m3" and p.next_step == "Next: continue with Unit 3."
        locked = path({"add", "sub", "mul"}, overrides=[GateOverride("s1", "m2", OverrideKind.CLOSED_BY_TEACHER)])
        assert locked.next_module_id == "m2"


class TestCheckPosts:
    CHECK = MasteryCheck("check-1", ("m2",), 1.0)

    def test_post_full_score_when_the_gate_opens(self) -> None:
        p = path({"add", "sub"})
        assert plan_check_posts(p, [self.CHECK], {}) == [
            CheckPost("s1", "check-1", 1.0, 1.0, "m2 is open (prerequisites_mastered)")
        ]
        assert plan_check_posts(p, [self.CHECK], {"check-1": 0.5})[0].score == 1.0

    def test_nothing_when_already_posted(self) -> None:
        assert plan_check_posts(path({"add", "sub"}), [self.CHECK], {"check-1": 1.0}) == []

    def test_never_a_lower_score_that_would_relock(self) -> None:
        # the student slipped below mastery and the module was never opened: still never post lower
        assert plan_check_posts(path({"sub"}), [self.CHECK], {"check-1": 1.0}) == []
        assert plan_check_posts(path({"sub"}), [self.CHECK], {}) == []

    def test_sticky_gate_keeps_its_score(self) -> None:
        p = path({"sub"}, previously_opened={"m2"})
        assert plan_check_posts(p, [self.CHECK], {"check-1": 1.0}) == []

    def test_teacher_close_posts_zero(self) -> None:
        close = GateOverride("s1", "m2", OverrideKind.CLOSED_BY_TEACHER)
        p = path({"add", "sub"}, overrides=[close])
        assert plan_check_posts(p, [self.CHECK], {"check-1": 1.0}) == [
            CheckPost("s1", "check-1", 0.0, 1.0, "closed by teacher")
        ]
        assert plan_check_posts(p, [self.CHECK], {}) == []
        assert plan_check_posts(p, [self.CHECK], {"check-1": 0.0}) == []

    def test_overrides_open_the_lms_too(self) -> None:
        p = path(set(), overrides=[GateOverride("s1", "m2", OverrideKind.ACCOMMODATION)])
        assert plan_check_posts(p, [self.CHECK], {})[0].reason == "m2 is open (accommodation)"

    def test_check_for_several_modules(self) -> None:
        check = MasteryCheck("check-2", ("m2", "m3"), 10.0)
        close = GateOverride("s1", "m3", OverrideKind.CLOSED_BY_TEACHER)
        p = path({"add", "sub"}, overrides=[close])
        assert plan_check_posts(p, [check], {}) == [
            CheckPost("s1", "check-2", 10.0, 10.0, "m2 is open (prerequisites_mastered)")
        ]
        assert plan_check_posts(path(set()), [check], {"check-2": 10.0}) == []

    def test_unknown_modules_post_nothing(self) -> None:
        assert plan_check_posts(path(set()), [MasteryCheck("x", ("nope",))], {"x": 1.0}) == []


# --------------------------------------------------------------------------- properties

ids = [c.id for c in COMPETENCIES]
subsets = st.sets(st.sampled_from(ids))


@st.composite
def graphs(draw: st.DrawFn) -> list[Module]:
    count = draw(st.integers(min_value=0, max_value=6))
    modules = []
    for i in range(count):
        prerequisites = tuple(f"m{j}" for j in sorted(draw(st.sets(st.integers(0, i - 1))))) if i else ()
        owned = tuple(draw(st.sets(st.sampled_from(ids), max_size=3)))
        modules.append(Module(f"m{i}", f"Unit {i}", i, prerequisites, owned))
    return modules


class TestProperties:
    @given(graphs(), subsets, subsets)
    def test_more_mastery_never_locks_a_module(self, modules: list[Module], a: set[str], b: set[str]) -> None:
        graph = build_graph(modules)
        before = evaluate_path("s1", graph, a)
        after = evaluate_path("s1", graph, a | b)
        for old, new in zip(before.gates, after.gates, strict=True):
            if old.status is not GateStatus.LOCKED:
                assert new.status is not GateStatus.LOCKED

    @given(graphs(), subsets, subsets)
    def test_opened_by_mastery_fed_back_keeps_modules_open(
        self, modules: list[Module], first: set[str], later: set[str]
    ) -> None:
        graph = build_graph(modules)
        earlier = evaluate_path("s1", graph, first)
        sticky = {g.module_id for g in earlier.gates if g.opened_by_mastery}
        now = evaluate_path("s1", graph, later, previously_opened=sticky)
        for old, new in zip(earlier.gates, now.gates, strict=True):
            if old.opened_by_mastery:
                assert new.status is not GateStatus.LOCKED

    @given(graphs(), subsets)
    def test_every_gate_explains_itself(self, modules: list[Module], mastered: set[str]) -> None:
        p = evaluate_path("s1", build_graph(modules), mastered)
        for gate in p.gates:
            assert gate.message
            assert (gate.status is GateStatus.LOCKED) == bool(gate.missing)
            assert bool(gate.next_step) == (gate.status is GateStatus.LOCKED)
        assert p.next_step
        if p.next_module_id is not None:
            assert p.next_module_id in {g.module_id for g in p.gates if g.status is not GateStatus.COMPLETE}

    @given(graphs(), subsets)
    def test_posts_only_ever_raise_or_explicitly_close(self, modules: list[Module], mastered: set[str]) -> None:
        p = evaluate_path("s1", build_graph(modules), mastered)
        checks = [MasteryCheck(f"c-{m.id}", (m.id,)) for m in modules]
        for posted_value in (None, 0.0, 0.5, 1.0):
            posted = {c.activity_id: posted_value for c in checks}
            for post in plan_check_posts(p, checks, posted):
                assert posted_value is None or post.score > posted_value


@pytest.mark.parametrize("reason", list(GateReason))
def test_every_reason_has_wording(reason: GateReason) -> None:
    from plugin.learning.gating import _MESSAGES

    assert _MESSAGES[reason]


def test_prerequisite_cycles_do_not_hang() -> None:
    a = Module("a", "A", 1, ("b",), ("x",))
    b = Module("b", "B", 2, ("a",), ("y",))
    graph = build_graph([a, b])
    assert [g.status for g in evaluate_path("s1", graph, set()).gates] == [GateStatus.LOCKED, GateStatus.LOCKED]
    assert [g.status for g in evaluate_path("s1", graph, {"y"}).gates] == [GateStatus.OPEN, GateStatus.COMPLETE]
    assert find_dropped_prerequisites([a, b]) == [("a", "b")]


def test_shared_states_are_equal_to_fresh_ones() -> None:
    first = evaluate_path("s1", GRAPH, set())
    again = evaluate_path("s2", GRAPH, set())
    assert first.gates == again.gates and first.gates[2] is again.gates[2]
    assert evaluate_path("s1", build_graph([M1, M2, M3], COMPETENCIES), set()).gates == first.gates
