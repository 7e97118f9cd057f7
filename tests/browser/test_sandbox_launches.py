"""Real launches from the sandbox LMS in Chromium, as each role, with accessibility checks (axe-core)."""

from __future__ import annotations

import re

import pytest
from axe_playwright_python.sync_playwright import Axe

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser


def _launch(page, base: str, label: str):
    page.goto(f"{base}/sandbox")
    page.get_by_role("link", name=re.compile(label)).click()
    frame = page.frame_locator("iframe[name=trailmark]")
    return frame


def _axe_ok(frame_page) -> None:
    results = Axe().run(frame_page)
    bad = [v for v in results.response["violations"] if v.get("impact") in ("serious", "critical")]
    assert not bad, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in bad]


def _tool_frame(page):
    page.wait_for_function("() => { const f = document.querySelector('iframe[name=trailmark]');"
                           " return f && f.contentWindow.location.pathname.startsWith('/p/'); }", timeout=15000)
    return next(f for f in page.frames if "/p/" in f.url)


def test_teacher_launch(page, live_server):
    frame = _launch(page, live_server, "Teacher:")
    frame.get_by_role("heading", name="Algebra I — Period 2").wait_for()
    tool = _tool_frame(page)
    assert "/p/teacher" in tool.url
    assert tool.get_by_role("row", name=re.compile("Maya Okafor")).count() == 1
    shot(page, "teacher")
    _axe_ok(tool)


def test_student_launch_and_no_peeking(page, live_server):
    frame = _launch(page, live_server, "Student: Leo Park")
    frame.get_by_role("heading", name="My learner profile").wait_for()
    tool = _tool_frame(page)
    shot(page, "student")
    _axe_ok(tool)
    ltik = re.search(r"ltik=([^&]+)", tool.url).group(1)
    # another student's profile, by URL: refused
    other = page.context.new_page()
    for person_id in range(1, 12):
        resp = other.goto(f"{live_server}/p/students/{person_id}?ltik={ltik}")
        text = other.content()
        if resp.status == 200:
            assert "Leo Park" in text  # only their own
        else:
            assert resp.status in (403, 404)


def test_parent_sees_only_their_child(page, live_server):
    frame = _launch(page, live_server, "Parent:")
    frame.get_by_role("heading", name="Maya Okafor").wait_for()
    tool = _tool_frame(page)
    body = tool.inner_text("main")
    assert "Leo Park" not in body and "Zara" not in body
    shot(page, "parent")
    _axe_ok(tool)


def test_sandbox_page_is_accessible_and_keyboard_navigable(page, live_server):
    page.goto(f"{live_server}/sandbox")
    _axe_ok(page)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent").strip() == "Skip to content"
    shot(page, "sandbox")


def test_home_page_is_accessible_and_leads_a_newcomer_to_a_launch(browser, live_server):
    for width in (1100, 320):
        context = browser.new_context(viewport={"width": width, "height": 800})
        page = context.new_page()
        page.goto(f"{live_server}/")
        _axe_ok(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        shot(page, f"home-{width}")
        page.get_by_role("link", name="Open the sandbox LMS").click()
        page.get_by_role("link", name=re.compile("Teacher:")).wait_for()
        context.close()


def test_the_lms_frame_fits_the_panel_instead_of_scrolling_inside(page, live_server):
    frame = _launch(page, live_server, "Teacher:")
    frame.get_by_role("heading", name="Algebra I — Period 2").wait_for()
    tool = _tool_frame(page)
    content = tool.evaluate("document.body.scrollHeight")
    assert content > page.evaluate("window.innerHeight")  # the teacher panel is taller than the window
    page.wait_for_function("h => document.querySelector('iframe[name=trailmark]').clientHeight >= h", arg=content)
    assert tool.evaluate("document.documentElement.scrollHeight <= window.innerHeight + 1")


def test_narrow_iframe_320px(browser, live_server):
    context = browser.new_context(viewport={"width": 320, "height": 640})
    page = context.new_page()
    frame = _launch(page, live_server, "Teacher:")
    frame.get_by_role("heading", name="Algebra I — Period 2").wait_for()
    tool = _tool_frame(page)
    width = tool.evaluate("document.documentElement.scrollWidth")
    assert width <= tool.evaluate("window.innerWidth") + 1
    shot(page, "teacher-320")
    context.close()
