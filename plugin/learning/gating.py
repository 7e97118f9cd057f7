"""Mastery gates on modules: which modules a student may open, why, and what to do next.

A module opens when every competency aligned to its prerequisite modules is mastered, when a teacher records
that the student has shown mastery another way, or under an accommodation. Once opened by mastery it stays
open, even if a later lower score drops a competency below mastery, unless a teacher explicitly closes it.
A student who already masters a module's own competencies may move past it: that module is complete.

For LMS-native enforcement a module's gate is mirrored by a "mastery check" item (Canvas: an AGS-backed
assignment with a ``min_score`` requirement; Moodle: a grade item used by a restrict-access condition).
:func:`plan_check_posts` says which scores to post so the LMS agrees with the gates, and never posts a lower
score that would re-lock an opened gate.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from plugin.learning._records import positional_constructor
from plugin.learning.mastery import Competency, MasteryScore


class GateStatus(enum.StrEnum):
    LOCKED = "locked"
    OPEN = "open"
    COMPLETE = "complete"


class GateReason(enum.StrEnum):
    NO_PREREQUISITES = "no_prerequisites"
    PREREQUISITES_MASTERED = "prerequisites_mastered"
    STAYS_OPEN = "stays_open"  # opened by mastery earlier
    SHOWN_MASTERY = "shown_mastery"  # teacher override
    ACCOMMODATION = "accommodation"
    CLOSED_BY_TEACHER = "closed_by_teacher"
    MISSING_MASTERY = "missing_mastery"
    MASTERED = "mastered"  # the module's own competencies
    COMPLETED = "completed"  # completed in the LMS (modules with nothing to master)


class OverrideKind(enum.StrEnum):
    SHOWN_MASTERY = "shown_mastery"  # "has shown mastery another way"
    ACCOMMODATION = "accommodation"
    CLOSED_BY_TEACHER = "closed_by_teacher"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Module:
    """A module of a class with its prerequisites and the competencies aligned to its activities."""

    id: str
    title: str = ""
    position: int = 0
    prerequisite_ids: tuple[str, ...] = ()
    competency_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GateOverride:
    """A teacher's decision for one student and module; the latest one per module is in effect."""

    student_id: str
    module_id: str
    kind: OverrideKind
    by: str = ""
    note: str = ""
    at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MissingCompetency:
    """A competency a student still has to master to open a module."""

    competency_id: str
    title: str
    module_id: str  # the prerequisite module it belongs to
    module_title: str
    score: float | None
    needed: float


@dataclass(frozen=True, slots=True)
class GateState:
    """One module's gate for one student; ``message`` and ``next_step`` word it for the student."""

    module_id: str
    status: GateStatus
    reason: GateReason
    missing: tuple[MissingCompetency, ...] = ()
    opened_by_mastery: bool = False  # persist: pass back as ``previously_opened`` next time
    skipped: bool = False  # complete by mastery while its prerequisites are not met: the student moved ahead

    @property
    def message(self) -> str:
        """Say why the module is open, locked or complete."""
        if self.reason is GateReason.MISSING_MASTERY and self.missing:
            return _locked_message(self.missing)
        if self.reason is GateReason.MASTERED and self.skipped:
            return "You already show mastery of this module, so you can move ahead."
        return _MESSAGES[self.reason]

    @property
    def next_step(self) -> str:
        """Say what to do next about this module ("" when nothing is needed here)."""
        if self.reason is GateReason.MISSING_MASTERY and self.missing:
            return _next_step(self.missing[0])
        if self.reason is GateReason.CLOSED_BY_TEACHER:
            return "Ask your teacher what to work on before it reopens."
        return ""


