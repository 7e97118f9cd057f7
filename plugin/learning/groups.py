"""Suggested small groups for a mini-lesson: students who share the same gap."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from plugin.learning.mastery import Competency, MasteryScore, round_score


@dataclass(frozen=True, slots=True)
class Group:
    """Students who have not mastered one competency, to be taught together."""

    competency_id: str
    title: str
    student_ids: tuple[str, ...]
    average_score: float | None  # mean of the members' scores (None when none has one)
    shared_by: int  # how many students share the gap in all (the group may be one part of them)


def suggest_groups(
    scores: Mapping[str, Mapping[str, MasteryScore]],
    competencies: Sequence[Competency],
    *,
    min_size: int = 2,
    max_size: int = 6,
    student_ids: Iterable[str] | None = None,
    include_unassessed: bool = False,
) -> list[Group]:
    """Group students by shared gap, largest first.

    ``scores`` maps student → competency → score. A gap is a competency with evidence and no mastery; with
    ``include_unassessed`` (and ``student_ids`` naming the class) students without evidence join too. A gap
    shared by fewer than ``min_size`` students gives no group; one shared by more than ``max_size`` is split
    into as few groups as fit, of near-equal size, students closest in score together. (When ``min_size`` is
    more than half of ``max_size`` a split can leave a group below ``min_size``.)
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 ≤ min_size ≤ max_size; got min_size={min_size}, max_size={max_size}")
    roster = sorted(set(student_ids) if student_ids is not None else set(scores))
    groups: list[tuple[int, int, Group]] = []
    for index, competency in enumerate(competencies):
        members: list[tuple[float | None, str]] = []
        for student_id in roster:
            score = scores.get(student_id, {}).get(competency.id)
            if score is None:
                if include_unassessed:
                    members.append((None, student_id))
            elif not score.mastered:
                members.append((score.score, student_id))
        if len(members) < min_size:
            continue
        members.sort(key=lambda m: (m[0] is not None, m[0] or 0.0, m[1]))
        for part in _split(members, max_size):
            present = [s for s, _ in part if s is not None]
            average = round_score(math.fsum(present) / len(present)) if present else None
            group = Group(
                competency.id, competency.title or competency.id, tuple(s for _, s in part), average, len(members)
            )
            groups.append((-len(part), index, group))
    groups.sort(key=lambda g: (g[0], g[1]))
    return [g for _, _, g in groups]


def _split(members: list[tuple[float | None, str]], max_size: int) -> list[list[tuple[float | None, str]]]:
    count = -(-len(members) // max_size)
    base, extra = divmod(len(members), count)
    parts: list[list[tuple[float | None, str]]] = []
    start = 0
    for i in range(count):
        size = base + (1 if i < extra else 0)
        parts.append(members[start : start + size])
        start += size
    return parts
