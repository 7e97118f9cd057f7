"""Learning state kept in step with the roster and scores: load a class's plain data from the store, run the pure
rules in ``plugin.learning``, store mastery, gates, pace, alerts and profile snapshots, and queue the LMS writes
(mastery-check scores that open LMS-native gates, alert messages) in the outbox.

Runs after every sync that changed a class (the engine's ``on_applied`` hook), after a teacher's override or a
score, and daily from the scheduler. Loads are batched per group of classes (a handful of queries per batch, never
per student).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from connectors.base import ScoreWrite
from plugin import lms_gates
from plugin.learning.alerts import Alert, AlertKind
from plugin.learning.gating import GateOverride, MasteryCheck, OverrideKind
from plugin.learning.gating import Module as LModule
from plugin.learning.mastery import Competency as LCompetency
from plugin.learning.mastery import Evidence, level_of
from plugin.learning.pace import Accommodation, plan_from_settings
from plugin.learning.profile import EntryKind, GoalStatus, ProfileEntry
from plugin.learning.recompute import ClassData, ClassResult, LearningSettings, recompute_class
from plugin.store import models as m
from plugin.store import queries

log = logging.getLogger("trailmark.progress")

CHECK_CATEGORY = "trailmark-mastery-check"
BATCH = 200


@dataclass
class RecomputeSummary:
    classes: int = 0
    students: int = 0
    mastery_rows: int = 0
    alerts_opened: int = 0
    alerts_resolved: int = 0
    checks_queued: int = 0
    gates_queued: int = 0  # Canvas gate writes (module prerequisite + the check's minimum score)
    messages_queued: int = 0  # alert messages queued for the LMS (one per alert, level and audience)
    messages_skipped: int = 0  # recipients the class's LMS has no id for
    messages_held: list[str] = field(default_factory=list)  # classes whose LMS cannot take alert messages, and why
    problems: list[str] = field(default_factory=list)


def _chunks(values: Sequence[int], size: int = BATCH) -> Iterable[Sequence[int]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- loading


@dataclass
class _Batch:
    """Everything loaded for one batch of classes, keyed by canonical ids."""

    class_ids: list[int]
    terms: dict[int, tuple[date | None, date | None]] = field(default_factory=dict)
    students: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    modules: dict[int, list[m.Module]] = field(default_factory=lambda: defaultdict(list))
    activities: dict[int, tuple[int, int | None, float | None, str | None]] = field(default_factory=dict)
    alignments: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    competencies: dict[int, m.Competency] = field(default_factory=dict)
    class_competencies: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))


def _load_batch(session: Session, district_id: int, class_ids: Sequence[int]) -> _Batch:
    b = _Batch(list(class_ids))
    for cid, start, end in session.execute(
            select(m.Class.id, m.AcademicSession.start_date, m.AcademicSession.end_date)
            .outerjoin(m.AcademicSession, m.AcademicSession.id == m.Class.term_id)
            .where(m.Class.id.in_(class_ids))):
        b.terms[cid] = (start, end)
    for cid, pid in session.execute(
            select(m.Enrollment.class_id, m.Enrollment.person_id)
            .join(m.Person, m.Person.id == m.Enrollment.person_id)
            .where(m.Enrollment.class_id.in_(class_ids), m.Enrollment.role == "student",
                   m.Enrollment.status == "active", m.Person.status == "active")
            .order_by(m.Enrollment.class_id, m.Enrollment.person_id)):
        b.students[cid].append(pid)
    for module in session.scalars(select(m.Module).where(m.Module.class_id.in_(class_ids),
                                                         m.Module.status == "active")
                                  .order_by(m.Module.class_id, m.Module.position, m.Module.id)):
        b.modules[module.class_id].append(module)
    for aid, cid, mid, maximum, category in session.execute(
            select(m.Activity.id, m.Activity.class_id, m.Activity.module_id, m.Activity.score_maximum,
                   m.Activity.category)
            .where(m.Activity.class_id.in_(class_ids), m.Activity.status == "active")):
        b.activities[aid] = (cid, mid, maximum, category)
    if b.activities:
        for aid, comp in session.execute(
                select(m.Alignment.activity_id, m.Alignment.competency_id)
                .where(m.Alignment.activity_id.in_(list(b.activities)), m.Alignment.status == "active")):
            b.alignments[aid].append(comp)
            b.class_competencies[b.activities[aid][0]].add(comp)
    for comp in session.scalars(select(m.Competency).where(
            m.Competency.district_id == district_id, m.Competency.status == "active",
            or_(m.Competency.class_id.in_(class_ids),
                m.Competency.id.in_({c for cs in b.alignments.values() for c in cs} or {-1})))):
        b.competencies[comp.id] = comp
        if comp.class_id is not None:
            b.class_competencies[comp.class_id].add(comp.id)
    return b


def _competency(comp: m.Competency, default_threshold: float | None) -> LCompetency:
    ratings = tuple((float(r[0]), str(r[1])) for r in (comp.ratings or []) if len(r) >= 2)
    mastery_points = comp.mastery_points or default_threshold or 0.0
    kwargs: dict[str, Any] = {"id": str(comp.id), "title": comp.title,
                              "calculation_method": comp.calculation_method, "calculation_int": comp.calculation_int}
    if comp.points_possible:
        kwargs["points_possible"] = float(comp.points_possible)
    if mastery_points:
        kwargs["mastery_points"] = float(mastery_points)
    if ratings:
        kwargs["ratings"] = ratings
    return LCompetency(**kwargs)


def _evidence(session: Session, b: _Batch) -> dict[int, dict[str, list[Evidence]]]:
    """Evidence per class and student: outcome results, and activity scores on aligned competencies."""
    out: dict[int, dict[str, list[Evidence]]] = defaultdict(lambda: defaultdict(list))
    enrolled = {cid: set(pids) for cid, pids in b.students.items()}
    comp_class: dict[int, list[int]] = defaultdict(list)
    for cid, comps in b.class_competencies.items():
        for comp in comps:
            comp_class[comp].append(cid)
    act_ids = [a for a, (_c, _m, _x, cat) in b.activities.items() if cat != CHECK_CATEGORY and a in b.alignments]
    if act_ids:
        for rid, pid, aid, score, maximum, at in session.execute(
                select(m.Result.id, m.Result.person_id, m.Result.activity_id, m.Result.score,
                       m.Result.score_maximum, m.Result.scored_at)
                .where(m.Result.activity_id.in_(act_ids), m.Result.status == "active")
                .order_by(m.Result.id)):
            cid, _mid, act_max, _cat = b.activities[aid]
            if pid not in enrolled.get(cid, ()):
                continue
            possible = maximum or act_max
            percent = (score / possible) if (score is not None and possible) else None
            for comp in b.alignments[aid]:
                out[cid][str(pid)].append(Evidence(
                    student_id=str(pid), competency_id=str(comp), score=score, percent=percent,
                    submitted_at=_aware(at), activity_id=str(aid), result_id=str(rid), possible=possible))
    if b.competencies:
        for rid, pid, comp, score, maximum, at in session.execute(
                select(m.Result.id, m.Result.person_id, m.Result.competency_id, m.Result.score,
                       m.Result.score_maximum, m.Result.scored_at)
                .where(m.Result.competency_id.in_(list(b.competencies)), m.Result.activity_id.is_(None),
                       m.Result.status == "active").order_by(m.Result.id)):
            for cid in comp_class.get(comp, ()):
                if pid in enrolled.get(cid, ()):
                    out[cid][str(pid)].append(Evidence(
                        student_id=str(pid), competency_id=str(comp), score=score, submitted_at=_aware(at),
                        result_id=str(rid), possible=maximum))
    return out


def _class_data(session: Session, district: m.District, b: _Batch, today: date) -> list[ClassData]:
    ids = b.class_ids
    evidence = _evidence(session, b)
    overrides: dict[int, list[GateOverride]] = defaultdict(list)
    for o in session.scalars(select(m.GateOverrideRecord).where(m.GateOverrideRecord.class_id.in_(ids),
                                                                m.GateOverrideRecord.revoked_at.is_(None))
                             .order_by(m.GateOverrideRecord.at)):
        overrides[o.class_id].append(GateOverride(str(o.person_id), str(o.module_id), OverrideKind(o.kind),
                                                  by=str(o.author_id or ""), note=o.note, at=_aware(o.at)))
    opened: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    completed: dict[int, dict[str, dict[str, date]]] = defaultdict(lambda: defaultdict(dict))
    for cid, pid, mid, by_mastery, done in session.execute(
            select(m.GateRecord.class_id, m.GateRecord.person_id, m.GateRecord.module_id,
                   m.GateRecord.opened_by_mastery, m.GateRecord.completed_on)
            .where(m.GateRecord.class_id.in_(ids))):
        if by_mastery:
            opened[cid][str(pid)].add(str(mid))
        if done is not None:
            completed[cid][str(pid)][str(mid)] = done
    plans = {p.class_id: p for p in session.scalars(select(m.PacePlanRecord).where(m.PacePlanRecord.class_id.in_(ids)))}
    accommodations: dict[int, dict[str, Accommodation]] = defaultdict(dict)
    for a in session.scalars(select(m.AccommodationRecord).where(m.AccommodationRecord.class_id.in_(ids))):
        accommodations[a.class_id][str(a.person_id)] = Accommodation(str(a.person_id), a.extra_days, a.factor, a.note)
    alerts: dict[int, list[Alert]] = defaultdict(list)
    for a in session.scalars(select(m.AlertRecord).where(m.AlertRecord.class_id.in_(ids),
                                                         m.AlertRecord.resolved_at.is_(None))):
        alerts[a.class_id].append(Alert(str(a.person_id), str(a.class_id), AlertKind(a.kind), a.level,
                                        _aware(a.opened_at), _aware(a.updated_at), a.detail, id=str(a.id)))
    all_students = {p for ps in b.students.values() for p in ps}
    entries: dict[str, list[ProfileEntry]] = defaultdict(list)
    if all_students:
        for e in session.scalars(select(m.ProfileEntryRecord).where(
                m.ProfileEntryRecord.person_id.in_(all_students), m.ProfileEntryRecord.archived_at.is_(None))):
            entries[str(e.person_id)].append(entry_of(e))
    posted: dict[int, dict[str, dict[str, float | None]]] = defaultdict(lambda: defaultdict(dict))
    for cid, pid, aid, score in session.execute(
            select(m.CheckPostRecord.class_id, m.CheckPostRecord.person_id, m.CheckPostRecord.activity_id,
                   m.CheckPostRecord.score).where(m.CheckPostRecord.class_id.in_(ids))):
        posted[cid][str(pid)][str(aid)] = score

    threshold = (district.settings or {}).get("mastery_threshold")
    out = []
    for cid in ids:
        modules = b.modules.get(cid, [])
        comps_of_module: dict[int, set[int]] = defaultdict(set)
        checks: list[MasteryCheck] = []
        for aid, (acid, mid, maximum, category) in b.activities.items():
            if acid != cid or mid is None:
                continue
            if category == CHECK_CATEGORY:
                opens = tuple(str(x.id) for x in modules if mid in (x.prerequisite_ids or []))
                if not opens:
                    later = [x for x in modules if x.id != mid and x.position > next(
                        (y.position for y in modules if y.id == mid), 0)]
                    opens = (str(later[0].id),) if later else ()
                if opens:
                    checks.append(MasteryCheck(str(aid), opens, float(maximum or 1.0)))
            else:
                comps_of_module[mid].update(b.alignments.get(aid, ()))
        lmodules = tuple(LModule(str(x.id), x.title, x.position, tuple(str(p) for p in (x.prerequisite_ids or [])),
                                 tuple(str(c) for c in sorted(comps_of_module.get(x.id, ())))) for x in modules)
        comps = tuple(_competency(b.competencies[c], threshold) for c in sorted(b.class_competencies.get(cid, ()))
                      if c in b.competencies)
        plan_row = plans.get(cid)
        start, end = b.terms.get(cid, (None, None))
        if plan_row is not None:
            start, end = plan_row.start_date or start, plan_row.end_date or end
        pace_plan = plan_from_settings(
            str(cid), start, end, [str(x.id) for x in modules], edits=plan_row.due_edits if plan_row else None,
            skip_weekends=plan_row.skip_weekends if plan_row else True,
            skip_dates=plan_row.skip_dates if plan_row else ())
        students = tuple(str(p) for p in b.students.get(cid, []))
        out.append(ClassData(
            class_id=str(cid), student_ids=students, competencies=comps, modules=lmodules,
            evidence=evidence.get(cid, {}), pace_plan=pace_plan, accommodations=accommodations.get(cid, {}),
            overrides=overrides.get(cid, []),
            previously_opened={s: frozenset(v) for s, v in opened.get(cid, {}).items()},
            completed_on=completed.get(cid, {}), open_alerts=alerts.get(cid, []),
            entries={s: entries.get(s, []) for s in students}, checks=tuple(checks),
            posted=posted.get(cid, {})))
    return out


def entry_of(e: m.ProfileEntryRecord) -> ProfileEntry:
    return ProfileEntry(
        id=str(e.id), student_id=str(e.person_id), kind=EntryKind(e.kind), text=e.text,
        authored_by=str(e.author_id or ""), author_role=e.author_role, created_at=_aware(e.created_at),
        target_date=e.target_date, status=GoalStatus(e.status) if e.status else None,
        competency_id=str(e.competency_id) if e.competency_id else None)


# --------------------------------------------------------------------------- storing


def _store(session: Session, district_id: int, b: _Batch, data: Mapping[str, ClassData], result: ClassResult,
           now: datetime, summary: RecomputeSummary) -> list[tuple[int, int, int, float, float]]:
    cid = int(result.class_id)
    comps = {c.id: c for c in data[result.class_id].competencies}
    session.execute(delete(m.MasteryRecord).where(m.MasteryRecord.class_id == cid))
    rows = [{"district_id": district_id, "class_id": cid, "person_id": int(sid), "competency_id": int(comp_id),
             "score": score.score, "evidence_count": score.count, "mastered": score.mastered,
             "level": level_of(score.score, comps[comp_id]) if comp_id in comps else None,
             "latest_at": score.latest_at, "computed_at": now}
            for sid, scores in result.mastery.items() for comp_id, score in scores.items()]
    if rows:
        session.execute(m.MasteryRecord.__table__.insert(), rows)
    summary.mastery_rows += len(rows)

    existing = {(g.person_id, g.module_id): g for g in session.scalars(
        select(m.GateRecord).where(m.GateRecord.class_id == cid))}
    new_gates = []
    for sid, path in result.paths.items():
        done = result.completed_on.get(sid, {})
        for gate in path.gates:
            key = (int(sid), int(gate.module_id))
            missing = [{"competency_id": x.competency_id, "title": x.title, "module_title": x.module_title,
                        "score": x.score, "needed": x.needed} for x in gate.missing]
            row = existing.pop(key, None)
            completed_on = done.get(gate.module_id)
            if row is None:
                new_gates.append({"district_id": district_id, "class_id": cid, "person_id": key[0],
                                  "module_id": key[1], "status": gate.status.value, "reason": gate.reason.value,
                                  "missing": missing, "opened_by_mastery": gate.opened_by_mastery,
                                  "opened_at": now if gate.status.value != "locked" else None,
                                  "completed_on": completed_on, "updated_at": now})
                continue
            if row.status == "locked" and gate.status.value != "locked":
                row.opened_at = now
            changed = (row.status, row.reason, row.missing, row.opened_by_mastery, row.completed_on) != (
                gate.status.value, gate.reason.value, missing, gate.opened_by_mastery or row.opened_by_mastery,
                completed_on)
            if changed:
                row.status, row.reason, row.missing = gate.status.value, gate.reason.value, missing
                row.opened_by_mastery = gate.opened_by_mastery or (row.opened_by_mastery and
                                                                   gate.reason.value != "closed_by_teacher")
                row.completed_on = completed_on
                row.updated_at = now
    if new_gates:
        session.execute(m.GateRecord.__table__.insert(), new_gates)
    for row in existing.values():  # modules or students no longer in the class
        session.delete(row)

    session.execute(delete(m.PaceRecord).where(m.PaceRecord.class_id == cid))
    pace_rows = [{"district_id": district_id, "class_id": cid, "person_id": int(sid), "state": p.state.value,
                  "phase": p.phase.value, "completed": p.completed, "expected": p.expected, "total": p.total,
                  "modules_behind": p.modules_behind, "days_behind": p.days_behind,
                  "modules_ahead": p.modules_ahead, "days_ahead": p.days_ahead, "next_due": p.next_due,
                  "projected_finish": p.projected_finish, "accommodated": p.accommodated, "computed_at": now}
                 for sid, p in result.pace.items()]
    if pace_rows:
        session.execute(m.PaceRecord.__table__.insert(), pace_rows)

    for alert in result.alerts.to_open:
        session.add(m.AlertRecord(district_id=district_id, class_id=cid, person_id=int(alert.student_id),
                                  kind=alert.kind.value, level=alert.level, detail=alert.detail,
                                  opened_at=alert.opened_at, updated_at=alert.updated_at))
    for alert in result.alerts.to_update:
        session.execute(update(m.AlertRecord).where(m.AlertRecord.id == int(alert.id or 0)).values(
            level=alert.level, detail=alert.detail, updated_at=alert.updated_at))
    for alert in result.alerts.to_resolve:
        session.execute(update(m.AlertRecord).where(m.AlertRecord.id == int(alert.id or 0)).values(
            resolved_at=alert.resolved_at or now, updated_at=now))
    if result.alerts.to_resolve:
        from plugin.alert_messages import withdraw

        withdraw(session, district_id, (int(a.id) for a in result.alerts.to_resolve if a.id))
    summary.alerts_opened += len(result.alerts.to_open)
    summary.alerts_resolved += len(result.alerts.to_resolve)

    today = now.date()
    session.execute(delete(m.ProfileSnapshotRecord).where(m.ProfileSnapshotRecord.class_id == cid,
                                                          m.ProfileSnapshotRecord.taken_on == today))
    snaps = [{"district_id": district_id, "class_id": cid, "person_id": int(sid), "taken_on": today,
              "data": snapshot_data(snap)} for sid, snap in result.profiles.items()]
    if snaps:
        session.execute(m.ProfileSnapshotRecord.__table__.insert(), snaps)
    summary.problems.extend(f"class {cid}: {p}" for p in result.problems)
    return [(cid, int(p.student_id), int(p.activity_id), p.score, p.score_maximum) for p in result.check_posts]


def snapshot_data(snap: Any) -> dict[str, Any]:
    """A profile snapshot as JSON-safe data (skills as competency id → score, mastered)."""
    return {
        "skills": {s.competency_id: [s.score, s.mastered, s.count] for s in snap.skills},
        "gaps": list(snap.gaps), "unassessed": list(snap.unassessed),
        "strengths": list(snap.strengths), "weaknesses": list(snap.weaknesses),
    }


# --------------------------------------------------------------------------- writes to the LMS


def _queue_check_posts(session: Session, district_id: int, posts: list[tuple[int, int, int, float, float]],
                       now: datetime) -> int:
    """Queue the mastery-check scores in the outbox, addressed in the target system's own ids."""
    from connectors import outbox

    if not posts:
        return 0
    queued = 0
    for cid, pid, aid, score, maximum in posts:
        target = _write_target(session, district_id, cid)
        if target is None:
            continue
        target_obj, namespace = target
        ids = _external_ids(session, district_id, namespace, cid, pid, aid)
        if ids is None:
            continue
        class_ext, person_ext, activity_ext = ids
        write = ScoreWrite(class_sourced_id=class_ext, activity_sourced_id=activity_ext,
                           person_sourced_id=person_ext, score_given=score, score_maximum=maximum, timestamp=now,
                           comment="Mastery shown in Trailmark" if score else "Closed by the teacher in Trailmark")
        if outbox.enqueue(session, district_id, target_obj, write, outbox.score_key(target_obj, write), now=now):
            queued += 1
        row = session.scalars(select(m.CheckPostRecord).where(m.CheckPostRecord.person_id == pid,
                                                              m.CheckPostRecord.activity_id == aid)).first()
        if row is None:
            session.add(m.CheckPostRecord(district_id=district_id, class_id=cid, person_id=pid, activity_id=aid,
                                          score=score, queued_at=now))
        else:
            row.score, row.queued_at = score, now
    return queued