@dataclass(frozen=True, slots=True)
class StudentPath:
    """A student's modules in order, each open, locked or complete, and the suggested next module."""

    student_id: str
    gates: tuple[GateState, ...]
    next_module_id: str | None
    next_module_title: str = ""

    @property
    def next_step(self) -> str:
        """Say what the student should do next."""
        if self.next_module_id is None:
            return "You have completed every module." if self.gates else "There are no modules yet."
        title = self.next_module_title or self.next_module_id
        gate = next(g for g in self.gates if g.module_id == self.next_module_id)
        if gate.status is GateStatus.OPEN:
            return f"Next: continue with {title}."
        return gate.next_step or f"{title} is locked."


@dataclass(frozen=True, slots=True)
class ModuleGraph:
    """A class's modules prepared once for evaluating many students."""

    modules: tuple[Module, ...]  # by position, then input order
    by_id: Mapping[str, Module]
    required: Mapping[str, tuple[MissingCompetency, ...]]  # module → what it needs, each with no score yet
    required_ids: Mapping[str, frozenset[str]]  # module → the competency ids it needs
    unknown_prerequisites: tuple[tuple[str, str], ...] = field(default=())  # (module, missing prerequisite)
    # states that carry nothing student-specific, built once and shared (a memo: not part of the value)
    shared_states: dict[tuple[str, int], GateState] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MasteryCheck:
    """The LMS item that mirrors gates: a full score on it opens ``module_ids`` in the LMS."""

    activity_id: str
    module_ids: tuple[str, ...]
    score_maximum: float = 1.0


@dataclass(frozen=True, slots=True)
class CheckPost:
    """A score to post to a mastery-check item for one student."""

    student_id: str
    activity_id: str
    score: float
    score_maximum: float
    reason: str


_new_gate = positional_constructor(GateState)
_new_missing = positional_constructor(MissingCompetency)

_MESSAGES: Mapping[GateReason, str] = {
    GateReason.NO_PREREQUISITES: "This module has no prerequisites.",
    GateReason.PREREQUISITES_MASTERED: "You have mastered what the modules before this one require.",
    GateReason.STAYS_OPEN: "You opened this module by mastery earlier, so it stays open.",
    GateReason.SHOWN_MASTERY: "Your teacher opened this module: you have shown mastery another way.",
    GateReason.ACCOMMODATION: "This module is open for you under your plan.",
    GateReason.CLOSED_BY_TEACHER: "Your teacher has closed this module for now.",
    GateReason.MISSING_MASTERY: "This module is locked.",
    GateReason.MASTERED: "You have mastered every competency in this module.",
    GateReason.COMPLETED: "You have completed this module.",
}


# --------------------------------------------------------------------------- graph


def build_graph(modules: Iterable[Module], competencies: Iterable[Competency] = ()) -> ModuleGraph:
    """Order modules and collect, per module, the competencies of its prerequisite modules.

    ``competencies`` supply the titles and mastery points the students' messages quote.
    """
    ordered = tuple(sorted(modules, key=lambda m: m.position))
    by_id = {m.id: m for m in ordered}
    known = {c.id: c for c in competencies}
    required: dict[str, tuple[MissingCompetency, ...]] = {}
    unknown: list[tuple[str, str]] = []
    for module in ordered:
        needs: list[MissingCompetency] = []
        seen: set[str] = set()
        for prerequisite_id in module.prerequisite_ids:
            prerequisite = by_id.get(prerequisite_id)
            if prerequisite is None:
                unknown.append((module.id, prerequisite_id))
                continue
            for competency_id in prerequisite.competency_ids:
                if competency_id in seen:
                    continue
                seen.add(competency_id)
                competency = known.get(competency_id)
                needs.append(
                    MissingCompetency(
                        competency_id,
                        (competency.title if competency is not None else "") or competency_id,
                        prerequisite.id,
                        prerequisite.title or prerequisite.id,
                        None,
                        competency.mastery_points if competency is not None else 0.0,
                    )
                )
        required[module.id] = tuple(needs)
    required_ids = {mid: frozenset(need.competency_id for need in needs) for mid, needs in required.items()}
    return ModuleGraph(ordered, by_id, required, required_ids, tuple(unknown))


