"""The teacher, student and parent panels in Chromium after real sandbox launches: content, axe-core, 320 px,
keyboard use of the override form, and print. Screenshots go to test-results/."""

from __future__ import annotations

import re

import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser


def _open(page, base: str, user_key: str):
    """Launch from the sandbox course page as one user and return the Trailmark frame once it shows a panel."""
    page.goto(f"{base}/sandbox/course/{user_key}")
    page.wait_for_function("() => { const f = document.querySelector('iframe[name=trailmark]');"
                           " return f && f.contentWindow.location.pathname.startsWith('/p/'); }", timeout=15000)
    frame = next(f for f in page.frames if "/p/" in f.url)
    frame.wait_for_load_state()
    return frame


def _ltik(frame) -> str:
    return re.search(r"ltik=([^&#]+)", frame.url).group(1)


def _axe_ok(target) -> None:
    results = Axe().run(target)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in bad]


def _fits(page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= page.evaluate("window.innerWidth") + 1, f"horizontal scroll: {width}px"


def test_teacher_class_view(page, live_server):
    frame = _open(page, live_server, "teacher")
    frame.get_by_role("heading", name="Alerts inbox").wait_for()
    alerts = frame.locator("#alerts").inner_text()
    assert "Far behind" in alerts and "Aiden Mensah" in alerts and "Level 3 of 3" in alerts
    row = frame.locator("#grid tbody tr", has_text="Aiden Mensah")
    assert row.locator("td.c-b").text_content() == "B Well below, 1.79 of 4"  # the letter, then words for readers
    assert row.locator("td.c-b").evaluate("td => getComputedStyle(td.querySelector('.sr-only')).width") == "1px"
    assert frame.locator("svg.chart[role=img]").count() == 1
    assert frame.locator("#groups").get_by_text("Identify functions").count() == 1
    shot(page, "panel-teacher")
    _axe_ok(frame)
    # the same page on its own, full width, for a closer look
    solo = page.context.new_page()
    solo.goto(f"{live_server}/p/teacher?ltik={_ltik(frame)}")
    shot(solo, "panel-teacher-page")
    solo.goto(f"{live_server}/p/teacher/pace-plan?ltik={_ltik(frame)}")
    solo.get_by_role("heading", name=re.compile("Module due dates")).wait_for()
    shot(solo, "panel-pace-plan")
    _axe_ok(solo)


def test_teacher_drill_down_to_a_profile(page, live_server):
    frame = _open(page, live_server, "teacher")
    frame.locator("#grid").get_by_role("link", name="Aiden Mensah").click()
    frame.get_by_role("heading", name="Aiden Mensah", level=1).wait_for()
    text = frame.locator("main").inner_text()
    assert "Locked until Aiden masters Solve multi-step equations" in text
    shot(page, "panel-teacher-drill-down")
    _axe_ok(frame)


def test_student_profile_and_path(page, live_server):
    frame = _open(page, live_server, "aiden")
    frame.get_by_role("heading", name="My learner profile").wait_for()
    path = frame.locator("ol.path").inner_text()
    assert "Locked until you master Solve multi-step equations (from Linear equations)." in path
    assert "Next step" in frame.locator("ol.path li[aria-current=step]").inner_text()
    main = frame.locator("main").inner_text()
    assert "2 modules (22 days) behind the minimum pace" in main
    assert "Master multi-step equations with two extra practice sets a week" in main
    shot(page, "panel-student")
    _axe_ok(frame)
    # another student's profile by URL: refused
    other = page.context.new_page()
    for person_id in range(1, 12):
        resp = other.goto(f"{live_server}/p/students/{person_id}?ltik={_ltik(frame)}")
        if resp.status == 200:
            assert "Aiden Mensah" in other.content()
        else:
            assert resp.status in (403, 404)


def test_student_adds_a_goal_with_the_keyboard(page, live_server):
    frame = _open(page, live_server, "leo")
    frame.locator("#add-text").focus()
    page.keyboard.type("Explain every step of my working")
    frame.locator("#add-target").fill("2030-01-15")
    frame.locator("#add-status").focus()
    page.keyboard.press("Tab")
    assert frame.evaluate("document.activeElement.textContent.trim()") == "Add"
    page.keyboard.press("Enter")
    frame.get_by_role("status").wait_for()
    goals = frame.locator("#goals").inner_text()
    assert "Explain every step of my working" in goals and "15 Jan 2030" in goals


def test_parent_view(page, live_server):
    frame = _open(page, live_server, "parent")
    frame.get_by_role("heading", name="Maya Okafor", level=1).wait_for()
    main = frame.locator("main").inner_text()
    assert "On track" in main and "Recent feedback" in main and "read only" in main
    for other in ("Leo Park", "Aiden", "Sofia", "Noah", "Zara"):
        assert other not in main
    assert frame.locator("main form").count() == 0
    shot(page, "panel-parent")
    _axe_ok(frame)


@pytest.mark.parametrize("user_key", ["teacher", "maya", "parent"])
def test_320px_has_no_horizontal_scroll(browser, live_server, user_key):
    context = browser.new_context(viewport={"width": 320, "height": 700})
    page = context.new_page()
    frame = _open(page, live_server, user_key)
    solo = context.new_page()
    solo.goto(frame.url if frame.url.startswith("http") else f"{live_server}{frame.url}")
    solo.locator("main h1").wait_for()
    _fits(solo)
    shot(solo, f"panel-{user_key}-320")
    _axe_ok(solo)
    context.close()


def test_override_form_works_from_the_keyboard(page, live_server):
    frame = _open(page, live_server, "teacher")
    solo = page.context.new_page()
    solo.goto(f"{live_server}/p/teacher?ltik={_ltik(frame)}")
    solo.locator("main h1").wait_for()
    for _ in range(300):  # Tab through the page until the override form's first field
        solo.keyboard.press("Tab")
        if solo.evaluate("document.activeElement.id") == "ov-student":
            break
    else:
        pytest.fail("the override form cannot be reached with Tab")
    for _ in range(4):  # by family name: Haddad, Kowalski, Lindqvist, Mensah
        solo.keyboard.press("ArrowDown")
    assert solo.evaluate("document.activeElement.selectedOptions[0].textContent") == "Aiden Mensah"
    solo.keyboard.press("Tab")
    assert solo.evaluate("document.activeElement.id") == "ov-module"
    solo.keyboard.press("ArrowDown")
    solo.keyboard.press("ArrowDown")
    assert solo.evaluate("document.activeElement.selectedOptions[0].textContent") == "2. Inequalities"
    solo.keyboard.press("Tab")
    assert solo.evaluate("document.activeElement.id") == "ov-kind"
    solo.keyboard.press("Tab")
    solo.keyboard.type("Showed it on the whiteboard")
    solo.keyboard.press("Tab")
    assert solo.evaluate("document.activeElement.textContent.trim()") == "Save decision"
    solo.keyboard.press("Enter")
    solo.get_by_role("status").wait_for()
    assert "Saved. The student's path has been recomputed." in solo.get_by_role("status").inner_text()
    overrides = solo.locator("#overrides").inner_text()
    assert "Aiden Mensah" in overrides and "Showed it on the whiteboard" in overrides
    # focus is visible on the controls (a 3 px outline)
    solo.locator("#ov-student").focus()
    assert solo.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"


def test_print_hides_navigation_and_forms(page, live_server):
    frame = _open(page, live_server, "teacher")
    solo = page.context.new_page()
    solo.goto(f"{live_server}/p/teacher?ltik={_ltik(frame)}")
    solo.emulate_media(media="print")
    for selector in ("header.bar", "nav.pagenav", "#overrides form"):
        assert solo.evaluate(f"getComputedStyle(document.querySelector('{selector}')).display") == "none", selector
    assert solo.locator("svg.chart").is_visible() and solo.locator("table.mastery").is_visible()
    # the chart's data table sits in a closed <details> on screen; on paper it is printed
    assert solo.locator("#pace details.table-alt table").is_visible()
    shot(solo, "panel-teacher-print")
    student = page.context.new_page()
    student.goto(f"{live_server}/p/students/2?ltik={_ltik(frame)}")
    student.emulate_media(media="print")
    assert student.evaluate("getComputedStyle(document.querySelector('nav.pagenav')).display") == "none"
