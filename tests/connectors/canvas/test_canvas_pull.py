"""Canvas pull: roster, content and progress against payloads shaped as Canvas documents them."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import responses

from connectors.base import (
    AcademicSession,
    Activity,
    Alignment,
    Class,
    Competency,
    Complete,
    Connector,
    Enrollment,
    GuardianLink,
    Module,
    Org,
    Person,
    Rejected,
    Result,
    Scope,
)
from connectors.canvas import CanvasConnector
from tests.connectors.canvas.canvas_support import BASE, CanvasMock, Sleeps, fixture

Make = Callable[..., CanvasConnector]


def of(items: list[Any], kind: type) -> list[Any]:
    return [i for i in items if isinstance(i, kind)]


def completes(items: list[Any]) -> set[tuple[str, str | None]]:
    return {(c.kind, c.within) for c in of(items, Complete)}


def test_connector_satisfies_the_protocol(make_connector: Make) -> None:
    connector = make_connector()
    assert isinstance(connector, Connector)
    assert connector.kind == "canvas"
    assert {c.value for c in connector.capabilities} >= {"read:roster", "write:gates", "write:scores"}


# --------------------------------------------------------------------------- roster


def test_roster_pull_follows_link_pages_and_maps_records(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.roster()
    connector = make_connector()

    items = list(connector.pull(Scope.ROSTER))

    assert items[0] == Org(sourced_id="1", name="Riverside Unified School District", type="district",
                           identifier="RUSD")
    sessions = of(items, AcademicSession)
    assert sessions[0] == AcademicSession(sourced_id="12", title="2024-25 Fall", type="term",
                                          start_date=date(2024, 8, 20), end_date=date(2024, 12, 20))
    assert [s.sourced_id for s in sessions] == ["12", "1"]
    algebra, biology = of(items, Class)
    assert algebra == Class(sourced_id="101", title="Algebra I - Period 2", school_sourced_id="1",
                            term_sourced_ids=("12",), class_code="ALG1-P2", sis_id="ALG1-2024-P2")
    assert biology.sis_id is None and biology.term_sourced_ids == ("1",)
    assert items.index(sessions[0]) < items.index(algebra)

    people = {p.sourced_id: p for p in of(items, Person)}
    assert set(people) == {"501", "601", "701", "602", "502"}  # each once; no Test Student (999)
    assert len(of(items, Person)) == 5
    assert people["601"] == Person(sourced_id="601", role="student", given_name="Ava", family_name="Chen",
                                   username="achen601", sis_id="S-100601")
    assert people["501"].role == "teacher" and people["502"].role == "aide" and people["701"].role == "parent"

    enrollments = {e.sourced_id: e for e in of(items, Enrollment)}
    assert set(enrollments) == {"9001", "9002", "9003", "9004", "9006", "9101", "9102", "9103"}
    assert enrollments["9003"] == Enrollment(sourced_id="9003", class_sourced_id="101",
                                             person_sourced_id="701", role="parent")
    assert of(items, GuardianLink) == [GuardianLink(guardian_sourced_id="701", student_sourced_id="601")]
    for e in enrollments.values():  # every person precedes their enrollment
        person = next(p for p in of(items, Person) if p.sourced_id == e.person_sourced_id)
        assert items.index(person) < items.index(e)

    assert completes(items) == {("org", None), ("academic_session", None), ("class", None),
                                ("enrollment", "101"), ("enrollment", "102"), ("person", None),
                                ("guardian_link", None)}
    assert next(c for c in of(items, Complete) if c.within == "101").within_kind == "class"
    assert not of(items, Rejected)
    assert connector.client.requests_made == 6  # account + 2 course pages + 2 + 1 enrollment pages


def test_roster_requests_per_page_100_and_follows_opaque_next_urls(canvas: CanvasMock, make_connector: Make,
                                                                   rsps: responses.RequestsMock) -> None:
    canvas.roster()
    list(make_connector().pull(Scope.ROSTER))

    first, second = canvas.calls("/api/v1/accounts/1/courses")
    assert "per_page=100" in first.url and "include%5B%5D=term" in first.url
    assert second.url == canvas.next_urls["/api/v1/accounts/1/courses"][0]  # verbatim, %3D kept
    assert "%3D" in second.url
    enrollment_calls = canvas.calls("/api/v1/courses/101/enrollments")
    assert "type%5B%5D=StudentViewEnrollment" in enrollment_calls[0].url
    assert "state%5B%5D=completed" in enrollment_calls[0].url
    assert enrollment_calls[1].url == canvas.next_urls["/api/v1/courses/101/enrollments"][0]
    assert all(c.request.headers["Authorization"] == "Bearer admin-token-s3cr3t" for c in rsps.calls)


def test_per_page_is_capped_at_canvas_maximum(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.roster()
    connector = make_connector(per_page=500)
    assert connector.client.per_page == 100


def test_throttled_403_is_backed_off_and_retried(canvas: CanvasMock, make_connector: Make,
                                                 sleeps: Sleeps) -> None:
    throttled = {"left": 1}

    def throttle_once(request: Any) -> tuple[int, dict[str, str], str] | None:
        if throttled["left"]:
            throttled["left"] -= 1
            return 403, {"X-Rate-Limit-Remaining": "0.0", "Content-Type": "text/plain"}, \
                fixture("rate_limit_exceeded.txt")
        return None

    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json")])
    canvas.pages("/api/v1/courses/101/enrollments",
                 [fixture("enrollments_101_page1.json"), fixture("enrollments_101_page2.json")],
                 before=throttle_once)

    items = list(make_connector().pull(Scope.ROSTER))

    assert ("enrollment", "101") in completes(items)
    assert len(of(items, Enrollment)) == 5
    assert len(sleeps) >= 1  # backed off before retrying
    assert len(canvas.calls("/api/v1/courses/101/enrollments")) == 3


def test_low_rate_limit_remaining_slows_requests_down(canvas: CanvasMock, make_connector: Make,
                                                      sleeps: Sleeps) -> None:
    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"),
                headers={"X-Rate-Limit-Remaining": "25.0"})
    client = make_connector().client

    client.get_account("1")
    assert sleeps == []  # nothing known yet
    client.get_account("1")

    assert sleeps == [2.0 * (100 - 25) / 100]  # paused in proportion to how low the bucket is


def test_permission_403_on_one_course_is_reported_and_removes_nothing(canvas: CanvasMock,
                                                                      make_connector: Make) -> None:
    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json"), fixture("courses_page2.json")])
    canvas.pages("/api/v1/courses/101/enrollments",
                 [fixture("enrollments_101_page1.json"), fixture("enrollments_101_page2.json")])
    canvas.json(responses.GET, "/api/v1/courses/102/enrollments", fixture("error_unauthorized.json"),
                status=403)

    items = list(make_connector().pull(Scope.ROSTER))

    rejected = of(items, Rejected)
    assert len(rejected) == 1 and rejected[0].kind == "enrollment" and rejected[0].record_id == "102"
    assert "not authorized" in rejected[0].reason
    assert ("enrollment", "101") in completes(items)
    assert ("enrollment", "102") not in completes(items)
    assert ("person", None) not in completes(items) and ("guardian_link", None) not in completes(items)
    assert len(canvas.calls("/api/v1/courses/102/enrollments")) == 1  # a permission 403 is not retried


def test_malformed_records_are_rejected_with_reason_and_block_removals(canvas: CanvasMock,
                                                                       make_connector: Make) -> None:
    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_malformed.json")])
    canvas.pages("/api/v1/courses/101/enrollments", [fixture("enrollments_102_malformed.json")])

    items = list(make_connector().pull(Scope.ROSTER))

    rejected = {(r.kind, r.record_id): r for r in of(items, Rejected)}
    assert rejected[("class", "103")].field == "name"
    assert "Missing data" in rejected[("class", "103")].reason
    assert rejected[("enrollment", "9104")].field == "type"
    assert [c.sourced_id for c in of(items, Class)] == ["101"]
    assert [e.sourced_id for e in of(items, Enrollment)] == ["9101"]
    assert "603" not in {p.sourced_id for p in of(items, Person)}
    assert completes(items) == {("org", None)}  # nothing a rejected record could be missing from


def test_observer_of_unlisted_student_is_rejected_not_linked(canvas: CanvasMock,
                                                             make_connector: Make) -> None:
    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json")])
    observer_only = [e for e in fixture("enrollments_101_page1.json") if e["type"] != "StudentEnrollment"]
    canvas.pages("/api/v1/courses/101/enrollments", [observer_only])

    items = list(make_connector().pull(Scope.ROSTER))

    assert not of(items, GuardianLink)
    (rejected,) = of(items, Rejected)
    assert rejected.kind == "guardian_link" and rejected.field == "associated_user_id"


def test_oauth_refreshes_on_401_once_and_continues(canvas: CanvasMock, make_connector: Make,
                                                   rsps: responses.RequestsMock) -> None:
    calls = {"n": 0}

    def account(request: Any) -> tuple[int, dict[str, str], str]:
        calls["n"] += 1
        if request.headers["Authorization"] == "Bearer expired-token":
            return 401, {"WWW-Authenticate": 'Bearer realm="canvas-lms"'}, \
                json.dumps(fixture("error_invalid_token.json"))
        return 200, {}, '{"id": 1, "name": "Riverside Unified School District"}'

    rsps.add_callback(responses.GET, f"{BASE}/api/v1/accounts/1", callback=account,
                      content_type="application/json")
    rsps.add(responses.POST, f"{BASE}/login/oauth2/token", json=fixture("oauth_token.json"))
    canvas.pages("/api/v1/accounts/1/courses", [[]])
    connector = make_connector(token="expired-token", oauth={
        "client_id": "10000000000123", "client_secret": "dev-key-secret", "refresh_token": "7~refresh"})

    items = list(connector.pull(Scope.ROSTER))

    assert isinstance(items[0], Org)
    (token_call,) = canvas.calls("/login/oauth2/token")
    body = token_call.body if isinstance(token_call.body, str) else token_call.body.decode()
    assert "grant_type=refresh_token" in body and "refresh_token=7~refresh" in body.replace("%7E", "~")
    assert "client_id=10000000000123" in body and "client_secret=dev-key-secret" in body
    assert "Authorization" not in token_call.headers
    assert calls["n"] == 2  # refused once, then accepted with the new token
    account_calls = [c.request for c in rsps.calls if c.request.url.endswith("/api/v1/accounts/1")]
    assert account_calls[-1].headers["Authorization"] == "Bearer 7~fFAGRNJru1FTz70BzhT3Zg"


def test_oauth_without_token_fetches_one_first(canvas: CanvasMock, make_connector: Make,
                                               rsps: responses.RequestsMock) -> None:
    rsps.add(responses.POST, f"{BASE}/login/oauth2/token", json=fixture("oauth_token.json"))
    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
    canvas.pages("/api/v1/accounts/1/courses", [[]])
    oauth = {"client_id": "1", "client_secret": "s", "refresh_token": "r"}
    connector = make_connector(token=None, oauth=oauth)
    list(connector.pull(Scope.ROSTER))
    paths = [urlpath(c.request.url) for c in rsps.calls]
    assert paths[0] == "/login/oauth2/token" and paths.count("/login/oauth2/token") == 1
    assert {"/api/v1/accounts/1", "/api/v1/accounts/1/courses"} <= set(paths[1:])


def urlpath(url: str) -> str:
    return url.split(BASE, 1)[1].split("?", 1)[0]


# --------------------------------------------------------------------------- content


def test_content_pull_maps_modules_activities_competencies_alignments(canvas: CanvasMock,
                                                                      make_connector: Make) -> None:
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json")])
    canvas.content_101()

    items = list(make_connector().pull(Scope.CONTENT))

    unit1, unit2 = of(items, Module)
    assert unit1 == Module(sourced_id="201", class_sourced_id="101", title="Unit 1: Linear Equations",
                           position=1,
                           completion_requirements=((None, "must_view", None), ("802", "min_score", 8.0)))
    assert unit2.prerequisite_sourced_ids == ("201",) and unit2.published is False
    assert unit2.unlock_at == datetime(2024, 9, 15, 6, 0, tzinfo=UTC)
    assert unit2.completion_requirements == (("803", "min_score", 7.0),)  # quiz item → its assignment

    activities = {a.sourced_id: a for a in of(items, Activity)}
    assert activities["802"] == Activity(sourced_id="802", class_sourced_id="101",
                                         title="Unit 1 mastery check", module_sourced_id="201",
                                         score_maximum=10.0,
                                         due_at=datetime(2024, 9, 8, 5, 59, 59, tzinfo=UTC))
    assert activities["803"].module_sourced_id == "202"
    assert activities["804"].module_sourced_id is None and activities["804"].score_maximum is None

    solve, graph = of(items, Competency)
    assert solve == Competency(
        sourced_id="55", title="Solve linear equations", class_sourced_id=None,
        description="<p>Solve linear equations in one variable.</p>", points_possible=4.0, mastery_points=3.0,
        ratings=((4.0, "Exceeds Mastery"), (3.0, "Mastery"), (2.0, "Near Mastery"),
                 (0.0, "Well Below Mastery")),
        calculation_method="decaying_average", calculation_int=65)
    assert graph.class_sourced_id == "101"
    assert graph.calculation_method == "n_mastery" and graph.calculation_int == 2

    assert of(items, Alignment) == [Alignment(activity_sourced_id="802", competency_sourced_id="55")]
    (rejected,) = of(items, Rejected)  # rubric aligned to outcome 99, which the course does not link
    assert rejected.kind == "alignment" and rejected.record_id == "804~99"
    assert items.index(solve) < items.index(of(items, Alignment)[0])
    assert {("module", "101"), ("activity", "101"), ("alignment", "101")} <= completes(items)
    assert ("competency", None) in completes(items)
    assert ("class", None) in completes(items)


def test_unreadable_outcomes_keep_modules_and_activities(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json")])
    canvas.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])
    canvas.pages("/api/v1/courses/101/modules/202/items", [fixture("module_items_202.json")])
    canvas.pages("/api/v1/courses/101/assignments", [fixture("assignments_101.json")])
    canvas.json(responses.GET, "/api/v1/courses/101/outcome_group_links", fixture("error_unauthorized.json"),
                status=403)

    items = list(make_connector().pull(Scope.CONTENT))

    assert len(of(items, Module)) == 2 and len(of(items, Activity)) == 4
    assert not of(items, Competency) and not of(items, Alignment)
    (rejected,) = of(items, Rejected)
    assert (rejected.kind, rejected.record_id) == ("competency", "101")
    assert {("module", "101"), ("activity", "101")} <= completes(items)
    assert ("alignment", "101") not in completes(items) and ("competency", None) not in completes(items)


# --------------------------------------------------------------------------- progress


def test_progress_pull_maps_submissions_and_outcome_results(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json")])
    canvas.pages("/api/v1/courses/101/enrollments", [fixture("enrollments_101_test_student.json")])
    canvas.pages("/api/v1/courses/101/students/submissions",
                 [fixture("submissions_101_page1.json"), fixture("submissions_101_page2.json")])
    canvas.pages("/api/v1/courses/101/outcome_results", [fixture("outcome_results_101.json")])

    items = list(make_connector().pull(Scope.PROGRESS))

    results = {r.sourced_id: r for r in of(items, Result)}
    assert results["submission:11"] == Result(
        sourced_id="submission:11", person_sourced_id="601", activity_sourced_id="801", score=9.0,
        scored_at=datetime(2024, 9, 2, 15, 0, tzinfo=UTC), score_status="fully graded")
    assert results["submission:12"].score_status == "submitted" and results["submission:12"].score is None
    assert "submission:13" not in results  # untouched placeholder
    assert results["submission:14"].score_status == "not submitted"  # missing
    assert results["submission:15"].score_status == "exempt"  # excused
    assert "submission:16" not in results  # the Test Student
    assert results["submission:17"].score_status == "partially graded"
    assert results["outcome_result:42"] == Result(
        sourced_id="outcome_result:42", person_sourced_id="601", competency_sourced_id="55", score=3.0,
        score_maximum=4.0, scored_at=datetime(2024, 9, 5, 22, 0, tzinfo=UTC))
    assert "outcome_result:43" not in results  # the Test Student
    assert results["outcome_result:44"].score is None
    assert ("result", "101") in completes(items)
    enrollment_call = canvas.calls("/api/v1/courses/101/enrollments")[0]
    assert "type%5B%5D=StudentViewEnrollment" in enrollment_call.url
    assert "StudentEnrollment&" not in enrollment_call.url


def test_full_pull_emits_parents_before_children_and_uses_assignment_points(canvas: CanvasMock,
                                                                           make_connector: Make) -> None:
    canvas.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
    canvas.pages("/api/v1/accounts/1/courses", [fixture("courses_page1.json")])
    canvas.pages("/api/v1/courses/101/enrollments",
                 [fixture("enrollments_101_page1.json"), fixture("enrollments_101_page2.json")])
    canvas.content_101()
    canvas.pages("/api/v1/courses/101/students/submissions",
                 [fixture("submissions_101_page1.json"), fixture("submissions_101_page2.json")])
    canvas.pages("/api/v1/courses/101/outcome_results", [fixture("outcome_results_101.json")])

    items = list(make_connector(concurrency=1).pull(Scope.ALL))

    kinds = [type(i).__name__ for i in items if not isinstance(i, Complete | Rejected)]
    assert kinds.index("Class") < kinds.index("Person") < kinds.index("Enrollment") < kinds.index("Module")
    assert kinds.index("Competency") < kinds.index("Alignment") < kinds.index("Result")
    results = {r.sourced_id: r for r in of(items, Result)}
    assert results["submission:11"].score_maximum == 10.0
    assert "submission:16" not in results  # Test Student learnt from the roster listing
    assert len(canvas.calls("/api/v1/courses/101/enrollments")) == 2  # no extra Test Student listing


def test_concurrency_caps_requests_in_flight(make_connector: Make) -> None:
    connector = make_connector(concurrency=3)
    slots = connector.client.http._slots
    assert slots is not None
    held = [slots.acquire(blocking=False) for _ in range(4)]
    assert held == [True, True, True, False]