def find_dropped_prerequisites(modules: Iterable[Module]) -> list[tuple[str, str]]:
    """List (module, prerequisite) pairs Canvas would silently drop: the prerequisite is not at a lower position."""
    modules = list(modules)
    position = {m.id: m.position for m in modules}
    return [
        (m.id, p)
        for m in modules
        for p in m.prerequisite_ids
        if p in position and position[p] >= m.position
    ]


def effective_overrides(overrides: Iterable[GateOverride]) -> dict[str, GateOverride]:
    """Keep the latest override per module (by ``at``; undated ones count as oldest; ties: the later one)."""
    chosen: dict[str, GateOverride] = {}
    for override in overrides:
        current = chosen.get(override.module_id)
        if current is None or _later_or_same(override.at, current.at):
            chosen[override.module_id] = override
    return chosen


def _later_or_same(a: datetime | None, b: datetime | None) -> bool:
    if a is None:
        return b is None
    return b is None or a >= b


# --------------------------------------------------------------------------- evaluation


def evaluate_path(
    student_id: str,
    graph: ModuleGraph,
    mastered: Collection[str],
    *,
    scores: Mapping[str, MasteryScore] | None = None,
    overrides: Iterable[GateOverride] | Mapping[str, GateOverride] = (),
    previously_opened: Collection[str] = (),
    completed: Collection[str] = (),
) -> StudentPath:
    """Evaluate every module's gate for one student and suggest the next module.

    ``mastered`` holds the competency ids the student masters now; ``scores`` only make the messages precise
    (points so far). ``overrides`` are this student's (a list, or already reduced to one per module by
    :func:`effective_overrides`). ``previously_opened`` holds the modules whose last state had
    ``opened_by_mastery``; ``completed`` the modules the LMS marks complete (used for modules with nothing to
    master). The next module is the first open one, else the first locked one, else none.
    """
    in_effect = overrides if isinstance(overrides, Mapping) else effective_overrides(overrides)
    known: set[str] | frozenset[str] = mastered if isinstance(mastered, (set, frozenset)) else set(mastered)
    scores = scores or {}
    cache = graph.shared_states
    gates: list[GateState] = []
    first_open: GateState | None = None
    first_locked: GateState | None = None
    for module in graph.modules:
        mid = module.id
        override = in_effect.get(mid) if in_effect else None
        if override is not None and override.kind is OverrideKind.CLOSED_BY_TEACHER:
            gate = _shared(cache, mid, 0, GateStatus.LOCKED, GateReason.CLOSED_BY_TEACHER, False, False)
        else:
            required = graph.required[mid]
            if known.issuperset(graph.required_ids[mid]):
                missing: list[MissingCompetency] = []
            else:
                missing = [need for need in required if need.competency_id not in known]
            sticky = mid in previously_opened
            opened = not missing or sticky
            own = module.competency_ids
            if own and known.issuperset(own):
                skipped = not opened and override is None
                code = 1 + opened + 2 * skipped
                gate = cache.get((mid, code)) or _shared(
                    cache, mid, code, GateStatus.COMPLETE, GateReason.MASTERED, opened, skipped
                )
            elif not own and mid in completed:
                gate = _shared(cache, mid, 5 + opened, GateStatus.COMPLETE, GateReason.COMPLETED, opened, False)
            elif override is not None:
                if override.kind is OverrideKind.SHOWN_MASTERY:
                    gate = _shared(cache, mid, 7 + opened, GateStatus.OPEN, GateReason.SHOWN_MASTERY, opened, False)
                else:
                    gate = _shared(cache, mid, 9 + opened, GateStatus.OPEN, GateReason.ACCOMMODATION, opened, False)
            elif not missing:
                gate = cache.get((mid, 11)) or _shared(
                    cache,
                    mid,
                    11,
                    GateStatus.OPEN,
                    GateReason.PREREQUISITES_MASTERED if module.prerequisite_ids else GateReason.NO_PREREQUISITES,
                    True,
                    False,
                )
            elif sticky:
                gate = _shared(cache, mid, 12, GateStatus.OPEN, GateReason.STAYS_OPEN, True, False)
            else:
                needs = tuple([_with_score(need, scores) for need in missing])
                if needs == required:  # nothing of it mastered, no score yet: every such student shares the state
                    gate = cache.get((mid, 13)) or _shared(
                        cache, mid, 13, GateStatus.LOCKED, GateReason.MISSING_MASTERY, False, False, required
                    )
                else:
                    gate = _new_gate(mid, GateStatus.LOCKED, GateReason.MISSING_MASTERY, needs, False, False)
        gates.append(gate)
        if first_open is None and gate.status is GateStatus.OPEN:
            first_open = gate
        elif first_locked is None and gate.status is GateStatus.LOCKED:
            first_locked = gate
    path = tuple(gates)
    next_gate = first_open or first_locked
    if next_gate is None:
        return StudentPath(student_id, path, None)
    return StudentPath(student_id, path, next_gate.module_id, graph.by_id[next_gate.module_id].title)


