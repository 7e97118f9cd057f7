"""Page models for the panels: query rows turned into what a template shows, using the rules in plugin.learning.

Nothing here touches the database or Flask; views load rows through ``plugin.store.queries`` and pass them in.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from markupsafe import Markup, escape

from plugin.learning._records import positional_constructor
from plugin.learning.alerts import EscalationPolicy, describe_pace
from plugin.learning.gating import (
    GateReason,
    GateState,
    GateStatus,
    MissingCompetency,
    OverrideKind,
    StudentPath,
)
from plugin.learning.groups import Group, suggest_groups
from plugin.learning.mastery import Competency as LCompetency
from plugin.learning.mastery import MasteryScore
from plugin.learning.pace import (
    Accommodation,
    PacePlan,
    PaceState,
    PaceStatus,
    TermPhase,
    due_dates_for,
    pace_line,
    plan_from_settings,
    spread_due_dates,
)
from plugin.learning.profile import ProfileSnapshot, growth
from plugin.store.queries import (
    AccommodationRow,
    AlertRow,
    ClassInfo,
    CompetencyInfo,
    EntryRow,
    FeedbackRow,
    GateRow,
    MasteryRow,
    ModuleInfo,
    OverrideRow,
    PaceRow,
    PlanRow,
    Score,
    SnapshotRow,
    StudentInfo,
)

_new_score = positional_constructor(MasteryScore)

# --------------------------------------------------------------------------- mastery levels in the grid


class Band(enum.StrEnum):
    """How a score stands against mastery; each has a letter so the grid reads without colour."""

    EXCEEDS = "e"
    MASTERED = "m"
    NEAR = "n"
    BELOW = "b"
    PENDING = "p"  # evidence, but the calculation gives no score yet (n_mastery)
    NOT_ASSESSED = "na"


@dataclass(frozen=True, slots=True)
class BandInfo:
    band: Band
    letter: str
    name: str
    description: str


BANDS: tuple[BandInfo, ...] = (
    BandInfo(Band.EXCEEDS, "E", "Exceeds", "mastered, in the scale's rating above mastery"),
    BandInfo(Band.MASTERED, "M", "Mastered", "at or above the mastery threshold"),
    BandInfo(Band.NEAR, "N", "Near", "not yet mastered, within a quarter of the scale below mastery"),
    BandInfo(Band.BELOW, "B", "Below", "more than a quarter of the scale below mastery"),
    BandInfo(Band.PENDING, "P", "Pending", "some evidence, not enough for a score yet"),
    BandInfo(Band.NOT_ASSESSED, "–", "Not assessed", "no evidence yet"),
)
BAND = {b.band: b for b in BANDS}
NEAR_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class Cell:
    """One grid cell: band (colour class), letter and the words a screen reader speaks."""

    band: str
    letter: str
    label: str


@dataclass(frozen=True, slots=True)
class Scale:
    """A competency's thresholds, worked out once for all its cells."""

    mastery: float
    near: float
    exceeds: float | None
    points: float


def scale_of(comp: CompetencyInfo) -> Scale:
    """Return the thresholds the bands use for one competency."""
    points = comp.points_possible if comp.points_possible > 0 else comp.mastery_points or 1.0
    above = [p for p, _ in comp.ratings if p > comp.mastery_points]
    return Scale(comp.mastery_points, comp.mastery_points - NEAR_FRACTION * points, min(above) if above else None,
                 points)


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


_NOT_ASSESSED = Cell(Band.NOT_ASSESSED.value, BAND[Band.NOT_ASSESSED].letter, "not assessed")


def cell_for(row: MasteryRow | Score | None, scale: Scale) -> Cell:
    """Return the grid cell for one student's score on one competency (None: no evidence)."""
    if row is None:
        return _NOT_ASSESSED
    if isinstance(row, MasteryRow):
        score, mastered, level, count = row.score, row.mastered, row.level, row.evidence_count
    else:
        score, mastered, level, count = row
    return _cell(score, mastered, level, count if score is None else 0, scale)


