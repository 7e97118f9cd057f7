"""Learner profiles through real sandbox launches: the student's own (path, pace, goals), parents', teachers'."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select

from plugin.store.db import get_store
from plugin.store.models import AuditEvent, GuardianLink, ProfileEntryRecord
from tests.panels.conftest import section, text_of


def _entries(app, person_id: int, kind: str | None = None) -> list[ProfileEntryRecord]:
    with get_store(app).session() as s:
        query = select(ProfileEntryRecord).where(ProfileEntryRecord.person_id == person_id,
                                                 ProfileEntryRecord.archived_at.is_(None))
        if kind:
            query = query.where(ProfileEntryRecord.kind == kind)
        return list(s.scalars(query.order_by(ProfileEntryRecord.id)))


def _path(html: str) -> list[str]:
    ol = html[html.index('<ol class="path"'):]
    ol = ol[:ol.index("</ol>")]
    return [text_of(li) for li in re.findall(r"<li class=.*?</li>", ol, flags=re.S)]


# --------------------------------------------------------------------------- the student's own view


def test_student_path_shows_locks_reasons_and_the_next_step(launch):
    html = launch("aiden").html
    steps = _path(html)
    assert steps[0] == ("Linear equations Open Next step This module has no prerequisites. To complete it, master "
                        "Solve multi-step equations (1.79 of 3 points so far).")
    assert steps[1] == ("Inequalities Locked Locked until you master Solve multi-step equations (from Linear "
                        "equations). Next: work on Solve multi-step equations in Linear equations (1.79 of 3 points "
                        "so far).")
    assert steps[3].startswith("Linear functions Locked Locked until you master Identify functions and Evaluate "
                               "functions (from Functions).")
    assert "(no evidence yet)" in steps[3]
    assert 'class="s-open next" aria-current="step"' in html
    assert "Next: continue with Linear equations." in text_of(html)


def test_student_sees_pace_status_and_projection(launch):
    aiden = text_of(launch("aiden").html)
    assert "Behind — 2 modules (22 days) behind the minimum pace." in aiden
    assert "0 of 5 modules complete; 2 expected by today." in aiden
    assert "You have 7 extra days on every due date." in aiden
    assert "Projected finish: not enough recent work to project." in aiden
    maya = text_of(launch("maya").html)
    assert "On track." in maya and "2 of 5 modules complete" in maya
    projected = re.search(r"Projected finish: (\d+ \w+ \d{4})", maya).group(1)
    assert datetime.strptime(projected, "%d %b %Y").date() > date.today()
    sofia = text_of(launch("sofia").html)
    assert "Far ahead — 2 modules ahead of the minimum pace (far ahead)." in sofia


def test_student_sees_skills_gaps_strengths_and_growth(launch):
    html = launch("leo").html
    page = text_of(html)
    assert "Solve linear inequalities Mastery 3.04 of 4" in page
    assert "Evaluate functions Near mastery 2.4 of 4" in page
    assert "Graph linear functions Not assessed yet" in page
    gaps = page[page.index("Gaps"):page.index("Gaps are competencies")]
    assert "Evaluate functions (Near mastery)" in gaps
    assert "Strengths (above the class average) Identify functions" in gaps
    # growth: weekly snapshots from the term plus today's
    assert "Competencies mastered over the term in Algebra I — Period 2" in html
    growth = page[page.index("Growth over the term"):]
    assert re.search(r"Solve multi-step equations : first assessed by \d+ \w+ \d{4} at 2\.4, now 3\.18 \(\+0\.78\); "
                     r"mastered by \d+ \w+ \d{4}", growth)
    assert re.search(r"Evaluate functions : first assessed by \d+ \w+ \d{4} at 2\.4, now 2\.4 Goals", growth)
    rows = re.findall(r"<tr><th scope=\"row\">[^<]+</th><td>(\d+) of 9</td>", html)
    assert len(rows) == 7 and rows[0] == "0" and rows[-1] == "4"


def test_student_sees_recent_feedback_with_comments(launch):
    feedback = text_of(section(launch("aiden").html, "feedback"))
    assert feedback.startswith("Recent feedback Quiz: Solve multi-step equations — 5 / 10")
    assert "Good set-up. Check the sign each time you move a term across the equals sign." in feedback


def test_student_adds_edits_and_archives_a_goal(launch, app, people):
    leo = launch("leo")
    target = (date.today() + timedelta(days=30)).isoformat()
    resp = leo.post(f"/p/students/{people['leo']}/entries", {"kind": "goal", "text": "  Finish Functions early  ",
                                                             "target_date": target, "status": "active"})
    assert resp.status_code == 303 and resp.headers["Location"].startswith("/p/student?")
    goal = next(e for e in _entries(app, people["leo"], "goal") if e.text == "Finish Functions early")
    assert (goal.target_date.isoformat(), goal.status, goal.author_role) == (target, "active", "student")
    page = text_of(leo.client.get(resp.headers["Location"]).get_data(as_text=True))
    assert "Added to the profile." in page and "Finish Functions early Active target" in page
    resp = leo.post(f"/p/students/{people['leo']}/entries/{goal.id}", {"text": "Finish Functions early",
                                                                        "target_date": target, "status": "achieved"})
    assert resp.status_code == 303
    assert next(e for e in _entries(app, people["leo"]) if e.id == goal.id).status == "achieved"
    assert leo.post(f"/p/students/{people['leo']}/entries/{goal.id}/archive", {}).status_code == 303
    assert goal.id not in [e.id for e in _entries(app, people["leo"])]
    assert "Finish Functions early" not in leo.get("/p/student").get_data(as_text=True)
    for kind in ("interest", "aspiration"):
        assert leo.post(f"/p/students/{people['leo']}/entries", {"kind": kind, "text": f"My {kind}"}
                        ).status_code == 303
    interests = text_of(section(leo.get("/p/student").get_data(as_text=True), "interests"))
    assert "My interest" in interests and "My aspiration" in interests
    with get_store(app).session() as s:
        subject = f"person:{people['leo']}"
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.subject == subject))]
    assert {"profile_entry_added", "profile_entry_edited", "profile_entry_archived"} <= set(actions)


def test_profile_forms_reject_bad_input_with_a_clear_message(launch, app, people):
    leo = launch("leo")
    url = f"/p/students/{people['leo']}/entries"
    before = len(_entries(app, people["leo"]))
    cases = [
        ({"kind": "goal", "text": "   "}, "Text: Write something before saving."),
        ({"kind": "goal", "text": "x" * 501}, "Text: Keep it to 500 characters or fewer (this has 501)."),
        ({"kind": "goal", "text": "Read more", "target_date": "31/12/2026"},
         "Target date: Enter a date as YYYY-MM-DD, for example 2026-03-14."),
        ({"kind": "goal", "text": "Read more", "target_date": "2026-02-30"},
         "Target date: Enter a date as YYYY-MM-DD"),
        ({"kind": "goal", "text": "Read more", "status": "forgotten"}, "Status: Choose a status."),
        ({"kind": "note", "text": "A note about myself"}, "Kind: choose one of the kinds in the list."),
        ({"kind": "secret", "text": "x"}, "Kind: Choose what kind of entry this is."),
    ]
    for data, message in cases:
        resp = leo.post(url, data)
        assert resp.status_code == 400, data
        html = resp.get_data(as_text=True)
        assert message in text_of(html), (data, message)
        assert 'role="alert"' in html
    assert len(_entries(app, people["leo"])) == before
    goal = _entries(app, people["leo"], "goal")[0]
    resp = leo.post(f"/p/students/{people['leo']}/entries/{goal.id}", {"text": "", "status": "active"})
    assert resp.status_code == 400
    html = resp.get_data(as_text=True)
    assert "Text: Write something before saving." in text_of(html)
    assert f'<details class="edit no-print" id="edit-{goal.id}" open>' in html  # the failing form stays open
    assert f'href="#edit-{goal.id}"' in html  # and the summary at the top links to it


def test_students_cannot_change_anothers_profile_or_open_it(launch, app, people):
    leo = launch("leo")
    maya_goal = _entries(app, people["maya"], "goal")[0]
    assert leo.post(f"/p/students/{people['maya']}/entries", {"kind": "goal", "text": "x"}).status_code == 403
    assert leo.post(f"/p/students/{people['maya']}/entries/{maya_goal.id}", {"text": "mine now"}).status_code == 403
    assert leo.post(f"/p/students/{people['maya']}/entries/{maya_goal.id}/archive", {}).status_code == 403
    # through Leo's own address the entry is not his
    assert leo.post(f"/p/students/{people['leo']}/entries/{maya_goal.id}", {"text": "mine now"}).status_code == 404
    assert _entries(app, people["maya"], "goal")[0].text == maya_goal.text
    for other in ("maya", "sofia", "noah", "aiden", "zara", "teacher", "parent"):
        resp = leo.get(f"/p/students/{people[other]}")
        assert resp.status_code == 403, other
        assert "Maya" not in resp.get_data(as_text=True)
    assert leo.get(f"/p/students/{people['leo']}").status_code == 200


def test_students_cannot_change_a_teachers_note(launch, app, people):
    aiden = launch("aiden")
    note = _entries(app, people["aiden"], "note")[0]
    assert aiden.post(f"/p/students/{people['aiden']}/entries/{note.id}", {"text": "gone"}).status_code == 403
    assert aiden.post(f"/p/students/{people['aiden']}/entries/{note.id}/archive", {}).status_code == 403
    assert "Responds well to worked examples" in aiden.html


def test_teacher_co_sets_a_goal_that_the_student_then_sees_and_updates(launch, app, people):
    teacher = launch("teacher")
    page = teacher.get(f"/p/students/{people['maya']}")
    assert "Set a goal together, or add a note" in page.get_data(as_text=True)
    target = (date.today() + timedelta(days=14)).isoformat()
    resp = teacher.post(f"/p/students/{people['maya']}/entries", {"kind": "goal", "text": "Evaluate three functions "
                        "a day", "target_date": target, "status": "active"})
    assert resp.status_code == 303 and f"/p/students/{people['maya']}" in resp.headers["Location"]
    goal = next(e for e in _entries(app, people["maya"], "goal") if e.text.startswith("Evaluate three"))
    assert goal.author_role == "teacher" and goal.author_id == people["teacher"]
    maya = launch("maya")
    goals = text_of(section(maya.html, "goals"))
    assert "Evaluate three functions a day Active target" in goals
    assert "Set together with Amara Rivera" in goals
    assert maya.post(f"/p/students/{people['maya']}/entries/{goal.id}", {
        "text": goal.text, "target_date": target, "status": "achieved"}).status_code == 303
    assert next(e for e in _entries(app, people["maya"]) if e.id == goal.id).status == "achieved"
    # a teacher may not write a student's own interests
    resp = teacher.post(f"/p/students/{people['maya']}/entries", {"kind": "interest", "text": "Chess"})
    assert resp.status_code == 400
    maya_interest = _entries(app, people["maya"], "interest")[0]
    assert teacher.post(f"/p/students/{people['maya']}/entries/{maya_interest.id}/archive", {}).status_code == 403


def test_overdue_goals_are_flagged(launch, app, people):
    with get_store(app).session() as s:
        goal = s.scalars(select(ProfileEntryRecord).where(ProfileEntryRecord.person_id == people["maya"],
                                                          ProfileEntryRecord.kind == "goal")).first()
        goal.target_date = date.today() - timedelta(days=1)
    assert "past its target date" in section(launch("maya").html, "goals")


def test_teacher_drill_down_words_reasons_for_the_teacher_and_offers_overrides(launch, people):
    teacher = launch("teacher")
    html = teacher.get(f"/p/students/{people['aiden']}").get_data(as_text=True)
    steps = _path(html)
    assert steps[1] == ("Inequalities Locked Locked until Aiden masters Solve multi-step equations (1.79 of 3), "
                        "from Linear equations.")
    assert "Next for Aiden: Linear equations (open)." in text_of(html)
    assert 'action="/p/teacher/overrides?ltik=' in html and 'name="return_to" value="student"' in html
    noah = teacher.get(f"/p/students/{people['noah']}").get_data(as_text=True)
    assert "Functions: Opened: has shown mastery another way — “Explained solving inequalities" in text_of(noah)


def test_override_from_the_profile_returns_to_it(launch, app, people):
    teacher = launch("teacher")
    page = teacher.get(f"/p/students/{people['aiden']}").get_data(as_text=True)
    module_id = re.search(r'<option value="(\d+)" >2\. Inequalities</option>', page).group(1)
    resp = teacher.post("/p/teacher/overrides", {"student_id": people["aiden"], "module_id": module_id,
                                                 "kind": "accommodation", "return_to": "student"})
    assert resp.status_code == 303 and f"/p/students/{people['aiden']}" in resp.headers["Location"]
    steps = _path(teacher.client.get(resp.headers["Location"]).get_data(as_text=True))
    assert steps[1].startswith("Inequalities Open Opened by a teacher as an accommodation. Still to master: Solve "
                               "linear inequalities (no evidence yet). Decided by Amara Rivera")
    bad = teacher.post("/p/teacher/overrides", {"student_id": people["aiden"], "module_id": module_id,
                                                "kind": "nope", "return_to": "student"})
    assert bad.status_code == 400 and "Aiden Mensah" in text_of(bad.get_data(as_text=True))


# --------------------------------------------------------------------------- parents


def test_parent_sees_their_child_read_only(launch, people):
    parent = launch("parent")
    html = parent.html
    page = text_of(html)
    assert "Maya Okafor" in page and "This page is read only." in page
    assert "On track." in page and "Recent feedback" in page
    assert "Nearly there: use the vertical line test on the last two graphs." in page
    assert "Get Identify functions to mastery" in page
    assert "csrf_token" not in html and "<form" not in html
    for other in ("Leo Park", "Aiden", "Sofia", "Noah", "Zara"):
        assert other not in page
    steps = _path(html)
    assert steps[2] == ("Functions Open Next step Open: the modules before it are mastered. Still to master: "
                        "Identify functions (2.8 of 3) and Evaluate functions (2.4 of 3).")


def test_parent_with_several_children_switches_and_sees_no_other_child(launch, app, people):
    now = datetime.now(UTC)
    with get_store(app).session() as s:
        link = s.scalars(select(GuardianLink)).first()
        s.add(GuardianLink(district_id=link.district_id, sourced_id="extra-link", guardian_id=people["parent"],
                           student_id=people["leo"], relation="parent", status="active", updated_at=now))
    parent = launch("parent")
    switcher = parent.html[parent.html.index('aria-label="Choose a child"'):]
    switcher = switcher[:switcher.index("</nav>")]
    assert "Maya Okafor" in switcher and "Leo Park" in switcher and 'aria-current="page"' in switcher
    leo = parent.get("/p/parent", child=people["leo"])
    assert leo.status_code == 200
    page = text_of(leo.get_data(as_text=True))
    assert "Leo Park" in page and "Basketball statistics" in page and "Music production" not in page
    maya = text_of(parent.get("/p/parent", child=people["maya"]).get_data(as_text=True))
    assert "Music production" in maya and "Basketball statistics" not in maya
    for other in ("noah", "aiden", "sofia", "teacher"):
        assert parent.get("/p/parent", child=people[other]).status_code == 403
        assert parent.get(f"/p/students/{people[other]}").status_code == 403
    assert parent.get(f"/p/students/{people['leo']}").status_code == 200
    assert parent.post(f"/p/students/{people['leo']}/entries", {"kind": "goal", "text": "x"}).status_code == 403
    with get_store(app).session() as s:
        viewed = [e.subject for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "view_student_profile", AuditEvent.actor == f"person:{people['parent']}"))]
    # the launch opens the first child by name (Leo), then the switcher and the profile address
    assert viewed.count(f"person:{people['leo']}") == 3 and viewed.count(f"person:{people['maya']}") == 1


# --------------------------------------------------------------------------- audit


def test_every_view_of_a_students_profile_by_someone_else_is_audited(launch, app, people):
    launch("maya")  # her own: not audited
    teacher = launch("teacher")
    teacher.get(f"/p/students/{people['maya']}")
    launch("parent")
    admin = launch("admin")
    assert admin.get(f"/p/students/{people['maya']}").status_code == 200
    assert "<form" not in admin.get(f"/p/students/{people['maya']}").get_data(as_text=True)
    with get_store(app).session() as s:
        events = [(e.actor, e.detail.get("view")) for e in s.scalars(select(AuditEvent).where(
            AuditEvent.action == "view_student_profile", AuditEvent.subject == f"person:{people['maya']}"))]
    assert (f"person:{people['teacher']}", "teacher") in events
    assert (f"person:{people['parent']}", "parent") in events
    assert (f"person:{people['admin']}", "admin") in events
    assert not any(actor == f"person:{people['maya']}" for actor, _ in events)


def test_teacher_notes_can_name_a_competency(launch, app, people):
    teacher = launch("teacher")
    page = teacher.get(f"/p/students/{people['noah']}").get_data(as_text=True)
    comp_id = re.search(r'<option value="(\d+)" >Solve linear inequalities</option>', page).group(1)
    resp = teacher.post(f"/p/students/{people['noah']}/entries", {"kind": "note", "text": "Flips signs well aloud",
                                                                  "competency_id": comp_id})
    assert resp.status_code == 303
    note = next(e for e in _entries(app, people["noah"], "note") if e.text == "Flips signs well aloud")
    assert note.competency_id == int(comp_id) and note.author_role == "teacher"
    notes = text_of(section(launch("noah").html, "interests"))
    assert "Flips signs well aloud Solve linear inequalities By Amara Rivera" in notes
    bad = teacher.post(f"/p/students/{people['noah']}/entries",
                       {"kind": "note", "text": "x", "competency_id": "999999"})
    assert bad.status_code == 400 and "Competency: choose one from the list." in text_of(bad.get_data(as_text=True))
