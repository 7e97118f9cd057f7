"""One pass over a class's plain data: mastery, gates, pace, alert changes and profile snapshots.

Linear in evidence rows and students: evidence is indexed by student and competency once, every other step
works per student on that student's own scores. Between runs the caller keeps three things and passes them
back: the modules whose gate has ``opened_by_mastery`` (as ``previously_opened``), the days modules became
complete (``completed_on``) and the open alerts after applying ``alerts``; each run's profile snapshots are
the profile's history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from types import MappingProxyType
from typing import Any, NamedTuple

from plugin.learning._records import positional_constructor
from plugin.learning.alerts import Alert, AlertChanges, EscalationPolicy, reconcile
from plugin.learning.gating import (
    CheckPost,
    GateOverride,
    GateReason,
    GateStatus,
    MasteryCheck,
    Module,
    StudentPath,
    build_graph,
    effective_overrides,
    evaluate_path,
    plan_check_posts,
)
from plugin.learning.mastery import (
    Calculation,
    Competency,
    Evidence,
    MasteryScore,
    Vocabulary,
    aggregate_scores,
    calculation_for,
    latest_time,
    score_in_order,
    sort_in_time_order,
)
from plugin.learning.pace import Accommodation, PacePlan, PaceStatus, assess_pace
from plugin.learning.profile import ProfileEntry, ProfileSnapshot, build_profile, profile_basis


@dataclass(frozen=True, slots=True)
class LearningSettings:
    """District or course settings the rules depend on."""

    new_decaying_average: bool = False  # Canvas's outcomes_new_decaying_average_calculation
    vocabulary: Vocabulary = Vocabulary.STORED
    far_ahead: int = 2
    velocity_window_days: int = 14
    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)
    profile_top: int = 3


@dataclass(frozen=True, slots=True)
class ClassData:
    """Everything the rules need about one class, as plain data."""

    class_id: str
    student_ids: tuple[str, ...]
    competencies: tuple[Competency, ...]
    modules: tuple[Module, ...]
    evidence: Mapping[str, Sequence[Evidence]]  # student → results (outcome results or aligned activity scores)
    alignments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # activity → competencies
    pace_plan: PacePlan | None = None
    accommodations: Mapping[str, Accommodation] = field(default_factory=dict)
    overrides: Sequence[GateOverride] = ()
    previously_opened: Mapping[str, frozenset[str]] = field(default_factory=dict)  # student → modules
    lms_completed: Mapping[str, Mapping[str, date | None]] = field(default_factory=dict)  # student → module → day
    completed_on: Mapping[str, Mapping[str, date]] = field(default_factory=dict)  # known completion days
    open_alerts: Sequence[Alert] = ()
    entries: Mapping[str, Sequence[ProfileEntry]] = field(default_factory=dict)
    checks: Sequence[MasteryCheck] = ()
    posted: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)  # student → check → score


@dataclass(frozen=True, slots=True)
class ClassResult:
    """What the rules concluded for one class; the caller stores it and sends the writes."""

    class_id: str
    mastery: Mapping[str, Mapping[str, MasteryScore]]  # student → competency → score (only with evidence)
    class_means: Mapping[str, float | None]  # competency → Canvas-style course mean
    paths: Mapping[str, StudentPath]
    completed_on: Mapping[str, Mapping[str, date]]  # student → complete module → day it became complete
    pace: Mapping[str, PaceStatus]  # empty without a pace plan
    alerts: AlertChanges
    profiles: Mapping[str, ProfileSnapshot]
    check_posts: tuple[CheckPost, ...] = ()
    problems: tuple[str, ...] = ()  # competencies skipped for an invalid calculation, unknown prerequisites


_new_score = positional_constructor(MasteryScore)
_NOTHING: Mapping[str, Any] = MappingProxyType({})
_NONE: frozenset[str] = frozenset()


class _Spec(NamedTuple):
    calculation: Calculation
    points_possible: float
    mastery_points: float


def recompute_class(
    data: ClassData, *, today: date, now: datetime, settings: LearningSettings | None = None
) -> ClassResult:
    """Run every rule for one class and return the results."""
    settings = settings or LearningSettings()
    problems: list[str] = []
    specs: dict[str, _Spec] = {}
    for competency in data.competencies:
        try:
            calculation = calculation_for(
                competency, new_decaying_average=settings.new_decaying_average, vocabulary=settings.vocabulary
            )
        except ValueError as error:
            problems.append(f"competency {competency.id}: {error}")
            continue
        specs[competency.id] = _Spec(calculation, competency.points_possible, competency.mastery_points)

    mastery = _score_students(data, specs)

    by_competency: dict[str, list[float | None]] = {cid: [] for cid in specs}
    for student_scores in mastery.values():
        for cid, score in student_scores.items():
            by_competency[cid].append(score.score)
    class_means = {cid: aggregate_scores(values) for cid, values in by_competency.items()}

    basis = profile_basis(data.competencies, class_means)
    graph = build_graph(data.modules, data.competencies)
    problems.extend(f"module {m}: unknown prerequisite {p}" for m, p in graph.unknown_prerequisites)
    overrides_by_student: dict[str, list[GateOverride]] = {}
    for override in data.overrides:
        overrides_by_student.setdefault(override.student_id, []).append(override)
    in_effect = {student_id: effective_overrides(found) for student_id, found in overrides_by_student.items()}

    plan = data.pace_plan
    paths: dict[str, StudentPath] = {}
    completed_on: dict[str, dict[str, date]] = {}
    pace: dict[str, PaceStatus] = {}
    profiles: dict[str, ProfileSnapshot] = {}
    posts: list[CheckPost] = []
    for student_id in data.student_ids:
        scores: Mapping[str, MasteryScore] = mastery.get(student_id, _NOTHING)
        mastered = {cid for cid, score in scores.items() if score.mastered}
        lms_completed = data.lms_completed.get(student_id, _NOTHING)
        path = evaluate_path(
            student_id,
            graph,
            mastered,
            scores=scores,
            overrides=in_effect.get(student_id, _NOTHING),
            previously_opened=data.previously_opened.get(student_id, _NONE),
            completed=lms_completed,
        )
        paths[student_id] = path
        done = _completion_days(
            path, graph.by_id, scores, data.completed_on.get(student_id, _NOTHING), lms_completed, today
        )
        completed_on[student_id] = done
        if plan is not None:
            pace[student_id] = assess_pace(
                plan,
                student_id,
                done,
                today,
                accommodation=data.accommodations.get(student_id),
                far_ahead=settings.far_ahead,
                window_days=settings.velocity_window_days,
            )
        profiles[student_id] = build_profile(
            student_id,
            data.competencies,
            scores,
            now=now,
            entries=data.entries.get(student_id, ()),
            class_means=class_means,
            top=settings.profile_top,
            basis=basis,
        )
        if data.checks:
            posts.extend(plan_check_posts(path, data.checks, data.posted.get(student_id, _NOTHING)))

    alerts = reconcile(data.open_alerts, pace.values(), now, today=today, policy=settings.escalation)
    return ClassResult(
        class_id=data.class_id,
        mastery=mastery,
        class_means=class_means,
        paths=paths,
        completed_on=completed_on,
        pace=pace,
        alerts=alerts,
        profiles=profiles,
        check_posts=tuple(posts),
        problems=tuple(problems),
    )


def recompute_classes(
    classes: Iterable[ClassData], *, today: date, now: datetime, settings: LearningSettings | None = None
) -> Iterator[ClassResult]:
    """Recompute classes one after another (each class is independent)."""
    for data in classes:
        yield recompute_class(data, today=today, now=now, settings=settings)


def _score_students(data: ClassData, specs: Mapping[str, _Spec]) -> dict[str, dict[str, MasteryScore]]:
    """Put each enrolled student's results in time order once, split them by competency, roll each up."""
    alignments = data.alignments
    mastery: dict[str, dict[str, MasteryScore]] = {}
    for student_id in data.student_ids:
        rows = data.evidence.get(student_id)
        if not rows:
            continue
        buckets: defaultdict[str, list[Evidence]] = defaultdict(list)
        quizzes = False
        whole_seconds = True  # every result has a submission time in whole seconds
        for row in rows:
            if row.score is None:
                continue
            if row.quiz_key is not None:
                quizzes = True
            moment = row.submitted_at
            if moment is None or moment.microsecond:
                whole_seconds = False
            cid = row.competency_id
            if cid is not None:
                buckets[cid].append(row)
            elif row.activity_id is not None:
                for aligned in alignments.get(row.activity_id, ()):
                    buckets[aligned].append(row)
        scores: dict[str, MasteryScore] = {}
        for cid, bucket in buckets.items():
            spec = specs.get(cid)
            if spec is None:
                continue
            calculation, points_possible, mastery_points = spec
            if len(bucket) > 1:
                sort_in_time_order(bucket, whole_seconds=whole_seconds)
            score = score_in_order(calculation, points_possible, mastery_points, bucket, quizzes)
            mastered = score is not None and score >= mastery_points
            scores[cid] = _new_score(student_id, cid, score, len(bucket), mastered, latest_time(bucket[-1]))
        if scores:
            mastery[student_id] = scores
    return mastery


def _completion_days(
    path: StudentPath,
    modules: Mapping[str, Module],
    scores: Mapping[str, MasteryScore],
    known: Mapping[str, date],
    lms_completed: Mapping[str, date | None],
    today: date,
) -> dict[str, date]:
    """Date each complete module: a day already known, else the LMS's, else its latest evidence, else today."""
    done: dict[str, date] = {}
    for gate in path.gates:
        if gate.status is not GateStatus.COMPLETE:
            continue
        module_id = gate.module_id
        day = known.get(module_id)
        if day is None and gate.reason is GateReason.COMPLETED:
            day = lms_completed.get(module_id)
        if day is None:
            latest: datetime | None = None
            for cid in modules[module_id].competency_ids:
                score = scores.get(cid)
                if score is not None and score.latest_at is not None and (latest is None or score.latest_at > latest):
                    latest = score.latest_at
            day = today if latest is None else latest.date()
        done[module_id] = day
    return done