@functools.lru_cache(maxsize=4096)
def _cell(score: float | None, mastered: bool, level: str | None, count: int, scale: Scale) -> Cell:
    if score is None:
        info = BAND[Band.PENDING]
        return Cell(info.band.value, info.letter, f"pending, {count} results so far")
    if mastered:
        band = Band.EXCEEDS if scale.exceeds is not None and score >= scale.exceeds else Band.MASTERED
    else:
        band = Band.NEAR if score >= scale.near else Band.BELOW
    info = BAND[band]
    return Cell(info.band.value, info.letter, f"{level or info.name}, {_num(score)} of {_num(scale.points)}")


@functools.lru_cache(maxsize=4096)
def cell_html(cell: Cell) -> str:
    """One grid cell as HTML: the colour class, the letter, and the words for screen readers."""
    return (f'<td class="c c-{cell.band}">{cell.letter}<span class="sr-only"> {escape(cell.label)}</span></td>')


# --------------------------------------------------------------------------- pace


PACE_LABELS: Mapping[str, str] = {
    PaceState.ON_TRACK: "On track",
    PaceState.BEHIND: "Behind",
    PaceState.AHEAD: "Ahead",
    PaceState.FAR_AHEAD: "Far ahead",
}
PACE_ORDER: Mapping[str, int] = {PaceState.BEHIND: 0, PaceState.ON_TRACK: 1, PaceState.AHEAD: 2,
                                 PaceState.FAR_AHEAD: 3}


def pace_status(row: PaceRow) -> PaceStatus:
    """Rebuild the rules' pace status from a stored row (for the rules' own wording)."""
    return PaceStatus(
        student_id=str(row.person_id), class_id=str(row.class_id), state=PaceState(row.state),
        phase=TermPhase(row.phase), completed=row.completed, expected=row.expected, total=row.total,
        modules_behind=row.modules_behind, days_behind=row.days_behind, modules_ahead=row.modules_ahead,
        days_ahead=row.days_ahead, next_due=row.next_due, projected_finish=row.projected_finish,
        accommodated=row.accommodated)


def pace_sentence(row: PaceRow | None) -> str:
    """Describe a student's pace, e.g. "1 module (8 days) behind the minimum pace"."""
    if row is None:
        return "no pace plan yet"
    return describe_pace(pace_status(row))


def day_text(day: date | None) -> str:
    """Format a date the way the panels show it, e.g. "3 Mar 2026"."""
    return f"{day.day} {day:%b %Y}" if day is not None else "—"


def plan_for(info: ClassInfo, row: PlanRow | None, module_ids: Sequence[int]) -> PacePlan | None:
    """Build a class's pace plan the way the recompute does (term dates, the teacher's edits, skipped days).

    Edits for modules no longer in the class, or outside the term, are left out rather than refused.
    """
    start, end = info.term_start, info.term_end
    if row is not None:
        start, end = row.start_date or start, row.end_date or end
    return plan_from_settings(str(info.id), start, end, [str(m) for m in module_ids],
                              edits=row.due_edits if row else None,
                              skip_weekends=row.skip_weekends if row else True,
                              skip_dates=row.skip_dates if row else ())


def even_dates(plan: PacePlan) -> dict[str, date]:
    """The evenly spread due dates the plan starts from, before any edit."""
    return dict(spread_due_dates(plan.module_ids, plan.start, plan.end, skip_weekends=plan.skip_weekends,
                                 skip_dates=plan.skip_dates))


def accommodation_of(row: AccommodationRow | None) -> Accommodation | None:
    if row is None:
        return None
    return Accommodation(str(row.person_id), max(row.extra_days, 0), max(row.factor, 1.0), row.note)


# --------------------------------------------------------------------------- alerts


@dataclass(frozen=True, slots=True)
class AlertView:
    id: int
    student: StudentInfo | None
    student_id: int
    kind: str  # behind | far_behind | stalled | far_ahead
    kind_label: str
    level: int
    detail: str
    opened_on: date
    days_open: int


ALERT_KIND_LABELS: Mapping[str, str] = {
    "behind": "Behind", "far_behind": "Far behind", "stalled": "Stalled", "far_ahead": "Far ahead",
}
TOP_LEVEL = 3


def alert_kind(kind: str, level: int) -> str:
    """Name an alert for the inbox: a behind alert escalated to the top level reads "far behind"."""
    if kind == "behind" and level >= TOP_LEVEL:
        return "far_behind"
    return kind


