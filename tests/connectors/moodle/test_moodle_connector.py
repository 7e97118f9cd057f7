"""Moodle connector: translation to canonical records, completeness markers, rejections and writes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
import responses

from connectors.base import (
    Activity,
    Alignment,
    Capability,
    Class,
    Competency,
    Complete,
    ConfigurationError,
    Connector,
    Course,
    Enrollment,
    GateWrite,
    MessageWrite,
    Module,
    NotFound,
    Person,
    Rejected,
    RemoteRejected,
    Result,
    Scope,
    ScoreWrite,
    UpstreamError,
)
from connectors.moodle import (
    MoodleConnector,
    availability_grade_conditions,
    requires_grade,
    restriction_instructions,
)
from tests.connectors.moodle.moodle_fakes import BASE, TOKEN, FakeMoodle, fixture


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def moodle(rsps: responses.RequestsMock) -> FakeMoodle:
    return FakeMoodle(rsps).standard_site()


def make(**extra: object) -> MoodleConnector:
    cfg = {"name": "north-moodle", "kind": "moodle", "base_url": BASE, "token": TOKEN, "page_size": 2,
           **extra}
    return MoodleConnector.from_config(cfg, sleep=lambda _s: None)


def of(items: list, cls: type) -> list:
    return [i for i in items if isinstance(i, cls)]


def by_id(items: list, cls: type) -> dict:
    return {i.sourced_id: i for i in of(items, cls)}


# ---------------------------------------------------------------------------------------------- roster


def test_is_a_connector_with_declared_capabilities() -> None:
    connector = make()
    assert isinstance(connector, Connector)
    assert connector.kind == "moodle"
    assert Capability.WRITE_SCORES in connector.capabilities
    assert Capability.WRITE_MESSAGES in connector.capabilities
    assert Capability.WRITE_GATES not in connector.capabilities


def test_roster_pull_maps_courses_people_and_enrollments(moodle: FakeMoodle) -> None:
    items = list(make().pull(Scope.ROSTER))

    courses = by_id(items, Course)
    classes = by_id(items, Class)
    assert set(classes) == {"5", "6"}  # the front-page site course is not a class
    assert classes["5"] == Class(sourced_id="5", title="Algebra I - Period 3", course_sourced_id="5",
                                 class_code="ALG1-P3", sis_id="SIS-ALG1-P3", lti_context_id="5")
    assert classes["6"].sis_id is None
    assert courses["5"].sis_id == "SIS-ALG1-P3"

    people = of(items, Person)
    assert [p.sourced_id for p in people] == ["101", "102", "201"]  # 101 once; the guest is ignored
    ana, ben, carla = people
    assert ana == Person(sourced_id="101", role="student", given_name="Ana", family_name="Lopez",
                         email="ana.lopez@students.north.example", username="alopez", sis_id="S-1001",
                         lti_sub="101")
    assert ben.enabled is False
    assert carla.role == "teacher" and carla.sis_id == "T-2001"

    enrollments = by_id(items, Enrollment)
    assert set(enrollments) == {"5:101:student", "5:102:student", "5:201:teacher", "6:101:student"}
    assert enrollments["5:201:teacher"].class_sourced_id == "5"
    assert enrollments["5:201:teacher"].person_sourced_id == "201"

    markers = of(items, Complete)
    assert markers == [Complete("course"), Complete("class"), Complete("enrollment", "5", "class"),
                       Complete("enrollment", "6", "class")]
    # parents first: every enrollment's class and person come earlier in the stream
    for n, item in enumerate(items):
        if isinstance(item, Enrollment):
            earlier = items[:n]
            assert any(isinstance(e, Class) and e.sourced_id == item.class_sourced_id for e in earlier)
            assert any(isinstance(e, Person) and e.sourced_id == item.person_sourced_id for e in earlier)


def test_enrolled_users_are_paged_with_limitfrom_and_limitnumber(moodle: FakeMoodle) -> None:
    list(make().pull(Scope.ROSTER))

    pages = [p for p in moodle.params_of("core_enrol_get_enrolled_users") if p["courseid"] == "5"]
    assert [(p["options[0][name]"], p["options[0][value]"]) for p in pages] == [
        ("limitfrom", "0"), ("limitfrom", "2"), ("limitfrom", "4")]
    assert {(p["options[1][name]"], p["options[1][value]"]) for p in pages} == {("limitnumber", "2")}
    assert pages[0]["options[2][name]"] == "onlyactive"
    assert pages[0]["options[3][name]"] == "userfields"
    assert "roles" in pages[0]["options[3][value]"].split(",")


def test_a_site_that_ignores_limitfrom_does_not_loop(moodle: FakeMoodle) -> None:
    moodle.on("core_enrol_get_enrolled_users", lambda p: fixture("enrolled_users_5_page1"))

    items = list(make().pull(Scope.ROSTER))

    assert len(moodle.params_of("core_enrol_get_enrolled_users")) == 4  # two per course, then it stops
    assert Complete("enrollment", "5", "class") in items


def test_the_token_never_reaches_the_logs(moodle: FakeMoodle, caplog: pytest.LogCaptureFixture) -> None:
    moodle.on("core_completion_get_activities_completion_status", fixture("completion_5_101"))
    with caplog.at_level(logging.DEBUG):
        list(make().pull(Scope.ALL))
        list(make().iter_completion("5", "101"))

    assert caplog.records
    assert TOKEN not in caplog.text


def test_roster_scope_does_not_touch_content_or_grades(moodle: FakeMoodle) -> None:
    list(make().pull(Scope.ROSTER))

    assert set(moodle.functions()) == {"core_course_get_courses_by_field", "core_enrol_get_enrolled_users"}


def test_course_ids_filter_asks_for_those_courses(moodle: FakeMoodle) -> None:
    list(make(course_ids=[5, 6]).pull(Scope.ROSTER))

    (query,) = moodle.params_of("core_course_get_courses_by_field")
    assert (query["field"], query["value"]) == ("ids", "5,6")


def test_category_filter_asks_per_category(moodle: FakeMoodle) -> None:
    list(make(category_ids=[2, 3]).pull(Scope.ROSTER))

    queries = moodle.params_of("core_course_get_courses_by_field")
    assert [(q["field"], q["value"]) for q in queries] == [("category", "2"), ("category", "3")]


def test_custom_role_map(moodle: FakeMoodle) -> None:
    items = list(make(role_map={"student": "student", "editingteacher": "teacher", "guest": "aide"})
                 .pull(Scope.ROSTER))

    assert "5:301:aide" in by_id(items, Enrollment)


def test_a_malformed_user_is_rejected_and_the_course_listing_stays_open(moodle: FakeMoodle) -> None:
    page = fixture("enrolled_users_5_page1")
    del page[1]["id"]
    moodle.on("core_enrol_get_enrolled_users", lambda p: page if p["courseid"] == "5"
              and p["options[0][value]"] == "0" else fixture("enrolled_users_5_page2")
              if p["courseid"] == "5" and p["options[0][value]"] == "2" else [])

    items = list(make().pull(Scope.ROSTER))

    (rejected,) = of(items, Rejected)
    assert (rejected.kind, rejected.field) == ("person", "id")
    assert Complete("enrollment", "5", "class") not in items  # nothing of course 5 may be removed
    assert "5:101:student" in by_id(items, Enrollment)


def test_a_course_the_token_cannot_enter_is_reported_and_the_pull_goes_on(moodle: FakeMoodle) -> None:
    moodle.on("core_enrol_get_enrolled_users",
              lambda p: fixture("errors")["requireloginerror"] if p["courseid"] == "5"
              else fixture("enrolled_users_6"))

    items = list(make().pull(Scope.ROSTER))

    (rejected,) = of(items, Rejected)
    assert (rejected.kind, rejected.record_id) == ("class", "5")
    assert "Enrol it" in rejected.reason
    assert Complete("enrollment", "6", "class") in items
    assert Complete("enrollment", "5", "class") not in items


def test_an_invalid_token_fails_the_whole_pull(moodle: FakeMoodle) -> None:
    moodle.on("core_enrol_get_enrolled_users", fixture("errors")["invalidtoken"])

    from connectors.base import AuthError

    with pytest.raises(AuthError, match="Manage tokens"):
        list(make().pull(Scope.ROSTER))


# ---------------------------------------------------------------------------------------------- content


def test_content_pull_maps_sections_graded_items_and_competencies(moodle: FakeMoodle) -> None:
    items = list(make().pull(Scope.CONTENT))

    modules = of(items, Module)
    assert [(m.sourced_id, m.title, m.position) for m in modules if m.class_sourced_id == "5"] == [
        ("50", "General", 0), ("51", "Unit 1: Linear equations", 1), ("52", "Unit 2: Systems", 2)]

    activities = by_id(items, Activity)
    assert set(activities) == {"9001", "9002", "9003"}  # the course total is not an activity
    assert activities["9001"] == Activity(
        sourced_id="9001", class_sourced_id="5", title="Unit 1 mastery check", module_sourced_id="51",
        score_maximum=10.0, due_at=datetime(2024, 5, 2, tzinfo=UTC), category="quiz")
    assert activities["9002"].module_sourced_id == "52"
    assert activities["9002"].due_at == datetime.fromtimestamp(1715212800, UTC)
    assert activities["9003"].module_sourced_id is None and activities["9003"].category == "manual"

    competencies = by_id(items, Competency)
    assert set(competencies) == {"5:31", "5:32"}
    linear = competencies["5:31"]
    assert linear.title == "Solve linear equations" and linear.class_sourced_id == "5"
    assert linear.ratings == ((3.0, "Exceeds"), (2.0, "Competent"), (1.0, "Not yet competent"))
    assert (linear.points_possible, linear.mastery_points) == (3.0, 2.0)  # framework scale config
    systems = competencies["5:32"]
    assert (systems.points_possible, systems.mastery_points) == (2.0, 2.0)  # its own scale

    assert of(items, Alignment) == [Alignment("9001", "5:31")]

    markers = of(items, Complete)
    assert Complete("module", "5", "class") in markers
    assert Complete("activity", "5", "class") in markers
    assert Complete("competency", "5", "class") in markers
    assert Complete("alignment", "5", "class") in markers
    # course 6 has no gradable users yet: that says nothing about which grade items exist
    assert Complete("activity", "6", "class") not in markers
    assert Complete("module", "6", "class") in markers
    assert not of(items, Person) and not of(items, Result)
    # frameworks and scales are read once
    assert len(moodle.params_of("core_competency_read_competency_framework")) == 1


def test_availability_is_kept_per_activity(moodle: FakeMoodle) -> None:
    sections = make().restrictions("5")

    unit2 = sections["52"]
    assert unit2.title == "Unit 2: Systems"
    by_cm = {a.cmid: a for a in unit2.activities}
    assert by_cm[521].grade_conditions == [(9001, 80.0, None)]
    assert by_cm[522].availability is None
    assert by_cm[523].grade_conditions == [(9001, 80.0, None)]


# ---------------------------------------------------------------------------------------------- progress


def test_progress_pull_maps_grades_and_competency_ratings(moodle: FakeMoodle) -> None:
    items = list(make().pull(Scope.PROGRESS))

    results = by_id(items, Result)
    assert results["9001:101"] == Result(
        sourced_id="9001:101", person_sourced_id="101", activity_sourced_id="9001", score=8.5,
        score_maximum=10.0, scored_at=datetime.fromtimestamp(1714060000, UTC))
    assert results["9002:101"].score is None and results["9002:101"].score_status == "submitted"
    assert results["9003:101"].comment == "<p>Good effort</p>"
    assert "9001:102" not in results  # nothing submitted, nothing graded
    assert not any(r.startswith("9000:") for r in results)  # course total

    rating = results["5:31:101"]
    assert rating == Result(sourced_id="5:31:101", person_sourced_id="101", competency_sourced_id="5:31",
                            score=2.0, score_maximum=3.0, scored_at=datetime.fromtimestamp(1714200000, UTC),
                            comment="Competent")
    assert "5:32:102" not in results  # not rated yet
    assert Complete("result", "5", "class") in items
    assert not of(items, Activity)


def test_a_malformed_grade_row_keeps_results_open(moodle: FakeMoodle) -> None:
    report = fixture("grade_items_5")
    report["usergrades"][1]["gradeitems"][0]["id"] = "not-a-number"
    moodle.on("gradereport_user_get_grade_items", lambda p: report if p["courseid"] == "5"
              else fixture("grade_items_6"))

    items = list(make().pull(Scope.ALL))

    assert any(r.kind == "activity" and r.field == "id" for r in of(items, Rejected))
    assert Complete("result", "5", "class") not in items
    assert Complete("activity", "5", "class") not in items
    assert "9001:101" in by_id(items, Result)


def test_sites_without_competencies_still_complete_results(moodle: FakeMoodle) -> None:
    moodle.on("core_competency_list_course_competencies", fixture("errors")["competenciesarenotenabled"])

    items = list(make().pull(Scope.PROGRESS))

    assert Complete("result", "5", "class") in items
    assert not any(r.competency_sourced_id for r in of(items, Result))


def test_iter_completion(moodle: FakeMoodle) -> None:
    moodle.on("core_completion_get_activities_completion_status", fixture("completion_5_101"))
    connector = make()

    states = list(connector.iter_completion("5", "101"))

    assert [(s.cmid, s.state, s.complete) for s in states] == [(511, 2, True), (512, 0, False)]
    assert states[0].completed_at == datetime.fromtimestamp(1714060000, UTC)
    assert states[1].completed_at is None
    assert connector.warnings[0].warningcode == "nocompletiontracking"


# ---------------------------------------------------------------------------------------------- availability


def test_availability_grade_conditions_skip_negated_branches() -> None:
    tree = {"op": "&", "showc": [True, True, True], "c": [
        {"type": "grade", "id": 7, "min": 60},
        {"op": "|", "c": [{"type": "grade", "id": 8, "max": 50}, {"type": "completion", "cm": 3, "e": 1}]},
        {"op": "!&", "c": [{"type": "grade", "id": 9, "min": 10}]},
    ]}

    assert availability_grade_conditions(tree) == [(7, 60.0, None), (8, None, 50.0)]
    assert availability_grade_conditions(json.dumps(tree)) == [(7, 60.0, None), (8, None, 50.0)]
    assert availability_grade_conditions(None) == []
    assert availability_grade_conditions("not json") == []


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ({"op": "&", "c": [{"type": "grade", "id": 9001, "min": 80}], "showc": [True]}, True),
        ({"op": "&", "c": [{"type": "grade", "id": 9001, "min": 90}], "showc": [True]}, True),  # stricter
        ({"op": "&", "c": [{"type": "grade", "id": 9001, "min": 70}], "showc": [True]}, False),
        ({"op": "&", "c": [{"type": "grade", "id": 9002, "min": 80}], "showc": [True]}, False),
        ({"op": "|", "c": [{"type": "grade", "id": 9001, "min": 80}, {"type": "group", "id": 4}],
          "show": True}, False),  # a group member skips the check
        ({"op": "!|", "c": [{"type": "grade", "id": 9001, "min": 80}], "showc": [True]}, False),
        (None, False),
    ],
)
def test_requires_grade(tree: object, expected: bool) -> None:
    assert requires_grade(tree, 9001, 80.0) is expected


def test_restriction_instructions_give_steps_and_the_exact_json() -> None:
    module = Module(sourced_id="52", class_sourced_id="5", title="Unit 2: Systems")
    check = Activity(sourced_id="9001", class_sourced_id="5", title="Unit 1 mastery check", score_maximum=10)

    steps = restriction_instructions(module, check, 8)

    assert steps.min_percent == 80.0
    assert json.loads(steps.availability_json) == {
        "op": "&", "c": [{"type": "grade", "id": 9001, "min": 80.0}], "showc": [True]}
    text = steps.as_text()
    assert "“Unit 2: Systems”" in text and "“Unit 1 mastery check”" in text
    assert "80 %" in text and "Enable restricted access" in text
    assert requires_grade(steps.availability, 9001, 80.0)


# ---------------------------------------------------------------------------------------------- writes


def score(**kw: object) -> ScoreWrite:
    values = {"class_sourced_id": "5", "activity_sourced_id": "9001", "person_sourced_id": "102",
              "score_given": 80.0, "score_maximum": 100.0,
              "timestamp": datetime(2024, 5, 1, 12, tzinfo=UTC), **kw}
    return ScoreWrite(**values)  # type: ignore[arg-type]


def test_score_is_written_to_the_activity_grade_item(moodle: FakeMoodle) -> None:
    moodle.on("core_grades_update_grades", 0)

    result = make().push(score(comment="Nice work"))

    assert result.remote_id == "9001:102" and result.detail == {"grade": 8.0}
    (params,) = moodle.params_of("core_grades_update_grades")
    assert params == {
        "wstoken": TOKEN, "wsfunction": "core_grades_update_grades", "moodlewsrestformat": "json",
        "source": "trailmark", "courseid": "5", "component": "mod_quiz", "activityid": "511",
        "itemnumber": "0", "grades[0][studentid]": "102", "grades[0][grade]": "8.0",
        "grades[0][str_feedback]": "Nice work",
    }
    (lookup,) = moodle.params_of("gradereport_user_get_grade_items")
    assert (lookup["courseid"], lookup["userid"]) == ("5", "102")


def test_grade_items_seen_in_a_pull_need_no_lookup(moodle: FakeMoodle) -> None:
    moodle.on("core_grades_update_grades", 0)
    connector = make()
    list(connector.pull(Scope.CONTENT))
    lookups = len(moodle.params_of("gradereport_user_get_grade_items"))

    connector.push(score())

    assert len(moodle.params_of("gradereport_user_get_grade_items")) == lookups


def test_grade_writes_are_retried_but_older_scores_are_skipped(moodle: FakeMoodle) -> None:
    moodle.queue("core_grades_update_grades", (502, "bad gateway"), 0)
    connector = make()

    connector.push(score())
    stale = connector.push(score(timestamp=datetime(2024, 4, 30, tzinfo=UTC), score_given=10.0))

    # one retry, then nothing for the stale score
    assert len(moodle.params_of("core_grades_update_grades")) == 2
    assert stale.detail == {"skipped": "a newer score was already written"}


def test_manual_grade_items_cannot_be_written(moodle: FakeMoodle) -> None:
    with pytest.raises(RemoteRejected, match="LTI"):
        make().push(score(activity_sourced_id="9003"))
    assert not moodle.params_of("core_grades_update_grades")


def test_locked_or_failed_grade_updates_are_rejected(moodle: FakeMoodle) -> None:
    moodle.on("core_grades_update_grades", 4)

    with pytest.raises(RemoteRejected, match="locked"):
        make().push(score())


def test_unknown_grade_item_is_not_found(moodle: FakeMoodle) -> None:
    with pytest.raises(NotFound):
        make().push(score(activity_sourced_id="4242"))


def test_grade_writes_need_the_function_in_the_service(moodle: FakeMoodle) -> None:
    info = fixture("site_info")
    info["functions"] = [f for f in info["functions"] if f["name"] != "core_grades_update_grades"]
    moodle.on("core_webservice_get_site_info", info)

    with pytest.raises(ConfigurationError, match="core_grades_update_grades"):
        make().push(score())


def test_clearing_a_grade_is_refused(moodle: FakeMoodle) -> None:
    with pytest.raises(RemoteRejected, match="cannot clear"):
        make().push(score(score_given=None))


def message() -> MessageWrite:
    return MessageWrite(recipient_sourced_ids=("101", "102"), subject="Unit 2", body="Unit 2 opens on Monday",
                        class_sourced_id="5")


def test_message_is_sent_once_per_recipient_and_partial_failures_reported(moodle: FakeMoodle) -> None:
    sent = fixture("send_instant_messages")

    def answer(params: dict[str, str]) -> object:
        sent[0]["clientmsgid"] = params["messages[0][clientmsgid]"]
        sent[1]["clientmsgid"] = params["messages[1][clientmsgid]"]
        return sent

    moodle.on("core_message_send_instant_messages", answer)

    result = make().push(message())

    assert result.remote_id == "4411"
    assert result.detail["sent"] == 1
    assert "blocked you" in result.detail["failed"]["102"]
    (params,) = moodle.params_of("core_message_send_instant_messages")
    assert params["messages[0][touserid]"] == "101"
    assert params["messages[0][text]"] == "Unit 2\n\nUnit 2 opens on Monday"
    assert params["messages[0][textformat]"] == "2"
    assert params["messages[0][clientmsgid]"] != params["messages[1][clientmsgid]"]


def test_message_that_reaches_nobody_is_rejected(moodle: FakeMoodle) -> None:
    failure = fixture("send_instant_messages")[1]
    moodle.on("core_message_send_instant_messages", [failure, failure])

    with pytest.raises(RemoteRejected, match="blocked you"):
        make().push(message())


def test_message_send_is_not_retried(moodle: FakeMoodle) -> None:
    moodle.queue("core_message_send_instant_messages", (503, "busy"), fixture("send_instant_messages"))

    with pytest.raises(UpstreamError):
        make().push(message())
    assert len(moodle.params_of("core_message_send_instant_messages")) == 1


def gate(min_score: float = 8.0, module: str = "52") -> GateWrite:
    return GateWrite(class_sourced_id="5", module_sourced_id=module, prerequisite_module_sourced_ids=("51",),
                     check_activity_sourced_id="9001", min_score=min_score)


def test_gate_not_set_in_moodle_is_refused_with_the_set_up_steps(moodle: FakeMoodle) -> None:
    contents = fixture("contents_5")
    contents[2]["modules"][0]["availability"] = None  # "Systems practice" left open
    moodle.on("core_course_get_contents", contents)

    with pytest.raises(RemoteRejected) as caught:
        make().push(gate())

    message = str(caught.value)
    # the quiz is restricted on "grade OR group": a group member skips the check
    assert "Not yet restricted: Systems practice, Systems quiz." in message
    assert "“Unit 2: Systems”" in message and "“Unit 1 mastery check”" in message
    assert '{"op":"&","c":[{"type":"grade","id":9001,"min":80.0}],"showc":[true]}' in message


def test_gate_already_set_in_moodle_is_confirmed(moodle: FakeMoodle) -> None:
    contents = fixture("contents_5")
    contents[2]["modules"][2]["availability"] = contents[2]["modules"][0]["availability"]
    moodle.on("core_course_get_contents", contents)

    result = make().push(gate())

    assert result.detail == {"verified": True, "activities": 2}  # the label needs no restriction


def test_gate_with_a_higher_bar_than_moodle_enforces_is_refused(moodle: FakeMoodle) -> None:
    contents = fixture("contents_5")
    contents[2]["modules"][2]["availability"] = contents[2]["modules"][0]["availability"]
    moodle.on("core_course_get_contents", contents)

    with pytest.raises(RemoteRejected, match="90 %"):
        make().push(gate(min_score=9.0))


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"kind": "moodle", "base_url": BASE, "token": TOKEN}, "name"),
        ({"name": "m", "kind": "canvas", "base_url": BASE, "token": TOKEN}, "expected 'moodle'"),
        ({"name": "m", "kind": "moodle", "token": TOKEN}, "base_url"),
        ({"name": "m", "kind": "moodle", "base_url": BASE}, "Manage tokens"),
        ({"name": "m", "kind": "moodle", "base_url": "moodle.north.example", "token": TOKEN}, "http"),
        ({"name": "m", "kind": "moodle", "base_url": BASE, "token": TOKEN, "course_ids": ["x"]},
         "course_ids"),
    ],
)
def test_from_config_names_the_missing_or_wrong_key(cfg: dict, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        MoodleConnector.from_config(cfg)
