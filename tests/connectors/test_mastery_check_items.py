"""Trailmark's deep-linked mastery checks are recognised in Canvas and Moodle REST data by their launch URL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import responses
from sqlalchemy import select

from connectors import registry, sync
from connectors.base import Activity, Complete, ConfigurationError, Rejected, Scope
from connectors.canvas import CanvasConnector
from connectors.mastery_check import (
    CHECK_CATEGORY,
    check_launch_path,
    custom_params,
    is_check_link,
    is_check_url,
    is_tool_launch,
)
from connectors.moodle import MoodleConnector
from plugin.progress import CHECK_CATEGORY as STORE_CHECK_CATEGORY
from plugin.progress import on_sync_applied
from plugin.store import models as m
from plugin.store.db import Store
from tests.connectors.canvas.canvas_support import BASE as CANVAS
from tests.connectors.canvas.canvas_support import CanvasMock
from tests.connectors.canvas.canvas_support import fixture as canvas_fixture
from tests.connectors.moodle.moodle_fakes import BASE as MOODLE
from tests.connectors.moodle.moodle_fakes import TOKEN, FakeMoodle
from tests.connectors.moodle.moodle_fakes import fixture as moodle_fixture

CANVAS_TOOL = "https://trailmark.riverside.example"
MOODLE_TOOL = "https://trailmark.north.example"
LTIS = "mod_lti_get_ltis_by_courses"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def activities(items: list[Any]) -> dict[str, Activity]:
    return {i.sourced_id: i for i in items if isinstance(i, Activity)}


# --------------------------------------------------------------------------- the launch URL


def test_the_check_url_names_its_placement_and_module() -> None:
    assert check_launch_path("riverside-canvas:201") == \
        "/lti/launch?placement=mastery-check&module=riverside-canvas%3A201"
    assert is_check_url(f"{CANVAS_TOOL}{check_launch_path('x')}", CANVAS_TOOL)


@pytest.mark.parametrize("url", [
    "https://TRAILMARK.riverside.example/lti/launch?placement=mastery-check",  # hosts compare without case
    "https://trailmark.riverside.example:443/lti/launch?module=201&placement=mastery-check",
])
def test_the_same_origin_in_another_spelling_is_a_check(url: str) -> None:
    assert is_check_url(url, CANVAS_TOOL)


@pytest.mark.parametrize("url", [
    "https://mathlab.example.com/lti/launch?placement=mastery-check",  # another tool
    "https://trailmark.riverside.example.evil.test/lti/launch?placement=mastery-check",  # a look-alike host
    "http://trailmark.riverside.example/lti/launch?placement=mastery-check",  # another scheme
    "https://trailmark.riverside.example:8443/lti/launch?placement=mastery-check",  # another port
    "https://trailmark.riverside.example/lti/launch",  # the dashboard
    "https://trailmark.riverside.example/lti/launch?placement=dashboard",
    "https://trailmark.riverside.example/lti/launch?placement=mastery-check&placement=dashboard",
    "https://trailmark.riverside.example/other/lti/launch?placement=mastery-check",  # another path
    "https://trailmark.riverside.example:port/lti/launch?placement=mastery-check",  # not a URL
    "",
    None,
])
def test_other_urls_are_not_checks(url: str | None) -> None:
    assert not is_check_url(url, CANVAS_TOOL)


def test_a_tool_below_a_base_path_and_no_tool_url() -> None:
    assert is_check_url("https://apps.example.org/trailmark/lti/launch?placement=mastery-check",
                        "https://apps.example.org/trailmark/")
    assert not is_check_url("https://apps.example.org/lti/launch?placement=mastery-check",
                            "https://apps.example.org/trailmark")
    assert not is_check_url(f"{CANVAS_TOOL}/lti/launch?placement=mastery-check", None)


def test_custom_parameters_name_the_placement_only_on_the_tools_own_url() -> None:
    custom = custom_params("trailmark_placement = mastery-check\r\ntrailmark_module=north-moodle:51\nbroken\n=x")
    assert custom == {"trailmark_placement": "mastery-check", "trailmark_module": "north-moodle:51"}
    assert is_tool_launch(f"{MOODLE_TOOL}/lti/launch", MOODLE_TOOL)
    assert is_check_link(f"{MOODLE_TOOL}/lti/launch", MOODLE_TOOL, custom)
    assert not is_check_link("https://lti.graphing.example/launch", MOODLE_TOOL, custom)
    assert not is_check_link(f"{MOODLE_TOOL}/lti/launch", MOODLE_TOOL, {"trailmark_placement": "dashboard"})


# --------------------------------------------------------------------------- Canvas


def _canvas_content(canvas: CanvasMock) -> None:
    """Course 101 with a second assignments page of external tool assignments (Link header paging)."""
    canvas.pages("/api/v1/accounts/1/courses", [canvas_fixture("courses_page1.json")])
    canvas.pages("/api/v1/courses/101/modules", [canvas_fixture("modules_101_with_mastery_check.json")])
    canvas.pages("/api/v1/courses/101/modules/202/items", [canvas_fixture("module_items_202.json")])
    canvas.pages("/api/v1/courses/101/assignments", [canvas_fixture("assignments_101.json"),
                                                     canvas_fixture("assignments_101_page2_external_tools.json")])
    canvas.pages("/api/v1/courses/101/outcome_group_links", [canvas_fixture("outcome_group_links_101.json")])


def _canvas(**kw: Any) -> CanvasConnector:
    cfg = {"name": "riverside-canvas", "kind": "canvas", "base_url": CANVAS, "account_id": 1, "token": "t0ken",
           "concurrency": 1, **kw}
    return CanvasConnector.from_config(cfg, sleep=lambda _s: None)


def test_a_deep_linked_canvas_assignment_is_a_mastery_check(rsps: responses.RequestsMock) -> None:
    canvas = CanvasMock(rsps)
    _canvas_content(canvas)

    items = list(_canvas(tool_url=CANVAS_TOOL).pull(Scope.CONTENT))

    found = activities(items)
    assert found["805"] == Activity(sourced_id="805", class_sourced_id="101",
                                    title="Mastery check: Unit 1: Linear Equations", module_sourced_id="201",
                                    score_maximum=100.0, category=CHECK_CATEGORY)
    assert found["806"].category is None  # another vendor's tool, even with the same query
    assert found["807"].category is None  # Trailmark's dashboard link is no check
    assert found["802"].category is None  # a title that says "mastery check" is not enough
    assert {a.category for k, a in found.items() if k != "805"} == {None}
    assert not [i for i in items if isinstance(i, Rejected) and i.kind == "activity"]
    assert Complete("activity", within="101", within_kind="class") in items
    assert len(canvas.calls("/api/v1/courses/101/assignments")) == 2  # both pages were read


def test_without_a_tool_url_canvas_marks_no_check(rsps: responses.RequestsMock) -> None:
    _canvas_content(CanvasMock(rsps))

    found = activities(list(_canvas().pull(Scope.CONTENT)))

    assert {a.category for a in found.values()} == {None}


def test_canvas_tool_url_must_be_a_url() -> None:
    with pytest.raises(ConfigurationError, match="tool_url"):
        _canvas(tool_url="trailmark")


def test_the_registry_gives_canvas_and_moodle_the_public_url_by_default() -> None:
    canvas = {"name": "riverside-canvas", "kind": "canvas", "base_url": CANVAS, "account_id": 1, "token": "t"}
    built = registry.build_connector(canvas, tool_url=CANVAS_TOOL)
    assert isinstance(built, CanvasConnector) and built.tool_url == CANVAS_TOOL
    own = registry.build_connector({**canvas, "tool_url": "https://lms-facing.example"}, tool_url=CANVAS_TOOL)
    assert own.tool_url == "https://lms-facing.example"  # type: ignore[attr-defined]
    moodle = registry.build_connector({"name": "north-moodle", "kind": "moodle", "base_url": MOODLE,
                                       "token": TOKEN}, tool_url=MOODLE_TOOL)
    assert isinstance(moodle, MoodleConnector) and moodle.tool_url == MOODLE_TOOL
    fake = registry.build_connector({"name": "demo", "kind": "fake"}, tool_url=CANVAS_TOOL)
    assert not hasattr(fake, "tool_url")


def test_a_canvas_sync_stores_the_check_and_queues_its_gate(rsps: responses.RequestsMock, store: Store,
                                                           district: m.District) -> None:
    canvas = CanvasMock(rsps)
    _canvas_content(canvas)
    now = datetime(2024, 9, 2, 12, 0, tzinfo=UTC)

    result = sync.run_sync(store, district.id, "riverside-canvas", _canvas(tool_url=CANVAS_TOOL),
                           scope=Scope.CONTENT, now=now, on_applied=on_sync_applied)

    assert result.status == "succeeded", result.message
    with store.session() as s:
        checks = s.execute(select(m.Activity.title, m.Module.title).join(m.Module, m.Activity.module_id == m.Module.id)
                           .where(m.Activity.category == STORE_CHECK_CATEGORY)).all()
        gates = list(s.scalars(select(m.OutboxItem).where(m.OutboxItem.kind == "gate")))
    assert checks == [("Mastery check: Unit 1: Linear Equations", "Unit 1: Linear Equations")]
    assert [g.payload["check_activity_sourced_id"] for g in gates] == ["805"]
    assert gates[0].payload["module_sourced_id"] == "202" and gates[0].payload["min_score"] == 100.0


# --------------------------------------------------------------------------- Moodle


def _moodle_site(rsps: responses.RequestsMock, *, ltis: Any = None, with_function: bool = True) -> FakeMoodle:
    moodle = FakeMoodle(rsps).standard_site()
    info = moodle_fixture("site_info")
    if with_function:
        info["functions"].append({"name": LTIS, "version": "2023100900"})
    moodle.on("core_webservice_get_site_info", info)
    moodle.on("core_course_get_contents",
              lambda p: moodle_fixture("contents_5_lti" if p["courseid"] == "5" else f"contents_{p['courseid']}"))
    moodle.on("gradereport_user_get_grade_items", lambda p: moodle_fixture(
        "grade_items_5_lti" if p["courseid"] == "5" else f"grade_items_{p['courseid']}"))
    moodle.on(LTIS, moodle_fixture("ltis_by_courses_5") if ltis is None else ltis)
    return moodle


def _moodle(**kw: Any) -> MoodleConnector:
    cfg = {"name": "north-moodle", "kind": "moodle", "base_url": MOODLE, "token": TOKEN, "page_size": 2, **kw}
    return MoodleConnector.from_config(cfg, sleep=lambda _s: None)


def test_the_grade_item_of_a_deep_linked_moodle_check_is_a_mastery_check(rsps: responses.RequestsMock) -> None:
    moodle = _moodle_site(rsps)

    items = list(_moodle(tool_url=MOODLE_TOOL).pull(Scope.CONTENT))

    found = activities(items)
    assert found["9004"] == Activity(sourced_id="9004", class_sourced_id="5",
                                     title="Mastery check: Unit 1: Linear equations", module_sourced_id="51",
                                     score_maximum=100.0, category=CHECK_CATEGORY)
    assert found["9006"].category == CHECK_CATEGORY  # placed before its URL named it: its custom parameters do
    assert found["9005"].category == "lti"  # another tool, even with Trailmark's custom parameter
    assert found["9001"].category == "quiz"  # "Unit 1 mastery check" by title only
    assert Complete("activity", "5", "class") in items
    (call,) = moodle.params_of(LTIS)  # one call for every course
    assert (call["courseids[0]"], call["courseids[1]"]) == ("5", "6")


def test_without_the_function_or_a_tool_url_moodle_marks_no_check(rsps: responses.RequestsMock,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    moodle = _moodle_site(rsps, with_function=False)

    with caplog.at_level("WARNING"):
        missing = activities(list(_moodle(tool_url=MOODLE_TOOL).pull(Scope.CONTENT)))
    unset = activities(list(_moodle().pull(Scope.CONTENT)))

    assert missing["9004"].category == unset["9004"].category == "lti"
    assert LTIS not in moodle.functions()
    assert f"{LTIS} is not in the web service" in caplog.text


def test_tool_urls_hidden_from_the_token_mark_no_check(rsps: responses.RequestsMock,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    _moodle_site(rsps, ltis=moodle_fixture("ltis_by_courses_5_no_manage"))

    with caplog.at_level("WARNING"):
        found = activities(list(_moodle(tool_url=MOODLE_TOOL).pull(Scope.CONTENT)))

    assert {found[i].category for i in ("9004", "9005", "9006")} == {"lti"}
    assert "cannot see the tool URL of 3 LTI activities" in caplog.text


def test_unreadable_lti_activities_leave_them_as_the_store_has_them(rsps: responses.RequestsMock) -> None:
    _moodle_site(rsps, ltis=moodle_fixture("errors")["nopermissions"])

    items = list(_moodle(tool_url=MOODLE_TOOL).pull(Scope.CONTENT))

    found = activities(items)
    assert "9004" not in found and "9005" not in found  # neither updated nor, without the marker, removed
    assert found["9001"].category == "quiz"
    assert Complete("activity", "5", "class") not in items
    (rejected,) = [i for i in items if isinstance(i, Rejected) and i.kind == "activity"]
    assert rejected.field == LTIS and "LTI activities not read" in rejected.reason


def test_a_malformed_lti_instance_is_rejected(rsps: responses.RequestsMock) -> None:
    body = moodle_fixture("ltis_by_courses_5")
    del body["ltis"][1]["coursemodule"]
    _moodle_site(rsps, ltis=body)

    items = list(_moodle(tool_url=MOODLE_TOOL).pull(Scope.CONTENT))

    (rejected,) = [i for i in items if isinstance(i, Rejected)]
    assert (rejected.kind, rejected.record_id, rejected.field) == ("activity", "8", "coursemodule")
    assert "9004" not in activities(items) and Complete("activity", "5", "class") not in items