def alert_views(rows: Iterable[AlertRow], students: Mapping[int, StudentInfo], today: date) -> list[AlertView]:
    out = []
    for row in rows:
        kind = alert_kind(row.kind, row.level)
        opened = row.opened_at.astimezone(UTC).date()
        out.append(AlertView(row.id, students.get(row.person_id), row.person_id, kind,
                             ALERT_KIND_LABELS.get(kind, kind.replace("_", " ").capitalize()), row.level, row.detail,
                             opened, max((today - opened).days, 0)))
    return out


def far_behind_days() -> int:
    return EscalationPolicy().level3_after_days


# --------------------------------------------------------------------------- gates and paths


OVERRIDE_LABELS: Mapping[str, str] = {
    OverrideKind.SHOWN_MASTERY: "Opened: has shown mastery another way",
    OverrideKind.ACCOMMODATION: "Opened: accommodation",
    OverrideKind.CLOSED_BY_TEACHER: "Closed by the teacher",
}
STATUS_LABELS: Mapping[str, str] = {GateStatus.OPEN: "Open", GateStatus.LOCKED: "Locked",
                                    GateStatus.COMPLETE: "Complete"}


def gate_state(row: GateRow) -> GateState:
    """Rebuild the rules' gate state from a stored row (for the rules' own wording of reasons and next steps)."""
    missing = tuple(
        MissingCompetency(str(m.get("competency_id", "")), str(m.get("title", "")), "",
                          str(m.get("module_title", "")), m.get("score"), float(m.get("needed") or 0.0))
        for m in row.missing if isinstance(m, dict))
    return GateState(str(row.module_id), GateStatus(row.status), GateReason(row.reason), missing,
                     row.opened_by_mastery)


def _others_reason(gate: GateState, name: str) -> str:
    """Word a gate's reason for a teacher or parent ("Maya has …") rather than for the student."""
    reason = gate.reason
    if reason is GateReason.MISSING_MASTERY and gate.missing:
        parts = []
        for need in gate.missing[:3]:
            so_far = "no evidence yet" if need.score is None else f"{_num(need.score)} of {_num(need.needed)}"
            parts.append(f"{need.title} ({so_far})")
        if len(gate.missing) > 3:
            parts.append(f"{len(gate.missing) - 3} more")
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        modules = ", ".join(dict.fromkeys(m.module_title for m in gate.missing))
        return f"Locked until {name} masters {listed}, from {modules}."
    return {
        GateReason.NO_PREREQUISITES: "Open: no prerequisites.",
        GateReason.PREREQUISITES_MASTERED: "Open: the modules before it are mastered.",
        GateReason.STAYS_OPEN: "Open: opened by mastery earlier, so it stays open.",
        GateReason.SHOWN_MASTERY: f"Opened by a teacher: {name} has shown mastery another way.",
        GateReason.ACCOMMODATION: "Opened by a teacher as an accommodation.",
        GateReason.CLOSED_BY_TEACHER: "Closed by a teacher for now.",
        GateReason.MISSING_MASTERY: "Locked.",
        GateReason.MASTERED: "Complete: every competency in it is mastered.",
        GateReason.COMPLETED: "Complete in the LMS.",
    }[reason]


@dataclass(frozen=True, slots=True)
class PathStep:
    module: ModuleInfo
    status: str
    status_label: str
    message: str
    next_step: str
    is_next: bool
    override: OverrideRow | None = None


@dataclass(frozen=True, slots=True)
class Remaining:
    """A competency of a module the student has not mastered yet."""

    title: str
    score: float | None
    needed: float


def _remaining_text(items: Sequence[Remaining], *, own: bool) -> str:
    parts = []
    for item in items[:3]:
        if item.score is None:
            parts.append(f"{item.title} (no evidence yet)")
        else:
            points = " points so far" if own else ""
            parts.append(f"{item.title} ({_num(item.score)} of {_num(item.needed)}{points})")
    if len(items) > 3:
        parts.append(f"{len(items) - 3} more")
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"To complete it, master {listed}." if own else f"Still to master: {listed}."


