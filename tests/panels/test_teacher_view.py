"""The teacher's class view through a real sandbox launch: grid, alerts, pace chart, groups, overrides, pace plan."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import event, select

from plugin.store.db import get_store
from plugin.store.models import (
    AlertRecord,
    AuditEvent,
    Enrollment,
    GateOverrideRecord,
    GateRecord,
    Module,
    PacePlanRecord,
    Person,
    Result,
)
from tests.panels.conftest import section, text_of


def _grid_rows(html: str) -> list[str]:
    grid = section(html, "grid")
    body = grid[grid.index("<tbody>"):grid.index("</tbody>")]
    return re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)


def _row(html: str, name: str) -> str:
    return next(r for r in _grid_rows(html) if name in r)


def _modules(app) -> dict[int, int]:
    with get_store(app).session() as s:
        return {m.position: m.id for m in s.scalars(select(Module))}


def _gate(app, person_id: int, module_id: int) -> GateRecord:
    with get_store(app).session() as s:
        return s.scalars(select(GateRecord).where(GateRecord.person_id == person_id,
                                                  GateRecord.module_id == module_id)).one()


def test_grid_shows_each_level_by_letter_and_words(launch):
    teacher = launch("teacher")
    html = teacher.html
    assert "Algebra I — Period 2" in html
    aiden = _row(html, "Aiden Mensah")
    cells = re.findall(r'<td class="c c-(\w+)">(.)<span class="sr-only"> ([^<]+)</span></td>', aiden)
    assert len(cells) == 9  # one per competency
    assert cells[0] == ("m", "M", "Mastery, 3.18 of 4")
    assert cells[1] == ("b", "B", "Well below, 1.79 of 4")
    assert cells[2] == ("na", "–", "not assessed")
    maya = _row(html, "Maya Okafor")
    assert '<td class="c c-n">N<span class="sr-only"> Near mastery, 2.8 of 4</span></td>' in maya
    sofia = _row(html, "Sofia Haddad")
    assert '<td class="c c-e">E<span class="sr-only"> Exceeds, 4 of 4</span></td>' in sofia
    # the legend explains every letter, and columns carry the competency's name for screen readers
    legend = text_of(section(html, "grid"))
    for words in ("Exceeds (E)", "Mastered (M)", "Near (N)", "Below (B)", "Not assessed (–)"):
        assert words in legend
    assert '<span class="sr-only">1.2 Solve multi-step equations</span>' in html
    assert "Module 2: Inequalities" in html


def test_grid_is_ordered_by_name_or_pace_or_mastery(launch):
    teacher = launch("teacher")

    def order(html: str) -> list[str]:
        return [re.search(r">([A-Z][a-z]+ [A-Z][a-z]+)</a></th>", r).group(1) for r in _grid_rows(html)]

    assert order(teacher.html) == ["Sofia Haddad", "Zara Kowalski", "Noah Lindqvist", "Aiden Mensah",
                                   "Maya Okafor", "Leo Park"]
    by_pace = teacher.get("/p/teacher", sort="pace").get_data(as_text=True)
    assert order(by_pace) == ["Aiden Mensah", "Noah Lindqvist", "Maya Okafor", "Leo Park", "Zara Kowalski",
                              "Sofia Haddad"]
    by_mastery = teacher.get("/p/teacher", sort="mastery").get_data(as_text=True)
    assert order(by_mastery)[0] == "Aiden Mensah" and order(by_mastery)[-1] == "Sofia Haddad"
    assert teacher.get("/p/teacher", sort="nonsense").status_code == 200


def test_alerts_inbox_lists_open_alerts_by_urgency(launch):
    alerts = text_of(section(launch("teacher").html, "alerts"))
    assert "(3 open)" in alerts
    assert alerts.index("Aiden Mensah") < alerts.index("Noah Lindqvist") < alerts.index("Sofia Haddad")
    assert "Aiden Mensah Far behind Level 3 of 3 2 modules (22 days) behind the minimum pace Opened today" in alerts
    assert "Noah Lindqvist Behind Level 2 of 3 1 module (8 days) behind the minimum pace" in alerts
    assert "Sofia Haddad Far ahead Level 1 of 3 2 modules ahead of the minimum pace" in alerts
    assert "Maya" not in alerts and "Leo" not in alerts


def test_alert_age_is_shown(launch, app):
    with get_store(app).session() as s:
        alert = s.scalars(select(AlertRecord).where(AlertRecord.kind == "far_ahead")).one()
        alert.opened_at = datetime.now(UTC) - timedelta(days=5)
    alerts = text_of(section(launch("teacher").html, "alerts"))
    assert "5 days" in alerts


def test_pace_chart_has_every_student_shaped_and_a_table(launch):
    html = launch("teacher").html
    pace = section(html, "pace")
    assert '<svg class="chart"' in pace and 'role="img"' in pace
    assert "Modules completed in Algebra I — Period 2 against the minimum pace" in pace
    assert "2 behind the minimum pace, 2 on track, 1 ahead, 1 far ahead" in pace
    for label in ("Aiden Mensah: 0 of 5 modules, behind", "Noah Lindqvist: 1 of 5 modules, behind",
                  "Maya Okafor: 2 of 5 modules, on track", "Zara Kowalski: 3 of 5 modules, ahead",
                  "Sofia Haddad: 4 of 5 modules, far ahead"):
        assert f"<title>{label}</title>" in pace
    assert "<title>Minimum pace</title>" in pace and ">Today</text>" in pace
    table = text_of(pace[pace.index("The chart as a table"):])
    assert "Aiden Mensah extra days 0 of 5 2 Behind 2 modules (22 days) behind the minimum pace" in table
    assert "Leo Park 2 of 5 2 On track" in table
    # the key names each shape in words
    assert "Behind (triangle down)" in pace and "Far ahead (diamond)" in pace


def test_groups_join_students_sharing_a_gap(launch):
    groups = text_of(section(launch("teacher").html, "groups"))
    assert "Identify functions (3.1) Noah Lindqvist, Maya Okafor 2 students; average 2.6" in groups
    assert "Evaluate functions (3.2) Maya Okafor, Leo Park 2 students; average 2.4" in groups


def test_class_view_is_audited(launch, app):
    launch("teacher")
    with get_store(app).session() as s:
        actions = [e.action for e in s.scalars(select(AuditEvent))]
    assert "view_class" in actions


def test_override_opens_a_locked_module_and_the_student_sees_why(launch, app, people):
    modules = _modules(app)
    assert _gate(app, people["aiden"], modules[2]).status == "locked"
    teacher = launch("teacher")
    resp = teacher.post("/p/teacher/overrides", {"student_id": people["aiden"], "module_id": modules[2],
                                                 "kind": "shown_mastery", "note": "Solved them aloud with me."})
    assert resp.status_code == 303 and "done=override" in resp.headers["Location"]
    gate = _gate(app, people["aiden"], modules[2])
    assert (gate.status, gate.reason) == ("open", "shown_mastery")
    page = text_of(teacher.client.get(resp.headers["Location"]).get_data(as_text=True))
    assert "Saved. The student's path has been recomputed." in page
    assert "Aiden Mensah Inequalities Opened: has shown mastery another way Solved them aloud with me." in page
    with get_store(app).session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "gate_override")).one()
        assert event.subject == f"person:{people['aiden']}" and event.detail["kind"] == "shown_mastery"
    student = text_of(launch("aiden").html)
    assert "Inequalities Open Your teacher opened this module: you have shown mastery another way." in student
    assert "Solved them aloud" not in student  # the teacher's note stays with teachers


def test_close_again_then_remove_returns_to_the_rules(launch, app, people):
    modules = _modules(app)
    teacher = launch("teacher")
    assert teacher.post("/p/teacher/overrides", {"student_id": people["noah"], "module_id": modules[3],
                                                 "kind": "closed_by_teacher", "note": "Finish inequalities first"}
                        ).status_code == 303
    assert (_gate(app, people["noah"], modules[3]).status, _gate(app, people["noah"], modules[3]).reason) == (
        "locked", "closed_by_teacher")
    noah = text_of(launch("noah").html)
    assert "Your teacher has closed this module for now." in noah
    assert "Ask your teacher what to work on before it reopens." in noah
    with get_store(app).session() as s:
        latest = s.scalars(select(GateOverrideRecord).where(GateOverrideRecord.kind == "closed_by_teacher")).one()
    resp = teacher.post(f"/p/teacher/overrides/{latest.id}/remove", {})
    assert resp.status_code == 303
    # the earlier "shown mastery" decision is the newest one in effect again
    assert _gate(app, people["noah"], modules[3]).reason == "shown_mastery"
    with get_store(app).session() as s:
        for o in s.scalars(select(GateOverrideRecord).where(GateOverrideRecord.revoked_at.is_(None))):
            teacher.post(f"/p/teacher/overrides/{o.id}/remove", {})
    gate = _gate(app, people["noah"], modules[3])
    assert (gate.status, gate.reason) == ("locked", "missing_mastery")
    assert gate.missing[0]["title"] == "Solve linear inequalities"
    assert teacher.post(f"/p/teacher/overrides/{latest.id}/remove", {}).status_code == 404


def test_override_form_is_keyboard_free_of_surprises_and_validated(launch, app, people):
    modules = _modules(app)
    teacher = launch("teacher")
    cases = [
        ({"student_id": people["parent"], "module_id": modules[2], "kind": "shown_mastery"},
         "Student: choose a student of this class."),
        ({"student_id": people["aiden"], "module_id": 999999, "kind": "shown_mastery"},
         "Module: choose a module of this class."),
        ({"student_id": "", "module_id": modules[2], "kind": "shown_mastery"}, "Student: Choose from the list."),
        ({"student_id": people["aiden"], "module_id": modules[2], "kind": "delete_everything"},
         "Choose what to do with the module."),
        ({"student_id": people["aiden"], "module_id": modules[2], "kind": "shown_mastery", "note": "x" * 1001},
         "Note: Keep it to 1000 characters or fewer (this has 1001)."),
    ]
    for data, message in cases:
        resp = teacher.post("/p/teacher/overrides", data)
        assert resp.status_code == 400, data
        html = resp.get_data(as_text=True)
        assert message in text_of(html), (message, text_of(section(html, "overrides"))[-400:])
        assert 'role="alert"' in html
    with get_store(app).session() as s:
        assert s.scalars(select(GateOverrideRecord).where(GateOverrideRecord.person_id == people["aiden"])).first() \
            is None


def test_posts_without_the_csrf_token_are_refused(launch, app, people):
    modules = _modules(app)
    teacher = launch("teacher")
    data = {"student_id": people["aiden"], "module_id": modules[2], "kind": "shown_mastery"}
    assert teacher.post("/p/teacher/overrides", data, csrf=False).status_code == 400
    assert teacher.post("/p/teacher/overrides", {**data, "csrf_token": "forged"}, csrf=False).status_code == 400
    assert teacher.post("/p/teacher/pace-plan", {"action": "reset"}, csrf=False).status_code == 400
    assert teacher.post("/p/teacher/accommodations", {"student_id": people["noah"], "extra_days": 3},
                        csrf=False).status_code == 400
    with get_store(app).session() as s:
        assert s.scalars(select(GateOverrideRecord).where(GateOverrideRecord.person_id == people["aiden"])).first() \
            is None


def test_students_and_parents_cannot_use_teacher_actions(launch, app, people):
    modules = _modules(app)
    for who in ("leo", "parent"):
        launched = launch(who)
        resp = launched.client.post(f"/p/teacher/overrides?ltik={launched.ltik}", data={
            "student_id": people[who], "module_id": modules[2], "kind": "shown_mastery",
            "csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', launched.html).group(1)
            if "csrf_token" in launched.html else ""})
        assert resp.status_code in (400, 403)
        assert launched.get("/p/teacher/pace-plan").status_code == 403


def test_pace_plan_moves_due_dates_and_alerts_follow(launch, app, people):
    modules = _modules(app)
    teacher = launch("teacher")
    page = teacher.get("/p/teacher/pace-plan")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Module due dates" in html and f'name="due_{modules[1]}"' in html
    dates = dict(re.findall(r'name="due_(\d+)" value="([0-9-]+)"', html))
    later = (datetime.now(UTC).date() + timedelta(days=3)).isoformat()
    form = {f"due_{mid}": day for mid, day in dates.items()}
    form.update({f"due_{modules[1]}": later, f"due_{modules[2]}": later, "action": "save"})
    resp = teacher.post("/p/teacher/pace-plan", form)
    assert resp.status_code == 303
    with get_store(app).session() as s:
        plan = s.scalars(select(PacePlanRecord)).one()
        assert plan.due_edits == {str(modules[1]): later, str(modules[2]): later}
        open_alerts = {(a.person_id, a.kind) for a in s.scalars(select(AlertRecord).where(
            AlertRecord.resolved_at.is_(None)))}
    assert (people["aiden"], "behind") not in open_alerts and (people["noah"], "behind") not in open_alerts
    alerts = text_of(section(teacher.get("/p/teacher").get_data(as_text=True), "alerts"))
    assert "Aiden" not in alerts and "Noah Lindqvist Behind" not in alerts
    assert "Noah Lindqvist Stalled Level 3 of 3 no module completed in 25 days" in alerts  # on pace, but idle
    edited = teacher.get("/p/teacher/pace-plan").get_data(as_text=True)
    assert edited.count('<span class="tag">edited</span>') == 2
    # spreading evenly again puts the alerts back
    assert teacher.post("/p/teacher/pace-plan", {"action": "reset", "skip_weekends": ""}).status_code == 303
    with get_store(app).session() as s:
        assert s.scalars(select(PacePlanRecord)).one().due_edits == {}
    assert "Aiden Mensah" in section(teacher.get("/p/teacher").get_data(as_text=True), "alerts")


def test_pace_plan_rejects_bad_dates_with_a_clear_message(launch, app):
    modules = _modules(app)
    teacher = launch("teacher")
    resp = teacher.post("/p/teacher/pace-plan", {f"due_{modules[2]}": "2026-02-30", "action": "save"})
    assert resp.status_code == 400
    assert "Due date for Inequalities: Enter a date as YYYY-MM-DD" in text_of(resp.get_data(as_text=True))
    resp = teacher.post("/p/teacher/pace-plan", {f"due_{modules[2]}": "1999-01-01", "action": "save"})
    assert resp.status_code == 400
    assert "Due date for Inequalities: 1999-01-01 is outside the term" in text_of(resp.get_data(as_text=True))
    resp = teacher.post("/p/teacher/pace-plan", {"start_date": "2026-05-01", "end_date": "2026-04-01"})
    assert resp.status_code == 400
    assert "Term end: The term must end after it starts." in text_of(resp.get_data(as_text=True))


def test_extra_days_change_a_students_pace(launch, app, people):
    teacher = launch("teacher")
    resp = teacher.post("/p/teacher/accommodations", {"student_id": people["noah"], "extra_days": "10",
                                                      "note": "Family leave"})
    assert resp.status_code == 303
    plan = text_of(teacher.get("/p/teacher/pace-plan").get_data(as_text=True))
    assert "Noah Lindqvist 10 Family leave" in plan
    alerts = text_of(section(teacher.get("/p/teacher").get_data(as_text=True), "alerts"))
    assert "Noah Lindqvist Behind" not in alerts
    assert "Noah Lindqvist Stalled" in alerts  # back on pace, but nothing completed for 25 days
    noah = text_of(launch("noah").html)
    assert "You have 10 extra days on every due date." in noah
    for bad, message in (("-1", "Enter a whole number of days from 0 to 365."),
                         ("many", "Enter a whole number of days from 0 to 365."),
                         ("400", "Enter a whole number of days from 0 to 365.")):
        resp = teacher.post("/p/teacher/accommodations", {"student_id": people["noah"], "extra_days": bad})
        assert resp.status_code == 400 and message in text_of(resp.get_data(as_text=True))
    assert teacher.post("/p/teacher/accommodations/remove", {"student_id": people["noah"]}).status_code == 303
    alerts = text_of(section(teacher.get("/p/teacher").get_data(as_text=True), "alerts"))
    assert "Noah Lindqvist Behind" in alerts and "Stalled" not in alerts


def test_teacher_view_reads_a_fixed_number_of_queries_whatever_the_class_size(launch, app, people):
    teacher = launch("teacher")
    engine = get_store(app).engine
    statements: list[str] = []

    def count(*args):
        statements.append(args[2])

    def measure() -> int:
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert teacher.get("/p/teacher").status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(statements)

    small = measure()
    now = datetime.now(UTC)
    with get_store(app).session() as s:
        class_id = s.scalars(select(Enrollment.class_id)).first()
        activity_ids = [r.activity_id for r in s.scalars(select(Result))][:3]
        district_id = s.get(Person, people["leo"]).district_id
        for i in range(12):
            p = Person(district_id=district_id, sourced_id=f"extra-{i}", role="student", given_name=f"Extra{i}",
                       family_name="Student", status="active", updated_at=now)
            s.add(p)
            s.flush()
            s.add(Enrollment(district_id=district_id, sourced_id=f"extra-enr-{i}", class_id=class_id, person_id=p.id,
                             role="student", status="active", updated_at=now))
            for j, aid in enumerate(activity_ids):
                s.add(Result(district_id=district_id, sourced_id=f"extra-r-{i}-{j}", person_id=p.id, activity_id=aid,
                             score=5.0 + j, score_maximum=10.0, scored_at=now - timedelta(days=j + 1),
                             status="active", updated_at=now))
        from plugin.progress import recompute

        recompute(s, district_id, [class_id], now=now)
    assert measure() == small
    assert small <= 20


def test_changing_the_weekends_rule_moves_dates_nobody_edited(launch, app):
    modules = _modules(app)
    teacher = launch("teacher")
    html = teacher.get("/p/teacher/pace-plan").get_data(as_text=True)
    shown = dict(re.findall(r'name="due_(\d+)" value="([0-9-]+)"', html))
    moved = (date.fromisoformat(shown[str(modules[3])]) + timedelta(days=2)).isoformat()
    form = {f"due_{mid}": day for mid, day in shown.items()}
    form.update({f"due_{modules[3]}": moved, "skip_weekends": "on", "action": "save"})
    assert teacher.post("/p/teacher/pace-plan", form).status_code == 303
    with get_store(app).session() as s:
        plan = s.scalars(select(PacePlanRecord)).one()
        assert plan.skip_weekends is True
        assert plan.due_edits == {str(modules[3]): moved}  # the others follow the new spread
    again = dict(re.findall(r'name="due_(\d+)" value="([0-9-]+)"',
                            teacher.get("/p/teacher/pace-plan").get_data(as_text=True)))
    assert again[str(modules[3])] == moved
    assert all(date.fromisoformat(day).weekday() < 5 for mid, day in again.items() if mid != str(modules[3]))