WRITE_SOURCE_KINDS = ("canvas", "moodle", "lti")  # sources a class's scores and messages are written back to


def _write_target(session: Session, district_id: int, class_id: int) -> tuple[Any, str] | None:
    """Where a class's scores go: the source the class came from, else the LTI platform it was launched from."""
    refs = session.execute(select(m.ExternalRef.namespace).where(
        m.ExternalRef.district_id == district_id, m.ExternalRef.kind == "class", m.ExternalRef.entity_id == class_id,
        m.ExternalRef.status == "active")).scalars().all()
    sources = {s.name: s for s in session.scalars(select(m.Source).where(m.Source.district_id == district_id))}
    for ns in refs:
        if ns in sources and sources[ns].kind in WRITE_SOURCE_KINDS:
            return sources[ns], ns
    for ns in refs:
        if ns.startswith("lti:"):
            platform = session.get(m.Platform, int(ns[4:]))
            if platform is not None:
                return platform, ns
    return None


def _external_ids(session: Session, district_id: int, namespace: str, class_id: int, person_id: int,
                  activity_id: int) -> tuple[str, str, str] | None:
    found = queries.external_ids(session, district_id, namespace, {"class": [class_id], "person": [person_id],
                                                    "activity": [activity_id]})
    person = found.get(("person", person_id))
    klass = found.get(("class", class_id))
    if person is None or klass is None:
        return None
    activity = found.get(("activity", activity_id))
    if activity is None:
        act = session.get(m.Activity, activity_id)
        if act is None:
            return None
        activity = act.sourced_id  # a Trailmark item the platform knows by its resource id
    return klass, person, activity


