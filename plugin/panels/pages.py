"""Everything one panel page shows, gathered in a fixed number of queries (never one per student).

Each function reads rows through ``plugin.store.queries``, applies the rules through ``plugin.panels.present``
and returns the template's context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from plugin import alert_messages, lms_gates
from plugin.learning.pace import pace_line
from plugin.panels import charts, present
from plugin.store import queries


def class_page(session: Session, district_id: int, class_id: int, *, today: date, sort: str) -> dict[str, Any]:
    """The teacher's class view: alerts, pace chart, mastery grid, groups, overrides."""
    info = queries.class_info(session, district_id, [class_id]).get(class_id)
    if info is None:
        return {"klass": None}
    students = queries.student_infos(session, district_id, class_id)
    modules = queries.module_infos(session, district_id, [class_id])
    competencies = queries.competency_infos(session, district_id, [class_id])
    scores = queries.class_scores(session, district_id, class_id)
    pace = queries.class_pace(session, district_id, class_id)
    completions = queries.class_completions(session, district_id, class_id)
    alerts = queries.open_alerts(session, district_id, class_id)
    overrides = queries.active_overrides(session, district_id, [class_id])
    plan_row = queries.pace_plans(session, district_id, [class_id]).get(class_id)
    accommodated = queries.accommodations(session, district_id, [class_id])

    by_id = {s.id: s for s in students}
    module_by_id = {m.id: m for m in modules}
    columns, module_groups = present.columns_for(competencies, modules)
    plan = present.plan_for(info, plan_row, [m.id for m in modules])
    rows = present.grid_rows(students, columns, scores, pace, sort)
    chart_rows = present.chart_rows(students, pace, completions)
    counts = present.class_counts(pace)
    chart = None
    if plan is not None and chart_rows:
        behind = counts.get("behind", 0)
        summary = (f"{len(chart_rows)} students. {behind} behind the minimum pace, {counts.get('on_track', 0)} on "
                   f"track, {counts.get('ahead', 0)} ahead, {counts.get('far_ahead', 0)} far ahead. The table "
                   f"below the chart lists every student.")
        chart = charts.pace_chart(
            chart_id="pace", start=plan.start, end=plan.end, today=today,
            line=pace_line(plan), total=len(plan.due),
            students=[charts.ChartStudent(r.student.display_name, r.student.given_name or r.student.display_name,
                                          r.state, r.completed, completions.get(r.student.id, ()))
                      for r in chart_rows],
            title=f"Modules completed in {info.title} against the minimum pace", summary=summary)
    return {
        "klass": info, "students": students, "modules": modules, "columns": columns,
        "module_groups": module_groups, "rows": rows, "sort": sort, "bands": present.BANDS,
        "alerts": present.alert_views(alerts, by_id, today), "chart": chart, "chart_rows": chart_rows,
        "alert_delivery": (delivered := alert_messages.delivery(session, district_id, {a.id: a.level for a in alerts})),
        "alert_not_sent": alert_messages.not_sent_reasons(session, district_id, class_id, [
            (a.id, a.kind, a.level) for a in alerts if a.id not in delivered]),
        "plan": plan, "plan_lines": present.plan_lines(plan, modules), "counts": counts,
        "groups": present.groups_for(students, columns, scores),
        "overrides": present.override_views(overrides, by_id, module_by_id),
        "accommodations": {a.person_id: a for a in accommodated}, "far_behind_days": present.far_behind_days(),
        "lms_gates": lms_gates.class_gates(session, district_id, class_id),
        "today": today,
    }


def plan_page(session: Session, district_id: int, class_id: int) -> dict[str, Any]:
    """The pace plan editor: module due dates (evenly spread unless edited) and students' extra days."""
    info = queries.class_info(session, district_id, [class_id]).get(class_id)
    if info is None:
        return {"klass": None}
    modules = queries.module_infos(session, district_id, [class_id])
    plan_row = queries.pace_plans(session, district_id, [class_id]).get(class_id)
    plan = present.plan_for(info, plan_row, [m.id for m in modules])
    students = queries.student_infos(session, district_id, class_id)
    accommodated = queries.accommodations(session, district_id, [class_id])
    by_id = {s.id: s for s in students}
    return {
        "klass": info, "modules": modules, "plan": plan, "plan_row": plan_row,
        "lines": present.plan_lines(plan, modules), "students": students,
        "accommodations": [(by_id[a.person_id], a) for a in accommodated if a.person_id in by_id],
        "skip_weekends": plan.skip_weekends if plan else (plan_row.skip_weekends if plan_row else True),
        "start": plan.start if plan else info.term_start, "end": plan.end if plan else info.term_end,
    }