def path_steps(modules: Sequence[ModuleInfo], gates: Mapping[int, GateRow], *, own: bool, name: str,
               overrides: Mapping[int, OverrideRow] | None = None,
               remaining: Mapping[int, Sequence[Remaining]] | None = None) -> tuple[list[PathStep], str]:
    """Each module of a class open, locked or complete with the reason, and the path's next step.

    An open module also says which of its own competencies are still to master (``remaining``).
    """
    states: list[GateState] = []
    for module in modules:
        row = gates.get(module.id)
        if row is not None:
            states.append(gate_state(row))
    path = StudentPath("", tuple(states), None)
    next_gate = next((g for g in states if g.status is GateStatus.OPEN), None) or next(
        (g for g in states if g.status is GateStatus.LOCKED), None)
    titles = {str(m.id): m.title for m in modules}
    if next_gate is not None:
        path = StudentPath("", tuple(states), next_gate.module_id, titles.get(next_gate.module_id, ""))
    steps: list[PathStep] = []
    by_id = {g.module_id: g for g in states}
    for module in modules:
        gate = by_id.get(str(module.id))
        if gate is None:
            steps.append(PathStep(module, "pending", "Not worked out yet",
                                  "This module is new; its status appears after the next update.", "", False))
            continue
        message = gate.message if own else _others_reason(gate, name)
        todo = gate.next_step if own else ""
        left = (remaining or {}).get(module.id)
        if gate.status is GateStatus.OPEN and left:
            todo = _remaining_text(left, own=own)
        steps.append(PathStep(module, gate.status.value, STATUS_LABELS[gate.status], message, todo,
                              gate.module_id == path.next_module_id, (overrides or {}).get(module.id)))
    if own:
        summary = path.next_step
    elif path.next_module_id is None:
        summary = f"{name} has completed every module." if states else "There are no modules yet."
    else:
        step = next(s for s in steps if s.is_next)
        summary = f"Next for {name}: {step.module.title} ({step.status_label.lower()})."
    return steps, summary


# --------------------------------------------------------------------------- the class view


@dataclass(frozen=True, slots=True)
class Column:
    competency: CompetencyInfo
    code: str


@dataclass(frozen=True, slots=True)
class ModuleGroup:
    number: str
    title: str
    span: int
    columns: tuple[Column, ...] = ()


@dataclass(frozen=True, slots=True)
class GridRow:
    student: StudentInfo
    pace: PaceRow | None
    pace_label: str
    mastered: int
    assessed: int
    html: Markup  # the cells as table data, built here rather than cell by cell in the template


@dataclass(frozen=True, slots=True)
class GroupView:
    code: str
    title: str
    students: list[StudentInfo]
    average: float | None
    shared_by: int


@dataclass(frozen=True, slots=True)
class OverrideView:
    row: OverrideRow
    student: StudentInfo | None
    module_title: str
    label: str


@dataclass(frozen=True, slots=True)
class ChartRow:
    """The pace chart's data table, one student per row."""

    student: StudentInfo
    completed: int
    expected: int
    total: int
    state: str
    label: str
    sentence: str
    last_completed: date | None
    projected_finish: date | None
    accommodated: bool


SORTS = ("name", "pace", "mastery")


def columns_for(competencies: Sequence[CompetencyInfo], modules: Sequence[ModuleInfo]) -> tuple[
        list[Column], list[ModuleGroup]]:
    """Short codes for competencies (module number.index) and the module header spans over them."""
    number = {m.id: i for i, m in enumerate(modules, start=1)}
    titles = {m.id: m.title for m in modules}
    columns: list[Column] = []
    groups: list[ModuleGroup] = []
    counter: dict[int | None, int] = {}
    for comp in competencies:
        key = comp.module_id if comp.module_id in number else None
        counter[key] = counter.get(key, 0) + 1
        prefix = str(number[key]) if key is not None else "X"
        columns.append(Column(comp, f"{prefix}.{counter[key]}"))
        title = titles[key] if key is not None else "Not in a module"
        if groups and groups[-1].title == title and groups[-1].number == prefix:
            last = groups[-1]
            groups[-1] = ModuleGroup(prefix, title, last.span + 1, (*last.columns, columns[-1]))
        else:
            groups.append(ModuleGroup(prefix, title, 1, (columns[-1],)))
    return columns, groups


