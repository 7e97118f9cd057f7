"""The learner profile: skills, gaps, strengths and weaknesses derived from evidence, the student's own
interests, aspirations and goals, teachers' notes, and growth over a term from dated snapshots.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from plugin.learning._records import positional_constructor
from plugin.learning.mastery import Competency, MasteryScore, round_score


class EntryKind(enum.StrEnum):
    INTEREST = "interest"
    ASPIRATION = "aspiration"
    GOAL = "goal"
    NOTE = "note"  # a teacher's annotation, optionally on one competency


class GoalStatus(enum.StrEnum):
    ACTIVE = "active"
    ACHIEVED = "achieved"
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """Something a person wrote into a student's profile."""

    id: str
    student_id: str
    kind: EntryKind
    text: str
    authored_by: str
    author_role: str  # student | teacher
    created_at: datetime
    target_date: date | None = None  # goals
    status: GoalStatus | None = None  # goals
    competency_id: str | None = None
    co_authors: tuple[str, ...] = ()  # e.g. the teacher who co-set a goal


@dataclass(frozen=True, slots=True)
class ProfileSnapshot:
    """A student's profile at one moment; a series of them is the profile's history."""

    student_id: str
    taken_at: datetime
    skills: tuple[MasteryScore, ...]  # competencies with evidence, in curriculum order
    gaps: tuple[str, ...]  # competency ids with evidence, not mastered, in curriculum order
    unassessed: tuple[str, ...]  # competency ids without evidence
    strengths: tuple[str, ...]  # best margins above the reference, best first
    weaknesses: tuple[str, ...]  # worst margins below the reference, worst first
    interests: tuple[ProfileEntry, ...] = ()
    aspirations: tuple[ProfileEntry, ...] = ()
    goals: tuple[ProfileEntry, ...] = ()
    notes: tuple[ProfileEntry, ...] = ()


_new_snapshot = positional_constructor(ProfileSnapshot)


@dataclass(frozen=True, slots=True)
class Growth:
    """How one competency's score moved between the first and last snapshots of a period."""

    competency_id: str
    first_score: float | None
    last_score: float | None
    change: float | None
    first_at: datetime
    last_at: datetime
    mastered_at: datetime | None  # the first snapshot in the period showing mastery


def margin(score: float, competency: Competency, reference: float | None = None) -> float:
    """Return how far a score sits above a reference (the class mean, else mastery points), in scale units."""
    base = competency.mastery_points if reference is None else reference
    scale = competency.points_possible if competency.points_possible > 0 else (competency.mastery_points or 1.0)
    return (score - base) / scale


@dataclass(frozen=True, slots=True)
class ProfileBasis:
    """What each competency's score is compared with, prepared once for a class."""

    rows: tuple[tuple[int, str, float, float], ...]  # (curriculum index, competency id, reference, scale)


def profile_basis(
    competencies: Sequence[Competency], class_means: Mapping[str, float | None] | None = None
) -> ProfileBasis:
    """Prepare the references: the class mean for a competency when known, else its mastery points."""
    rows = []
    for index, competency in enumerate(competencies):
        reference = None if class_means is None else class_means.get(competency.id)
        if reference is None:
            reference = competency.mastery_points
        scale = competency.points_possible if competency.points_possible > 0 else (competency.mastery_points or 1.0)
        rows.append((index, competency.id, reference, scale))
    return ProfileBasis(tuple(rows))


def build_profile(
    student_id: str,
    competencies: Sequence[Competency],
    scores: Mapping[str, MasteryScore],
    *,
    now: datetime,
    entries: Iterable[ProfileEntry] = (),
    class_means: Mapping[str, float | None] | None = None,
    top: int = 3,
    basis: ProfileBasis | None = None,
) -> ProfileSnapshot:
    """Derive a profile snapshot from mastery scores and the entries people wrote.

    Strengths and weaknesses compare each score with the class mean for that competency when one is given,
    else with the mastery threshold; up to ``top`` of each, only scores strictly above (strengths) or below
    (weaknesses) their reference. A competency whose rule gives no score yet (n_mastery) is a gap but
    neither a strength nor a weakness. ``basis`` (from :func:`profile_basis` with the same competencies and
    means) saves preparing the comparison for every student of a class.
    """
    if basis is None:
        basis = profile_basis(competencies, class_means)
    skills: list[MasteryScore] = []
    gaps: list[str] = []
    unassessed: list[str] = []
    above: list[tuple[float, int, str]] = []
    below: list[tuple[float, int, str]] = []
    for index, cid, reference, scale in basis.rows:
        score = scores.get(cid)
        if score is None:
            unassessed.append(cid)
            continue
        skills.append(score)
        if not score.mastered:
            gaps.append(cid)
        value = score.score
        if value is None or value == reference:
            continue
        if value > reference:
            above.append(((reference - value) / scale, index, cid))
        else:
            below.append(((value - reference) / scale, index, cid))
    above.sort()
    below.sort()
    written = _by_kind(student_id, entries)
    return _new_snapshot(
        student_id,
        now,
        tuple(skills),
        tuple(gaps),
        tuple(unassessed),
        tuple([m[2] for m in above[:top]]),
        tuple([m[2] for m in below[:top]]),
        *written,
    )


def _by_kind(student_id: str, entries: Iterable[ProfileEntry]) -> tuple[tuple[ProfileEntry, ...], ...]:
    """Split a student's entries into interests, aspirations, goals and notes, oldest first."""
    mine = sorted((e for e in entries if e.student_id == student_id), key=lambda e: e.created_at)
    if not mine:
        return ((), (), (), ())
    return tuple(tuple(e for e in mine if e.kind is kind) for kind in _KINDS)


_KINDS = (EntryKind.INTEREST, EntryKind.ASPIRATION, EntryKind.GOAL, EntryKind.NOTE)


def open_goals(snapshot: ProfileSnapshot, today: date) -> list[tuple[ProfileEntry, bool]]:
    """List active goals with whether each is overdue on ``today``."""
    return [
        (goal, goal.target_date is not None and goal.target_date < today)
        for goal in snapshot.goals
        if goal.status in (None, GoalStatus.ACTIVE)
    ]


def growth(
    snapshots: Iterable[ProfileSnapshot],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Growth]:
    """Compare each competency's first and last score among the snapshots taken in [since, until]."""
    chosen = sorted(
        (s for s in snapshots if (since is None or s.taken_at >= since) and (until is None or s.taken_at <= until)),
        key=lambda s: s.taken_at,
    )
    first: dict[str, tuple[float | None, datetime]] = {}
    last: dict[str, tuple[float | None, datetime]] = {}
    mastered_at: dict[str, datetime] = {}
    for snapshot in chosen:
        for skill in snapshot.skills:
            cid = skill.competency_id
            first.setdefault(cid, (skill.score, snapshot.taken_at))
            last[cid] = (skill.score, snapshot.taken_at)
            if skill.mastered:
                mastered_at.setdefault(cid, snapshot.taken_at)
    result: dict[str, Growth] = {}
    for cid, (first_score, first_at) in first.items():
        last_score, last_at = last[cid]
        change = None
        if first_score is not None and last_score is not None:
            change = round_score(last_score - first_score)
        result[cid] = Growth(cid, first_score, last_score, change, first_at, last_at, mastered_at.get(cid))
    return result