# --------------------------------------------------------------------------- entry points


def recompute(session: Session, district_id: int, class_ids: Iterable[int] | None = None, *,
              now: datetime | None = None, settings: LearningSettings | None = None) -> RecomputeSummary:
    """Recompute the learning state of some classes (all of the district's active classes when None)."""
    from plugin import alert_messages

    now = now or datetime.now(UTC)
    district = session.get(m.District, district_id)
    if district is None:
        raise LookupError(f"no district {district_id}")
    if class_ids is None:
        ids = list(session.scalars(select(m.Class.id).where(m.Class.district_id == district_id,
                                                            m.Class.status == "active").order_by(m.Class.id)))
    else:
        ids = sorted(set(session.scalars(select(m.Class.id).where(
            m.Class.district_id == district_id, m.Class.id.in_(list(class_ids))))))
    summary = RecomputeSummary()
    today = now.date()
    for chunk in _chunks(ids):
        batch = _load_batch(session, district_id, chunk)
        datas = {d.class_id: d for d in _class_data(session, district, batch, today)}
        posts: list[tuple[int, int, int, float, float]] = []
        for data in datas.values():
            result = recompute_class(data, today=today, now=now, settings=settings)
            posts.extend(_store(session, district_id, batch, datas, result, now, summary))
            summary.classes += 1
            summary.students += len(data.student_ids)
        summary.checks_queued += _queue_check_posts(session, district_id, posts, now)
        summary.gates_queued += lms_gates.refresh(session, district_id, datas.values(), now=now)
        session.flush()
        alert_messages.queue_alert_messages(session, district, chunk, now=now, summary=summary)
    if summary.problems:
        log.warning("progress.problems district=%s count=%d first=%s", district_id, len(summary.problems),
                    summary.problems[0])
    return summary


def on_sync_applied(session: Session, district_id: int, changed_class_ids: Iterable[int]) -> None:
    """The sync engine's hook: refresh the classes a sync changed, in the same transaction."""
    recompute(session, district_id, list(changed_class_ids))