def grid_rows(students: Sequence[StudentInfo], columns: Sequence[Column], scores: Mapping[int, Mapping[int, Score]],
              pace: Mapping[int, PaceRow], sort: str) -> list[GridRow]:
    """One row per student: a cell per competency, mastered and assessed counts, pace; sorted as asked.

    Cells repeat a lot (a handful of levels per competency), so each column keeps the HTML of the cells it has
    already made, keyed by the score tuple itself.
    """
    plan = [(c.competency.id, scale_of(c.competency), {}) for c in columns]
    wanted = {cid for cid, _, _ in plan}
    blank = cell_html(_NOT_ASSESSED)
    rows: list[GridRow] = []
    empty: dict[int, Score] = {}
    for student in students:
        mine = scores.get(student.id, empty)
        parts: list[str] = []
        for cid, scale, memo in plan:
            score = mine.get(cid)
            if score is None:
                parts.append(blank)
                continue
            html = memo.get(score)
            if html is None:
                html = memo[score] = cell_html(cell_for(score, scale))
            parts.append(html)
        assessed = [s for cid, s in mine.items() if cid in wanted]
        p = pace.get(student.id)
        rows.append(GridRow(student, p, PACE_LABELS.get(p.state, p.state) if p else "No plan",
                            sum(1 for s in assessed if s[1]), len(assessed), Markup("".join(parts))))
    if sort == "pace":
        rows.sort(key=lambda r: (PACE_ORDER.get(r.pace.state, 9) if r.pace else 9,
                                 -(r.pace.modules_behind if r.pace else 0), -(r.pace.days_behind if r.pace else 0),
                                 r.student.family_name, r.student.given_name))
    elif sort == "mastery":
        rows.sort(key=lambda r: (r.mastered, r.assessed, r.student.family_name, r.student.given_name))
    return rows


def groups_for(students: Sequence[StudentInfo], columns: Sequence[Column], scores: Mapping[int, Mapping[int, Score]],
               limit: int = 8) -> list[GroupView]:
    """Suggested mini-lesson groups: students sharing a gap (plugin.learning.groups)."""
    gaps: dict[str, dict[str, MasteryScore]] = {}
    for pid, mine in scores.items():
        student = str(pid)
        for cid, (score, mastered, _level, count) in mine.items():
            if not mastered:  # a group is about a gap: mastered scores never join one
                comp = str(cid)
                gaps.setdefault(student, {})[comp] = _new_score(student, comp, score, count, False, None)
    comps = [LCompetency(str(c.competency.id), c.competency.title) for c in columns]
    codes = {str(c.competency.id): c.code for c in columns}
    people = {str(s.id): s for s in students}
    found: list[Group] = suggest_groups(gaps, comps, student_ids=list(people))
    return [GroupView(codes[g.competency_id], g.title, [people[s] for s in g.student_ids if s in people],
                      g.average_score, g.shared_by) for g in found[:limit]]


def override_views(rows: Iterable[OverrideRow], students: Mapping[int, StudentInfo],
                   modules: Mapping[int, ModuleInfo]) -> list[OverrideView]:
    return [OverrideView(r, students.get(r.person_id), modules[r.module_id].title if r.module_id in modules else "?",
                         OVERRIDE_LABELS.get(r.kind, r.kind)) for r in rows]


def chart_rows(students: Sequence[StudentInfo], pace: Mapping[int, PaceRow],
               completions: Mapping[int, Sequence[date]]) -> list[ChartRow]:
    out = []
    for s in students:
        p = pace.get(s.id)
        if p is None:
            continue
        days = completions.get(s.id, ())
        out.append(ChartRow(s, p.completed, p.expected, p.total, p.state, PACE_LABELS.get(p.state, p.state),
                            pace_sentence(p), days[-1] if days else None, p.projected_finish, p.accommodated))
    return out


def class_counts(pace: Mapping[int, PaceRow]) -> dict[str, int]:
    counts = {state.value: 0 for state in PaceState}
    for row in pace.values():
        counts[row.state] = counts.get(row.state, 0) + 1
    return counts


# --------------------------------------------------------------------------- the learner profile


@dataclass(frozen=True, slots=True)
class SkillView:
    competency: CompetencyInfo
    code: str
    cell: Cell
    level: str
    score: str


@dataclass(frozen=True, slots=True)
class GrowthPoint:
    day: date
    mastered: int
    assessed: int


@dataclass(frozen=True, slots=True)
class GrowthChange:
    code: str
    title: str
    first: float | None
    last: float | None
    change: float | None
    mastered_on: date | None
    first_assessed: date | None = None  # set when the competency had no evidence at the first snapshot