def _shared(
    cache: dict[tuple[str, int], GateState],
    module_id: str,
    code: int,
    status: GateStatus,
    reason: GateReason,
    opened: bool,
    skipped: bool,
    needs: tuple[MissingCompetency, ...] = (),
) -> GateState:
    """Return the one GateState every student in this situation shares (records are immutable)."""
    key = (module_id, code)
    gate = cache.get(key)
    if gate is None:
        gate = cache[key] = _new_gate(module_id, status, reason, needs, opened, skipped)
    return gate


def _with_score(need: MissingCompetency, scores: Mapping[str, MasteryScore]) -> MissingCompetency:
    score = scores.get(need.competency_id)
    if score is None or score.score is None:
        return need
    return _new_missing(need.competency_id, need.title, need.module_id, need.module_title, score.score, need.needed)


def _locked_message(missing: Sequence[MissingCompetency]) -> str:
    names = [m.title for m in missing[:3]]
    if len(missing) > 3:
        names.append(f"{len(missing) - 3} more")
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    modules = list(dict.fromkeys(m.module_title for m in missing))
    return f"Locked until you master {listed} (from {', '.join(modules)})."


def _next_step(first: MissingCompetency) -> str:
    if first.score is None:
        progress = "no evidence yet"
    else:
        progress = f"{first.score:g} of {first.needed:g} points so far"
    return f"Next: work on {first.title} in {first.module_title} ({progress})."


# --------------------------------------------------------------------------- LMS enforcement


def plan_check_posts(
    path: StudentPath, checks: Iterable[MasteryCheck], posted: Mapping[str, float | None]
) -> list[CheckPost]:
    """Say which mastery-check scores to post so the LMS opens exactly what Trailmark opened.

    A check gets its full score once any module it opens is open or complete for the student. A lower score is
    never posted to re-lock an opened gate (Canvas re-locks on a later lower score), with one exception: when
    a teacher explicitly closed every module the check opens, 0 is posted so the LMS locks them again.
    ``posted`` maps a check's activity id to the score last posted (missing or None: nothing posted).
    """
    gates = {g.module_id: g for g in path.gates}
    posts: list[CheckPost] = []
    for check in checks:
        states = [gates[m] for m in check.module_ids if m in gates]
        current = posted.get(check.activity_id)
        open_gate = next((g for g in states if g.status is not GateStatus.LOCKED), None)
        if open_gate is not None:
            if current is None or current < check.score_maximum:
                posts.append(
                    CheckPost(
                        path.student_id, check.activity_id, check.score_maximum, check.score_maximum,
                        f"{open_gate.module_id} is {open_gate.status.value} ({open_gate.reason.value})",
                    )
                )
            continue
        closed = bool(states) and all(g.reason is GateReason.CLOSED_BY_TEACHER for g in states)
        if closed and current is not None and current > 0:
            posts.append(
                CheckPost(path.student_id, check.activity_id, 0.0, check.score_maximum, "closed by teacher")
            )
    return posts
