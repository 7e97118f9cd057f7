"""The one-pass pipeline over a class's plain data."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest

from plugin.learning._records import positional_constructor
from plugin.learning.alerts import Alert, AlertKind
from plugin.learning.gating import (
    GateOverride,
    GateReason,
    GateStatus,
    MasteryCheck,
    Module,
    OverrideKind,
    build_graph,
    evaluate_path,
)
from plugin.learning.mastery import Competency, Evidence, MasteryScore, calculate_score
from plugin.learning.pace import Accommodation, PaceState, build_plan
from plugin.learning.profile import EntryKind, ProfileEntry
from plugin.learning.recompute import ClassData, LearningSettings, recompute_class, recompute_classes

NOW = datetime(2025, 9, 20, 18, tzinfo=UTC)
TODAY = NOW.date()
START, END = date(2025, 9, 1), date(2025, 9, 30)


def at(day: int, hour: int = 10) -> datetime:
    return datetime(2025, 9, day, hour, tzinfo=UTC)


COMPETENCIES = (
    Competency("k1", "Place value", points_possible=4.0, mastery_points=3.0, calculation_method="highest"),
    Competency("k2", "Rounding", points_possible=4.0, mastery_points=3.0, calculation_method="latest"),
    Competency("k3", "Adding", points_possible=4.0, mastery_points=3.0, calculation_method="average"),
    Competency("k4", "Subtracting", points_possible=4.0, mastery_points=3.0,
               calculation_method="standard_decaying_average", calculation_int=65),
)
MODULES = (
    Module("intro", "Welcome", 1),
    Module("m1", "Numbers", 2, ("intro",), ("k1", "k2")),
    Module("m2", "Operations", 3, ("m1",), ("k3", "k4")),
)
PLAN = build_plan("c1", START, END, ["m1", "m2"])  # due Sep 15 and Sep 30


def e(student: str, cid: str | None, percent: float, when: datetime, activity: str | None = None) -> Evidence:
    return Evidence(student, cid, percent * 10, percent, submitted_at=when, activity_id=activity)


EVIDENCE = {
    # ana: masters unit 1 (k1 via the aligned quiz), then works on unit 2
    "ana": [
        e("ana", None, 0.9, at(5), activity="quiz-1"),  # aligned to k1 and k2 → 3.6 each
        e("ana", "k2", 0.5, at(8)),  # later and lower: latest for k2 is 2.0 …
        e("ana", "k2", 0.8, at(12)),  # … until this 3.2
        e("ana", "k3", 0.25, at(18)),
        Evidence("ana", "k3", None, submitted_at=at(19)),  # no score: dropped
    ],
    # ben: nothing mastered yet
    "ben": [e("ben", "k1", 0.5, at(6)), e("ben", "unknown", 1.0, at(6)), e("ben", None, 1.0, at(6), "nowhere")],
    "gone": [e("gone", "k1", 1.0, at(6))],  # not enrolled any more
}


def data(**kw: object) -> ClassData:
    base: dict[str, object] = {
        "class_id": "c1",
        "student_ids": ("ana", "ben", "cy"),
        "competencies": COMPETENCIES,
        "modules": MODULES,
        "evidence": EVIDENCE,
        "alignments": {"quiz-1": ("k1", "k2")},
        "pace_plan": PLAN,
    }
    base.update(kw)
    return ClassData(**base)  # type: ignore[arg-type]


def run(**kw: object) -> object:
    return recompute_class(data(**kw), today=TODAY, now=NOW)


class TestMastery:
    def test_scores_match_the_single_competency_rules(self) -> None:
        result = recompute_class(data(), today=TODAY, now=NOW)
        ana = result.mastery["ana"]
        assert ana["k1"] == MasteryScore("ana", "k1", 3.6, 1, True, at(5))
        assert ana["k2"] == MasteryScore("ana", "k2", 3.2, 3, True, at(12))
        assert ana["k3"] == MasteryScore("ana", "k3", 1.0, 1, False, at(18))
        for cid, score in ana.items():
            competency = next(c for c in COMPETENCIES if c.id == cid)
            rows = [
                r for r in EVIDENCE["ana"]
                if r.competency_id == cid or (r.activity_id == "quiz-1" and cid in ("k1", "k2"))
            ]
            assert score.score == calculate_score(competency, rows)

    def test_unknown_competencies_activities_and_students_are_ignored(self) -> None:
        result = recompute_class(data(), today=TODAY, now=NOW)
        assert set(result.mastery["ben"]) == {"k1"}
        assert "gone" not in result.mastery and "gone" not in result.paths
        assert "cy" not in result.mastery and "cy" in result.paths  # enrolled, no evidence

    def test_class_means(self) -> None:
        result = recompute_class(data(), today=TODAY, now=NOW)
        assert result.class_means == {"k1": 2.8, "k2": 3.2, "k3": 1.0, "k4": None}  # k1: (3.6 + 2.0) / 2

    def test_flag_for_the_new_decaying_average(self) -> None:
        rows = {"ana": [e("ana", "k4", p, at(d)) for p, d in [(0.5, 2), (0.75, 3), (1.0, 4)]]}
        old = recompute_class(data(evidence=rows), today=TODAY, now=NOW)
        new = recompute_class(
            data(evidence=rows), today=TODAY, now=NOW, settings=LearningSettings(new_decaying_average=True)
        )
        # 2, 3, 4 → weighted 4 × .65 + 2.5 × .35 = 3.475 → 3.48; iterative → 3.5275 → 3.53
        assert old.mastery["ana"]["k4"].score == 3.48
        assert new.mastery["ana"]["k4"].score == 3.53

    def test_invalid_calculation_is_reported_and_skipped(self) -> None:
        broken = (*COMPETENCIES[:3], dataclasses.replace(COMPETENCIES[3], calculation_method="n_mastery",
                                                          calculation_int=42))
        rows = {"ana": [e("ana", "k4", 1.0, at(2)), e("ana", "k1", 1.0, at(2))]}
        result = recompute_class(data(competencies=broken, evidence=rows), today=TODAY, now=NOW)
        assert set(result.mastery["ana"]) == {"k1"}
        assert len(result.problems) == 1 and "competency k4: calculation_int 42" in result.problems[0]


class TestGatesAndPace:
    def test_paths(self) -> None:
        result = recompute_class(data(), today=TODAY, now=NOW)
        ana = {g.module_id: (g.status, g.reason) for g in result.paths["ana"].gates}
        assert ana == {
            "intro": (GateStatus.OPEN, GateReason.NO_PREREQUISITES),
            "m1": (GateStatus.COMPLETE, GateReason.MASTERED),
            "m2": (GateStatus.OPEN, GateReason.PREREQUISITES_MASTERED),
        }
        graph = build_graph(MODULES, COMPETENCIES)
        ben = result.mastery["ben"]
        assert result.paths["ben"] == evaluate_path("ben", graph, {c for c, s in ben.items() if s.mastered}, scores=ben)
        assert result.paths["ben"].gates[2].next_step == "Next: work on Place value in Numbers (2 of 3 points so far)."

    def test_overrides_and_stickiness(self) -> None:
        result = run(
            overrides=(GateOverride("ben", "m2", OverrideKind.SHOWN_MASTERY),
                       GateOverride("ana", "m2", OverrideKind.CLOSED_BY_TEACHER)),
            previously_opened={"cy": frozenset({"m2"})},
        )
        assert result.paths["ben"].gates[2].reason is GateReason.SHOWN_MASTERY  # type: ignore[attr-defined]
        assert result.paths["ana"].gates[2].status is GateStatus.LOCKED  # type: ignore[attr-defined]
        assert result.paths["cy"].gates[2].reason is GateReason.STAYS_OPEN  # type: ignore[attr-defined]

    def test_completion_days(self) -> None:
        result = run(lms_completed={"ben": {"intro": date(2025, 9, 2)}}, completed_on={"ana": {"m1": date(2025, 9, 9)}})
        assert result.completed_on["ben"] == {"intro": date(2025, 9, 2)}  # type: ignore[attr-defined]
        assert result.completed_on["ana"] == {"m1": date(2025, 9, 9)}  # type: ignore[attr-defined]
        fresh = run()
        assert fresh.completed_on["ana"] == {"m1": date(2025, 9, 12)}  # type: ignore[attr-defined]  # latest evidence
        assert fresh.completed_on["cy"] == {}  # type: ignore[attr-defined]

    def test_pace(self) -> None:
        late = TODAY + timedelta(days=20)  # Oct 10: both modules overdue
        result = recompute_class(data(accommodations={"ben": Accommodation("ben", extra_days=30)}), today=late, now=NOW)
        assert result.pace["ana"].state is PaceState.BEHIND and result.pace["ana"].completed == 1
        assert result.pace["ana"].modules_behind == 1
        assert result.pace["cy"].modules_behind == 2
        assert result.pace["ben"].state is PaceState.ON_TRACK and result.pace["ben"].accommodated

    def test_without_a_plan(self) -> None:
        existing = Alert("ben", "c1", AlertKind.BEHIND, 1, NOW, NOW, "old")
        result = run(pace_plan=None, open_alerts=(existing,))
        assert result.pace == {} and result.alerts.to_resolve == ()  # type: ignore[attr-defined]


class TestAlertsProfilesChecks:
    def test_alerts(self) -> None:
        late = date(2025, 9, 17)  # m1 due Sep 15: ana done, ben and cy behind
        existing = (
            Alert("ana", "c1", AlertKind.BEHIND, 1, NOW - timedelta(days=3), NOW, "old", id="a-ana"),
            Alert("cy", "c1", AlertKind.BEHIND, 1, NOW - timedelta(days=12), NOW, "old", id="a-cy"),  # 9 days before
        )
        result = recompute_class(data(open_alerts=existing), today=late, now=NOW)
        assert [(a.student_id, a.kind) for a in result.alerts.to_open] == [("ben", AlertKind.BEHIND)]
        assert [(a.id, a.level) for a in result.alerts.to_update] == [("a-cy", 2)]
        assert [a.id for a in result.alerts.to_resolve] == ["a-ana"]

    def test_profiles(self) -> None:
        note = ProfileEntry("n1", "ana", EntryKind.INTEREST, "Chess", "ana", "student", NOW)
        result = run(entries={"ana": (note,)})
        ana = result.profiles["ana"]  # type: ignore[attr-defined]
        assert ana.gaps == ("k3",) and ana.unassessed == ("k4",)
        assert ana.strengths == ("k1",)  # 3.6 vs class mean 2.8; k2 equals its mean
        assert ana.weaknesses == ()  # k3 equals the class mean (ana is the only one with it)
        assert [i.text for i in ana.interests] == ["Chess"]
        assert result.profiles["cy"].skills == ()  # type: ignore[attr-defined]

    def test_check_posts(self) -> None:
        result = run(checks=(MasteryCheck("check-m2", ("m2",)),), posted={"ben": {"check-m2": None}})
        assert [(p.student_id, p.score) for p in result.check_posts] == [("ana", 1.0)]  # type: ignore[attr-defined]


class TestEdges:
    def test_empty_class(self) -> None:
        result = recompute_class(
            ClassData("c0", (), (), (), {}), today=TODAY, now=NOW
        )
        assert (result.mastery, result.paths, result.pace, result.profiles) == ({}, {}, {}, {})
        assert result.problems == ()

    def test_students_but_no_modules_or_competencies(self) -> None:
        plan = build_plan("c0", START, END, [])
        rows = {"ana": [e("ana", "k1", 1.0, at(2))]}
        result = recompute_class(ClassData("c0", ("ana",), (), (), rows, pace_plan=plan), today=TODAY, now=NOW)
        assert result.mastery == {} and result.paths["ana"].next_module_id is None
        assert result.pace["ana"].total == 0 and result.alerts.to_open == ()

    def test_unknown_prerequisite_reported(self) -> None:
        result = run(modules=(*MODULES, Module("m3", "Extra", 4, ("m9",))))
        assert result.problems == ("module m3: unknown prerequisite m9",)  # type: ignore[attr-defined]

    def test_deterministic(self) -> None:
        assert run() == run()

    def test_many_classes(self) -> None:
        results = list(recompute_classes([data(), data(class_id="c2")], today=TODAY, now=NOW))
        assert [r.class_id for r in results] == ["c1", "c2"]


class TestPositionalConstructor:
    def test_same_record_as_the_dataclass_builds(self) -> None:
        make = positional_constructor(MasteryScore)
        built = make("s", "k", 2.5, 3, False, NOW)
        assert built == MasteryScore("s", "k", 2.5, 3, False, NOW)
        assert hash(built) == hash(MasteryScore("s", "k", 2.5, 3, False, NOW))
        assert repr(built) == repr(MasteryScore("s", "k", 2.5, 3, False, NOW))
        with pytest.raises(dataclasses.FrozenInstanceError):
            built.score = 3.0  # type: ignore[misc]

    def test_every_field_is_required(self) -> None:
        with pytest.raises(TypeError):
            positional_constructor(MasteryScore)("s", "k")


# --------------------------------------------------------------------------- the pipeline agrees with rollup()

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from plugin.learning.mastery import rollup  # noqa: E402

PROPERTY_COMPETENCIES = (
    Competency("h", calculation_method="highest", points_possible=4.0, mastery_points=3.0),
    Competency("l", calculation_method="latest", points_possible=4.0, mastery_points=3.0),
    Competency("a", calculation_method="average", points_possible=0.0, mastery_points=3.0),
    Competency("n", calculation_method="n_mastery", calculation_int=2, points_possible=4.0, mastery_points=3.0),
    Competency("w", calculation_method="decaying_average", calculation_int=70, points_possible=4.0,
               mastery_points=3.0),
    Competency("d", calculation_method="standard_decaying_average", calculation_int=60, points_possible=4.0,
               mastery_points=3.0),
)
ALIGNED = {"act-1": ("h", "d"), "act-2": ("l", "w", "n")}
moments = st.one_of(
    st.none(),
    st.sampled_from([at(3), at(3).replace(microsecond=250_000), at(3).replace(microsecond=900_000), at(4)]),
    st.sampled_from([datetime(2025, 9, 3, 10), datetime(2025, 9, 3, 11)]),  # naive: treated as UTC
)


@st.composite
def evidence_rows(draw: st.DrawFn) -> list[Evidence]:
    rows = []
    for i in range(draw(st.integers(0, 14))):
        target = draw(st.sampled_from(["h", "l", "a", "n", "w", "d", "act-1", "act-2", "gone"]))
        percent = draw(st.none() | st.integers(0, 20).map(lambda k: k / 20))
        score = draw(st.none() | st.integers(0, 40).map(lambda k: k / 10))
        quiz = draw(st.sampled_from([None, None, "q1", "q2"]))
        rows.append(
            Evidence(
                "s1",
                None if target.startswith("act") else target,
                score,
                percent,
                submitted_at=draw(moments),
                assessed_at=draw(moments),
                activity_id=target if target.startswith("act") else None,
                result_id=f"r{i}",
                quiz_key=quiz,
                possible=draw(st.sampled_from([None, 1.0, 2.0])) if quiz else None,
            )
        )
    return rows


@settings(max_examples=150)
@given(evidence_rows(), st.booleans())
def test_pipeline_scores_equal_single_rollups(rows: list[Evidence], new_decaying_average: bool) -> None:
    class_data = ClassData("c1", ("s1",), PROPERTY_COMPETENCIES, (), {"s1": rows}, alignments=ALIGNED)
    result = recompute_class(
        class_data, today=TODAY, now=NOW, settings=LearningSettings(new_decaying_average=new_decaying_average)
    )
    for competency in PROPERTY_COMPETENCIES:
        mine = [
            r for r in rows
            if r.competency_id == competency.id or competency.id in ALIGNED.get(r.activity_id or "", ())
        ]
        expected = rollup("s1", competency, mine, new_decaying_average=new_decaying_average)
        assert result.mastery.get("s1", {}).get(competency.id) == expected