@dataclass
class ClassProfile:
    """One class's part of a learner profile."""

    klass: ClassInfo
    steps: list[PathStep]
    next_step: str
    pace: PaceRow | None
    pace_label: str
    pace_sentence: str
    skills: list[SkillView]
    gaps: list[SkillView]
    strengths: list[SkillView]
    weaknesses: list[SkillView]
    unassessed: list[Column]
    growth: list[GrowthPoint]
    changes: list[GrowthChange]
    total_competencies: int
    modules: list[ModuleInfo]
    accommodation: AccommodationRow | None = None
    overrides: list[OverrideView] = field(default_factory=list)
    plan: PacePlan | None = None
    completions: list[date] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EntryView:
    row: EntryRow
    overdue: bool
    editable: bool
    co_set: bool


def skill_views(columns: Sequence[Column], mastery: Mapping[int, MasteryRow]) -> dict[int, SkillView]:
    out = {}
    for col in columns:
        row = mastery.get(col.competency.id)
        if row is None:
            continue
        cell = cell_for(row, scale_of(col.competency))
        info = BAND[Band(cell.band)]
        score = "no score yet" if row.score is None else f"{_num(row.score)} of {_num(scale_of(col.competency).points)}"
        out[col.competency.id] = SkillView(col.competency, col.code, cell, row.level or info.name, score)
    return out


def _snapshot(row: SnapshotRow, person_id: int) -> ProfileSnapshot:
    skills = []
    for cid, value in (row.data.get("skills") or {}).items():
        if isinstance(value, list) and len(value) >= 2:
            count = int(value[2]) if len(value) > 2 and value[2] is not None else 0
            skills.append(MasteryScore(str(person_id), str(cid), value[0], count, bool(value[1]), None))
    taken = datetime.combine(row.taken_on, datetime.min.time(), UTC)
    return ProfileSnapshot(str(person_id), taken, tuple(skills), (), (), (), ())


def growth_of(snapshots: Sequence[SnapshotRow], person_id: int, columns: Sequence[Column]) -> tuple[
        list[GrowthPoint], list[GrowthChange]]:
    """Competencies mastered per snapshot day, and each competency's first and last score over the term."""
    known = {str(c.competency.id) for c in columns}
    points = []
    for row in snapshots:
        skills = {k: v for k, v in (row.data.get("skills") or {}).items() if k in known}
        mastered = sum(1 for v in skills.values() if isinstance(v, list) and len(v) >= 2 and v[1])
        points.append(GrowthPoint(row.taken_on, mastered, len(skills)))
    history = [_snapshot(r, person_id) for r in snapshots]
    moved = growth(history)
    changes = []
    if len(history) < 2:
        return points, changes
    started = history[0].taken_at
    for col in columns:
        g = moved.get(str(col.competency.id))
        if g is None:
            continue
        new = g.first_at > started
        newly_mastered = g.mastered_at is not None and g.mastered_at > started
        if not (g.change or new or newly_mastered):
            continue
        changes.append(GrowthChange(col.code, col.competency.title, g.first_score, g.last_score, g.change,
                                    g.mastered_at.date() if newly_mastered and g.mastered_at else None,
                                    g.first_at.date() if new else None))
    changes.sort(key=lambda c: (c.mastered_on is None, -abs(c.change or 0.0)))
    return points, changes