def profile_page(session: Session, district_id: int, student: Any, *, own: bool, viewer_id: int | None,
                 viewer_view: str, today: date, override_class_id: int | None = None,
                 classes: Mapping[int, queries.ClassInfo] | None = None) -> dict[str, Any]:
    """A learner profile: per class the path, pace, skills and growth; goals, interests, feedback.

    ``override_class_id`` is the class whose gates the viewer may override from this page (a teacher's launch
    class, when they teach it). ``classes``: the student's classes when the caller has read them already.
    """
    infos = dict(classes) if classes is not None else queries.student_classes(session, district_id, student.id)
    class_ids = list(infos)
    modules = queries.module_infos(session, district_id, class_ids)
    competencies = queries.competency_infos(session, district_id, class_ids)
    # Scores only show against competencies, and gates and pace plans only against modules: without any, the
    # page shows the same without reading them (a class whose content has not been synced yet).
    mastery = queries.student_mastery(session, district_id, student.id) if competencies else []
    gates = queries.student_gates(session, district_id, student.id) if modules else []
    pace = queries.student_pace(session, district_id, student.id, class_ids)
    snapshots = queries.student_snapshots(session, district_id, student.id, class_ids)
    plans = queries.pace_plans(session, district_id, class_ids) if modules else {}
    accommodated = {a.class_id: a for a in queries.accommodations(session, district_id, class_ids, student.id)}
    # Overrides show only to a teacher who may change them, in their launch class (see can_override below).
    overrides = (queries.active_overrides(session, district_id, [override_class_id], student.id)
                 if override_class_id in infos else [])
    entries = queries.profile_entries(session, district_id, student.id)
    feedback = queries.recent_feedback(session, district_id, student.id, class_ids)
    taught: Sequence[int] = ()
    if viewer_view == "teacher" and viewer_id is not None:
        taught = queries.teacher_class_ids(session, district_id, viewer_id)

    classes = []
    for cid in sorted(class_ids, key=lambda c: infos[c].title if c in infos else ""):
        info = infos.get(cid)
        if info is None:
            continue
        class_modules = [m for m in modules if m.class_id == cid]
        plan = present.plan_for(info, plans.get(cid), [m.id for m in class_modules])
        profile = present.class_profile(
            student=student, own=own, info=info, modules=class_modules,
            competencies=[c for c in competencies if c.class_id == cid],
            mastery=[r for r in mastery if r.class_id == cid], gates=[g for g in gates if g.class_id == cid],
            pace=pace.get(cid), snapshots=[s for s in snapshots if s.class_id == cid], plan=plan,
            accommodation=accommodated.get(cid), overrides=[o for o in overrides if o.class_id == cid])
        classes.append({"profile": profile, "pace_chart": _student_pace_chart(profile, student, own, today),
                        "growth_chart": _growth_chart(profile, student, own),
                        "dues": present.student_dues(plan, profile.accommodation) if plan else {},
                        "can_override": cid == override_class_id and cid in taught})
    grouped = present.entry_views(entries, today=today, own=own,
                                  teaches=viewer_view == "teacher" and bool(set(taught) & set(class_ids)))
    if own:
        kinds = [("goal", "Goal"), ("interest", "Interest"), ("aspiration", "Aspiration")]
    elif viewer_view == "teacher" and set(taught) & set(class_ids):
        kinds = [("goal", "Goal (set together with the student)"), ("note", "Teacher's note")]
    else:
        kinds = []
    all_competencies = {c.id: c for c in competencies}
    return {
        "student": student, "own": own, "classes": classes, "entries": grouped, "add_kinds": kinds,
        "feedback": present.feedback_views(feedback, infos), "today": today, "competencies": all_competencies,
        "bands": present.BANDS,
    }


def _student_pace_chart(profile: present.ClassProfile, student: Any, own: bool, today: date) -> Any:
    plan, pace = profile.plan, profile.pace
    if plan is None or pace is None:
        return None
    name = "You" if own else (student.given_name or student.display_name)
    line = present.student_line(plan, profile.accommodation)
    summary = (f"{name}: {pace.completed} of {pace.total} modules completed; expected by today: {pace.expected}. "
               f"{present.pace_sentence(pace).capitalize()}.")
    return charts.pace_chart(
        chart_id=f"pace-{profile.klass.id}", start=plan.start, end=plan.end, today=today, line=line,
        total=len(plan.due), students=[charts.ChartStudent(name, name, pace.state, pace.completed,
                                                           profile.completions)],
        title=f"{'Your' if own else name + chr(39) + 's'} modules completed in {profile.klass.title} against the "
              f"minimum pace", summary=summary)


def _growth_chart(profile: present.ClassProfile, student: Any, own: bool) -> Any:
    if len(profile.growth) < 2:
        return None
    first, last = profile.growth[0], profile.growth[-1]
    who = "You" if own else (student.given_name or student.display_name)
    summary = (f"{who} mastered {first.mastered} of {profile.total_competencies} competencies on "
               f"{present.day_text(first.day)} and {last.mastered} on {present.day_text(last.day)}.")
    return charts.growth_chart(chart_id=f"growth-{profile.klass.id}",
                               points=[(p.day, p.mastered) for p in profile.growth],
                               total=profile.total_competencies,
                               title=f"Competencies mastered over the term in {profile.klass.title}",
                               summary=summary)
