"""Moodle REST transport: parameter encoding, errors in HTTP 200 bodies, warnings, retries."""

from __future__ import annotations

import logging

import pytest
import responses

from connectors.base import (
    AuthError,
    ConfigurationError,
    NotFound,
    RemoteRejected,
    UpstreamError,
)
from connectors.http import HttpClient
from connectors.moodle.client import MoodleClient, encode_params
from tests.connectors.moodle.moodle_fakes import BASE, TOKEN, FakeMoodle, fixture


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def moodle(rsps: responses.RequestsMock) -> FakeMoodle:
    return FakeMoodle(rsps)


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(sleeps: list[float]) -> MoodleClient:
    return MoodleClient(HttpClient(BASE, source="north-moodle", sleep=sleeps.append, max_retries=3), TOKEN)


def test_encode_params_flattens_nested_structures_php_style() -> None:
    pairs = encode_params({
        "courseid": 5,
        "options": [{"name": "limitfrom", "value": 0}, {"name": "onlyactive", "value": True}],
        "messages": [{"touserid": 7, "text": "Hi & welcome", "clientmsgid": None}],
        "field": "",
        "skipped": None,
    })
    assert pairs == [
        ("courseid", "5"),
        ("options[0][name]", "limitfrom"),
        ("options[0][value]", "0"),
        ("options[1][name]", "onlyactive"),
        ("options[1][value]", "1"),
        ("messages[0][touserid]", "7"),
        ("messages[0][text]", "Hi & welcome"),
        ("field", ""),
    ]


def test_call_posts_token_function_and_format_in_the_body(client: MoodleClient, moodle: FakeMoodle) -> None:
    moodle.on("core_course_get_courses_by_field", fixture("courses"))

    body = client.get_courses_by_field("ids", "5,6")

    assert [c["id"] for c in body["courses"]] == [1, 5, 6]
    (function, params), = moodle.calls
    assert function == "core_course_get_courses_by_field"
    assert params == {"wstoken": TOKEN, "wsfunction": function, "moodlewsrestformat": "json",
                      "field": "ids", "value": "5,6"}
    assert TOKEN not in moodle.urls[0]


@pytest.mark.parametrize(
    ("name", "error", "hint"),
    [
        ("invalidtoken", AuthError, "Manage tokens"),
        ("accessexception", AuthError, "External services → Functions"),
        ("nopermissions", AuthError, "Define roles"),
        ("requireloginerror", AuthError, "Enrol it"),
        ("webservicesnotenabled", ConfigurationError, "Enable web services"),
        ("servicenotavailable", ConfigurationError, "External services"),
        ("competenciesarenotenabled", ConfigurationError, "Enable competencies"),
        ("invalidrecord", NotFound, "does not exist"),
        ("unknownfunction", ConfigurationError, "has no web service function"),
        ("invalidparameter", RemoteRejected, "Missing required key"),
        ("dmlreadexception", UpstreamError, "database"),
        ("other", RemoteRejected, "You cannot message yourself"),
    ],
)
def test_error_bodies_on_http_200_become_typed_errors(
    client: MoodleClient, moodle: FakeMoodle, name: str, error: type[Exception], hint: str
) -> None:
    moodle.on("core_enrol_get_enrolled_users", fixture("errors")[name])

    with pytest.raises(error) as caught:
        client.get_enrolled_users(5, limit_from=0, limit_number=100)

    message = str(caught.value)
    assert "core_enrol_get_enrolled_users" in message
    assert hint in message
    assert TOKEN not in message
    assert type(caught.value) is error
    assert caught.value.errorcode == fixture("errors")[name]["errorcode"]


def test_warnings_are_collected_and_logged(client: MoodleClient, moodle: FakeMoodle,
                                           caplog: pytest.LogCaptureFixture) -> None:
    moodle.on("core_completion_get_activities_completion_status", fixture("completion_5_101"))

    with caplog.at_level(logging.WARNING, logger="connectors.moodle.client"):
        body = client.get_activities_completion_status(5, 101)

    assert len(body["statuses"]) == 2
    (warning,) = client.warnings
    assert (warning.function, warning.item, warning.itemid, warning.warningcode) == (
        "core_completion_get_activities_completion_status", "cm", 530, "nocompletiontracking")
    assert "nocompletiontracking" in caplog.text


def test_reads_are_retried_after_a_server_error(client: MoodleClient, moodle: FakeMoodle,
                                                 sleeps: list[float]) -> None:
    moodle.queue("core_course_get_contents", (503, "<html>busy</html>"), fixture("contents_6"))

    sections = client.get_contents(6)

    assert sections[0]["id"] == 60
    assert moodle.functions() == ["core_course_get_contents"] * 2
    assert len(sleeps) == 1


def test_messages_are_never_retried(client: MoodleClient, moodle: FakeMoodle, sleeps: list[float]) -> None:
    moodle.queue("core_message_send_instant_messages", (503, "busy"), fixture("send_instant_messages"))

    with pytest.raises(UpstreamError):
        client.send_instant_messages([{"touserid": 101, "text": "hi", "textformat": 2}])

    assert moodle.functions() == ["core_message_send_instant_messages"]
    assert sleeps == []


def test_a_non_json_answer_points_at_the_rest_protocol_setting(client: MoodleClient,
                                                               moodle: FakeMoodle) -> None:
    moodle.on("core_webservice_get_site_info", "<html><body>Protocol 'rest' is not enabled</body></html>")

    with pytest.raises(UpstreamError, match="Manage protocols"):
        client.site_info()


def test_site_info_feature_detection(client: MoodleClient, moodle: FakeMoodle) -> None:
    moodle.on("core_webservice_get_site_info", fixture("site_info"))

    info = client.site_info()

    assert info.userid == 3
    assert info.release.startswith("4.3")
    assert client.has_function("core_grades_update_grades")
    assert not client.has_function("core_competency_grade_competency_in_course")
    with pytest.raises(ConfigurationError, match="External services → Functions"):
        client.require_function("enrol_manual_enrol_users", "enrolling people")
    assert moodle.functions() == ["core_webservice_get_site_info"]  # cached


def test_feature_detection_assumes_yes_when_site_info_is_not_allowed(client: MoodleClient,
                                                                     moodle: FakeMoodle) -> None:
    moodle.on("core_webservice_get_site_info", fixture("errors")["accessexception"])

    assert client.has_function("core_course_get_contents")


def test_an_invalid_token_stops_feature_detection(client: MoodleClient, moodle: FakeMoodle) -> None:
    moodle.on("core_webservice_get_site_info", fixture("errors")["invalidtoken"])

    with pytest.raises(AuthError):
        client.has_function("core_course_get_contents")


def test_empty_token_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="token"):
        MoodleClient(HttpClient(BASE, source="north-moodle"), "")