def class_profile(*, student: StudentInfo | Any, own: bool, info: ClassInfo, modules: Sequence[ModuleInfo],
                  competencies: Sequence[CompetencyInfo], mastery: Sequence[MasteryRow], gates: Sequence[GateRow],
                  pace: PaceRow | None, snapshots: Sequence[SnapshotRow], plan: PacePlan | None,
                  accommodation: AccommodationRow | None, overrides: Sequence[OverrideRow]) -> ClassProfile:
    """Build one class's part of a student's profile: path, pace, skills, gaps, strengths, growth."""
    columns, _ = columns_for(competencies, modules)
    by_comp = {r.competency_id: r for r in mastery}
    skills_by_id = skill_views(columns, by_comp)
    skills = [skills_by_id[c.competency.id] for c in columns if c.competency.id in skills_by_id]
    latest = snapshots[-1].data if snapshots else {}
    ids = {str(k): k for k in skills_by_id}

    def pick(key: str) -> list[SkillView]:
        return [skills_by_id[ids[c]] for c in latest.get(key, []) if c in ids]

    gaps = [s for s in skills if not (by_comp[s.competency.id].mastered)]
    unassessed = [c for c in columns if c.competency.id not in by_comp]
    points, changes = growth_of(snapshots, student.id, columns)
    module_by_id = {m.id: m for m in modules}
    student_map = {student.id: student}
    override_list = override_views(overrides, student_map, module_by_id)
    name = student.given_name or student.display_name
    remaining: dict[int, list[Remaining]] = {}
    for comp in competencies:
        row = by_comp.get(comp.id)
        if comp.module_id is not None and (row is None or not row.mastered):
            remaining.setdefault(comp.module_id, []).append(
                Remaining(comp.title, row.score if row else None, comp.mastery_points))
    steps, summary = path_steps(modules, {g.module_id: g for g in gates}, own=own, name=name,
                                overrides={o.row.module_id: o.row for o in override_list}, remaining=remaining)
    completions = sorted(g.completed_on for g in gates if g.status == "complete" and g.completed_on is not None)
    return ClassProfile(
        klass=info, steps=steps, next_step=summary, pace=pace,
        pace_label=PACE_LABELS.get(pace.state, pace.state) if pace else "No plan",
        pace_sentence=pace_sentence(pace), skills=skills, gaps=gaps, strengths=pick("strengths"),
        weaknesses=pick("weaknesses"), unassessed=unassessed, growth=points, changes=changes,
        total_competencies=len(columns), modules=list(modules), accommodation=accommodation,
        overrides=override_list, plan=plan, completions=completions)


def entry_views(rows: Iterable[EntryRow], *, today: date, own: bool, teaches: bool) -> dict[str, list[EntryView]]:
    """Entries grouped by kind, each with whether the viewer may edit it."""
    grouped: dict[str, list[EntryView]] = {"interest": [], "aspiration": [], "goal": [], "note": []}
    for row in rows:
        if own:
            editable = row.kind in ("interest", "aspiration", "goal")
        elif teaches:
            editable = row.author_role == "teacher" and row.kind in ("goal", "note")
        else:
            editable = False
        overdue = (row.kind == "goal" and row.status in (None, "active") and row.target_date is not None
                   and row.target_date < today)
        grouped.setdefault(row.kind, []).append(EntryView(row, overdue, editable, row.author_role == "teacher"
                                                           and row.kind == "goal"))
    return grouped


@dataclass(frozen=True, slots=True)
class FeedbackView:
    row: FeedbackRow
    class_title: str
    score: str
    when: str


def feedback_views(rows: Iterable[FeedbackRow], classes: Mapping[int, ClassInfo]) -> list[FeedbackView]:
    out = []
    for row in rows:
        if row.score is None:
            score = "not scored"
        elif row.score_maximum:
            score = f"{_num(row.score)} / {_num(row.score_maximum)}"
        else:
            score = _num(row.score)
        when = day_text(row.scored_at.date()) if row.scored_at else "—"
        out.append(FeedbackView(row, classes[row.class_id].title if row.class_id in classes else "", score, when))
    return out


# --------------------------------------------------------------------------- the pace plan editor


@dataclass(frozen=True, slots=True)
class PlanLine:
    module: ModuleInfo
    due: date | None
    even: date | None
    edited: bool


def plan_lines(plan: PacePlan | None, modules: Sequence[ModuleInfo]) -> list[PlanLine]:
    if plan is None:
        return [PlanLine(m, None, None, False) for m in modules]
    due = dict(plan.due)
    even = even_dates(plan)
    return [PlanLine(m, due.get(str(m.id)), even.get(str(m.id)), due.get(str(m.id)) != even.get(str(m.id)))
            for m in modules]


def student_line(plan: PacePlan, accommodation: AccommodationRow | None) -> list[tuple[date, int]]:
    """The minimum-pace line for one student (their accommodation applied)."""
    return pace_line(plan, accommodation_of(accommodation))


def student_dues(plan: PacePlan, accommodation: AccommodationRow | None) -> dict[str, date]:
    return due_dates_for(plan, accommodation_of(accommodation))
