"""LTI Advantage connector: client-credentials tokens, NRPS paging and deltas, AGS items, scores, results."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
import responses
from responses import matchers

from connectors.base import (
    TOBEDELETED,
    Activity,
    AuthError,
    Capability,
    Class,
    Complete,
    Connector,
    Enrollment,
    GateWrite,
    MessageWrite,
    Person,
    Rejected,
    RemoteRejected,
    Result,
    Scope,
    ScoreWrite,
)
from connectors.lti import LtiAdvantageConnector, PlatformSettings, context_role, iso_timestamp, service_url
from tests.connectors.lti.lti_fakes import (
    CLIENT_ID,
    DIFFERENCES_URL,
    ISSUER,
    KID,
    LINEITEM_17,
    LINEITEM_18,
    LINEITEMS_URL,
    MEMBERSHIPS_PAGE2,
    MEMBERSHIPS_URL,
    TOKEN_URL,
    Clock,
    decode_assertion,
    fixture,
    link,
    signer,
)

NRPS = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
SCORE = "application/vnd.ims.lis.v1.score+json"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
LINEITEMS = LINEITEMS_URL.split("?")[0]  # registered without the query, matched with query matchers
TYPE_ID = {"type_id": "2"}


def path(url: str) -> str:
    return url.split("?")[0]


def query(**params: str) -> object:
    return matchers.query_param_matcher({**TYPE_ID, **params})


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def tokens(rsps: responses.RequestsMock) -> list[dict[str, list[str]]]:
    """Serve the token endpoint, handing out token-1, token-2, … and recording each form."""
    forms: list[dict[str, list[str]]] = []

    def issue(request):  # type: ignore[no-untyped-def]
        forms.append(parse_qs(request.body))
        body = {**fixture("token"), "access_token": f"token-{len(forms)}",
                "scope": forms[-1]["scope"][0]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    rsps.add_callback(responses.POST, TOKEN_URL, callback=issue)
    return forms


def make(clock: Clock, sleeps: list[float], **kw: object) -> LtiAdvantageConnector:
    platform = PlatformSettings(issuer=ISSUER, client_id=CLIENT_ID, token_url=TOKEN_URL,
                                audience=kw.pop("audience", None))  # type: ignore[arg-type]
    return LtiAdvantageConnector("north-moodle-lti", platform, MEMBERSHIPS_URL, LINEITEMS_URL, signer,
                                 page_size=2, now=clock, sleep=sleeps.append, max_retries=3,
                                 **kw)  # type: ignore[arg-type]


def serve_memberships(rsps: responses.RequestsMock) -> None:
    rsps.get(MEMBERSHIPS_URL, json=fixture("memberships_page1"),
             headers=link(next=MEMBERSHIPS_PAGE2),
             match=[matchers.query_param_matcher({"limit": "2"}), matchers.header_matcher({"Accept": NRPS})])
    rsps.get(MEMBERSHIPS_PAGE2, json=fixture("memberships_page2"), headers=link(differences=DIFFERENCES_URL),
             match=[matchers.header_matcher({"Accept": NRPS})])


def score(**kw: object) -> ScoreWrite:
    values = {"class_sourced_id": "5", "activity_sourced_id": LINEITEM_17, "person_sourced_id": "101",
              "score_given": 8.0, "score_maximum": 10.0,
              "timestamp": datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC), **kw}
    return ScoreWrite(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- tokens


def test_is_a_connector(clock: Clock, sleeps: list[float]) -> None:
    connector = make(clock, sleeps)
    assert isinstance(connector, Connector)
    assert connector.kind == "lti"
    assert connector.capabilities == {
        Capability.READ_ROSTER, Capability.READ_CONTENT, Capability.READ_PROGRESS, Capability.READ_DELTA,
        Capability.WRITE_SCORES,
    }


def test_token_request_sends_a_signed_client_assertion(rsps: responses.RequestsMock, tokens: list,
                                                       clock: Clock, sleeps: list[float]) -> None:
    serve_memberships(rsps)

    list(make(clock, sleeps).pull(Scope.ROSTER))

    (form,) = tokens
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assert form["scope"] == [SCOPE_NRPS]
    header, claims = decode_assertion(form["client_assertion"][0])
    assert header == {"alg": "RS256", "kid": KID, "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == TOKEN_URL
    assert claims["iat"] == int(clock.now.timestamp())
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert claims["jti"]
    nrps_calls = [c for c in rsps.calls if c.request.url.startswith(MEMBERSHIPS_URL)]
    assert {c.request.headers["Authorization"] for c in nrps_calls} == {"Bearer token-1"}


def test_assertion_audience_and_unique_jti(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                           sleeps: list[float]) -> None:
    connector = make(clock, sleeps, audience="https://moodle.north.example")
    first = connector.client.tokens.assertion_claims()
    second = connector.client.tokens.assertion_claims()

    assert first["aud"] == second["aud"] == "https://moodle.north.example"
    assert first["jti"] != second["jti"]
    _, claims = decode_assertion(signer(first), audience="https://moodle.north.example")
    assert claims["jti"] == first["jti"]


def test_tokens_are_reused_per_scope_set_until_shortly_before_expiry(
    rsps: responses.RequestsMock, tokens: list, clock: Clock, sleeps: list[float]
) -> None:
    serve_memberships(rsps)
    connector = make(clock, sleeps)

    list(connector.pull(Scope.ROSTER))
    clock.advance(3000)
    list(connector.pull(Scope.ROSTER))
    assert len(tokens) == 1  # 50 minutes into a one-hour token: still good

    clock.advance(570)  # 30 s before expiry: too close to trust
    list(connector.pull(Scope.ROSTER))
    assert len(tokens) == 2
    last = [c for c in rsps.calls if c.request.url.startswith(MEMBERSHIPS_URL)][-1]
    assert last.request.headers["Authorization"] == "Bearer token-2"


def test_token_endpoint_refusal_names_what_to_check(rsps: responses.RequestsMock, clock: Clock,
                                                    sleeps: list[float]) -> None:
    rsps.post(TOKEN_URL, json=fixture("token_invalid_scope"), status=400)
    serve_memberships(rsps)

    with pytest.raises(AuthError) as caught:
        list(make(clock, sleeps).pull(Scope.ROSTER))

    assert "Requested scope is not permitted" in str(caught.value)
    assert "services behind these scopes are enabled" in str(caught.value)
    assert SCOPE_NRPS in str(caught.value)


# ---------------------------------------------------------------------------------------------- NRPS


def test_memberships_two_pages_map_people_and_enrollments(rsps: responses.RequestsMock, tokens: list,
                                                          clock: Clock, sleeps: list[float]) -> None:
    serve_memberships(rsps)
    connector = make(clock, sleeps)

    items = list(connector.pull(Scope.ROSTER))

    assert items[0] == Class(sourced_id="5", title="Algebra I - Period 3", class_code="ALG1-P3",
                             lti_context_id="5")
    people = {p.sourced_id: p for p in items if isinstance(p, Person)}
    assert set(people) == {"101", "201", "102", "401", "501"}  # the system administrator has no course role
    assert people["101"] == Person(sourced_id="101", role="student", given_name="Ana", family_name="Lopez",
                                   email="ana.lopez@students.north.example", sis_id="S-1001", lti_sub="101")
    assert (people["102"].given_name, people["102"].family_name) == ("Ben", "Okafor")
    enrollments = {e.sourced_id: e for e in items if isinstance(e, Enrollment)}
    assert {k: (e.role, e.status) for k, e in enrollments.items()} == {
        "5:101:student": ("student", "active"),
        "5:201:teacher": ("teacher", "active"),
        "5:102:student": ("student", TOBEDELETED),
        "5:401:aide": ("aide", "active"),
        "5:501:guardian": ("guardian", "active"),
    }
    assert items[-1] == Complete("enrollment", "5", "class")
    assert connector.differences_url == DIFFERENCES_URL
    assert connector.cursor == {"differences_url": DIFFERENCES_URL}


def test_role_filter_is_sent(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                             sleeps: list[float]) -> None:
    learner = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
    rsps.get(MEMBERSHIPS_URL, json=fixture("memberships_page2"),
             match=[matchers.query_param_matcher({"limit": "2", "role": learner})])

    items = list(make(clock, sleeps, role=learner).pull(Scope.ROSTER))

    assert Complete("enrollment", "5", "class") in items


def test_delta_poll_reads_the_differences_link_and_removes_nothing_by_omission(
    rsps: responses.RequestsMock, tokens: list, clock: Clock, sleeps: list[float]
) -> None:
    next_differences = f"{MEMBERSHIPS_URL}?since=1714500000"
    rsps.get(DIFFERENCES_URL, json=fixture("memberships_differences"),
             headers=link(differences=next_differences), match=[matchers.header_matcher({"Accept": NRPS})])
    connector = make(clock, sleeps, context_id="5", differences_url=DIFFERENCES_URL)

    items = list(connector.pull(Scope.ROSTER, since=datetime(2024, 4, 29, tzinfo=UTC)))

    assert not any(isinstance(i, (Class, Complete)) for i in items)
    enrollments = {e.sourced_id: e.status for e in items if isinstance(e, Enrollment)}
    assert enrollments == {"5:102:student": TOBEDELETED, "5:103:student": "active"}
    assert connector.differences_url == next_differences


def test_a_member_without_user_id_is_rejected_and_nothing_is_completed(
    rsps: responses.RequestsMock, tokens: list, clock: Clock, sleeps: list[float]
) -> None:
    page = fixture("memberships_page1")
    del page["members"][1]["user_id"]
    rsps.get(MEMBERSHIPS_URL, json=page)

    items = list(make(clock, sleeps).pull(Scope.ROSTER))

    (rejected,) = [i for i in items if isinstance(i, Rejected)]
    assert (rejected.kind, rejected.field) == ("person", "user_id")
    assert not any(isinstance(i, Complete) for i in items)


def test_throttled_requests_back_off_as_asked(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                              sleeps: list[float]) -> None:
    rsps.get(MEMBERSHIPS_URL, status=429, headers={"Retry-After": "7"}, json={"error": "slow down"})
    serve_memberships(rsps)

    items = list(make(clock, sleeps).pull(Scope.ROSTER))

    assert sleeps == [7.0]
    assert Complete("enrollment", "5", "class") in items


@pytest.mark.parametrize(
    ("uri", "role"),
    [
        ("http://purl.imsglobal.org/vocab/lis/v2/membership#Learner", "student"),
        ("http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor", "teacher"),
        ("http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant", "aide"),
        ("http://purl.imsglobal.org/vocab/lis/v2/membership#Mentor", "guardian"),
        ("http://purl.imsglobal.org/vocab/lis/v2/membership/Mentor#Advisor", "guardian"),
        ("http://purl.imsglobal.org/vocab/lis/v2/membership#Administrator", "administrator"),
        ("http://purl.imsglobal.org/vocab/lis/v2/institution/person#Student", None),
        ("http://purl.imsglobal.org/vocab/lti/system/person#TestUser", None),
        ("Learner", "student"),
        ("Instructor", "teacher"),
    ],
)
def test_context_roles(uri: str, role: str | None) -> None:
    assert context_role(uri) == role


# ---------------------------------------------------------------------------------------------- AGS reads


def test_line_items_and_results(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                sleeps: list[float]) -> None:
    rsps.get(LINEITEMS, json=fixture("lineitems"),
             match=[query(limit="2"),
                    matchers.header_matcher({"Accept": "application/vnd.ims.lis.v2.lineitemcontainer+json"})])
    rsps.get(path(service_url(LINEITEM_17, "results")), json=fixture("results_17"),
             match=[query(limit="2"),
                    matchers.header_matcher({"Accept": "application/vnd.ims.lis.v2.resultcontainer+json"})])
    rsps.get(path(service_url(LINEITEM_18, "results")), json=fixture("results_18"), match=[query(limit="2")])

    items = list(make(clock, sleeps, context_id="5").pull(Scope.CONTENT))
    items += list(make(clock, sleeps, context_id="5").pull(Scope.PROGRESS))

    activities = [i for i in items if isinstance(i, Activity)]
    assert activities[0] == Activity(sourced_id=LINEITEM_17, class_sourced_id="5",
                                     title="Unit 1 mastery check", score_maximum=10.0,
                                     due_at=datetime(2024, 5, 2, tzinfo=UTC), category="mastery-check")
    assert activities[1].sourced_id == LINEITEM_18
    results = [i for i in items if isinstance(i, Result)]
    assert results == [Result(sourced_id=f"{LINEITEM_17}:101", person_sourced_id="101",
                              activity_sourced_id=LINEITEM_17, score=8.5, score_maximum=10.0,
                              comment="Solid work")]  # user 102 has no result yet
    assert Complete("activity", "5", "class") in items
    assert Complete("result", "5", "class") in items
    assert service_url(LINEITEM_17, "scores") == (
        "https://moodle.north.example/mod/lti/services.php/5/lineitems/17/lineitem/scores?type_id=2")


# ---------------------------------------------------------------------------------------------- AGS writes


def test_ensure_line_item_creates_when_missing(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                               sleeps: list[float]) -> None:
    rsps.get(LINEITEMS, json=[],
             match=[query(resource_id="trailmark-check-unit-3", tag="mastery-check", limit="2")])
    rsps.post(LINEITEMS, json=fixture("lineitem_created"), status=201,
              match=[query(),
                     matchers.header_matcher({"Content-Type": "application/vnd.ims.lis.v2.lineitem+json"}),
                     matchers.json_params_matcher({"scoreMaximum": 10, "label": "Unit 3 mastery check",
                                                   "resourceId": "trailmark-check-unit-3",
                                                   "tag": "mastery-check"})])

    item = make(clock, sleeps).ensure_line_item("trailmark-check-unit-3", "Unit 3 mastery check", 10,
                                                tag="mastery-check")

    assert item.id.endswith("/lineitems/19/lineitem?type_id=2")
    assert [c.request.method for c in rsps.calls if c.request.url.startswith(LINEITEMS)] == ["GET", "POST"]
    assert [f["scope"] for f in tokens] == [["https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"]]


def test_ensure_line_item_finds_an_existing_one(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                                sleeps: list[float]) -> None:
    rsps.get(LINEITEMS, json=fixture("lineitems")[:1],
             match=[query(resource_id="trailmark-check-unit-1", limit="2")])

    item = make(clock, sleeps).ensure_line_item("trailmark-check-unit-1", "Unit 1 mastery check", 10)

    assert item.id == LINEITEM_17
    assert not [c for c in rsps.calls if c.request.method == "POST" and c.request.url.startswith(LINEITEMS)]


def test_score_post_body_and_headers(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                     sleeps: list[float]) -> None:
    scores = service_url(LINEITEM_17, "scores")
    rsps.post(scores, status=200, json={})

    result = make(clock, sleeps).push(score(comment="Mastered on the second try"))

    (call,) = [c for c in rsps.calls if c.request.url == scores]
    assert call.request.headers["Content-Type"] == SCORE
    assert call.request.headers["Authorization"] == "Bearer token-1"
    assert json.loads(call.request.body) == {
        "userId": "101",
        "scoreGiven": 8.0,
        "scoreMaximum": 10.0,
        "comment": "Mastered on the second try",
        "timestamp": "2024-05-01T12:30:15.250+00:00",
        "activityProgress": "Completed",
        "gradingProgress": "FullyGraded",
    }
    assert [f["scope"] for f in tokens] == [[SCOPE_SCORE]]
    assert result.remote_id == LINEITEM_17


def test_score_without_a_value_clears_it(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                         sleeps: list[float]) -> None:
    rsps.post(service_url(LINEITEM_17, "scores"), status=204)

    make(clock, sleeps).push(score(score_given=None, grading_progress="NotReady",
                                   activity_progress="Initialized"))

    body = json.loads(rsps.calls[-1].request.body)
    assert "scoreGiven" not in body and "scoreMaximum" not in body
    assert body["gradingProgress"] == "NotReady"


def test_score_timestamps_never_go_backwards(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                             sleeps: list[float]) -> None:
    scores = service_url(LINEITEM_17, "scores")
    rsps.post(scores, status=200, json={})
    connector = make(clock, sleeps)

    connector.push(score())
    older = connector.push(score(score_given=3.0, timestamp=datetime(2024, 5, 1, 12, tzinfo=UTC)))
    connector.push(score(person_sourced_id="102", timestamp=datetime(2024, 5, 1, 12, tzinfo=UTC)))
    connector.push(score())  # the same write again (an outbox retry) is sent again

    sent = [json.loads(c.request.body) for c in rsps.calls if c.request.url == scores]
    assert [(s["userId"], s["timestamp"]) for s in sent] == [
        ("101", "2024-05-01T12:30:15.250+00:00"),
        ("102", "2024-05-01T12:00:00.000+00:00"),
        ("101", "2024-05-01T12:30:15.250+00:00"),
    ]
    assert older.detail["skipped"] == "a newer score was already sent"


def test_score_for_an_activity_the_platform_does_not_know_creates_its_line_item(
    rsps: responses.RequestsMock, tokens: list, clock: Clock, sleeps: list[float]
) -> None:
    rsps.get(LINEITEMS, json=[], match=[query(resource_id="tm-activity-9", limit="2")])
    rsps.post(LINEITEMS, json={**fixture("lineitem_created"), "resourceId": "tm-activity-9"}, status=201,
              match=[query()])
    created = fixture("lineitem_created")["id"]
    rsps.post(service_url(created, "scores"), status=200, json={})

    result = make(clock, sleeps).push(score(activity_sourced_id="tm-activity-9"))

    assert result.remote_id == created


def test_401_fetches_one_new_token_and_retries_once(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                                    sleeps: list[float]) -> None:
    scores = service_url(LINEITEM_17, "scores")
    rsps.post(scores, status=401, json={"error": "invalid_token"})
    rsps.post(scores, status=200, json={})

    make(clock, sleeps).push(score())

    sent = [c.request.headers["Authorization"] for c in rsps.calls if c.request.url == scores]
    assert sent == ["Bearer token-1", "Bearer token-2"]
    assert len(tokens) == 2


def test_a_second_401_is_an_auth_error(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                       sleeps: list[float]) -> None:
    scores = service_url(LINEITEM_17, "scores")
    rsps.post(scores, status=401, json={"error": "invalid_token"})

    with pytest.raises(AuthError):
        make(clock, sleeps).push(score())

    assert len([c for c in rsps.calls if c.request.url == scores]) == 2
    assert len(tokens) == 2


def test_score_post_backs_off_when_throttled(rsps: responses.RequestsMock, tokens: list, clock: Clock,
                                             sleeps: list[float]) -> None:
    scores = service_url(LINEITEM_17, "scores")
    rsps.post(scores, status=429, headers={"Retry-After": "3"})
    rsps.post(scores, status=200, json={})

    make(clock, sleeps).push(score())

    assert sleeps == [3.0]
    assert len([c for c in rsps.calls if c.request.url == scores]) == 2


@pytest.mark.parametrize(
    "write",
    [
        GateWrite(class_sourced_id="5", module_sourced_id="52", prerequisite_module_sourced_ids=("51",)),
        MessageWrite(recipient_sourced_ids=("101",), subject="Hi", body="Hello"),
    ],
)
def test_only_scores_can_be_written(write: object, clock: Clock, sleeps: list[float]) -> None:
    with pytest.raises(RemoteRejected, match="only scores"):
        make(clock, sleeps).push(write)  # type: ignore[arg-type]


def test_iso_timestamp_has_milliseconds_and_an_offset() -> None:
    assert iso_timestamp(datetime(2024, 5, 1, 8, 0, 0, 123456)) == "2024-05-01T08:00:00.123+00:00"
    east = datetime(2024, 5, 1, 10, 0, tzinfo=UTC) + timedelta(0)
    assert iso_timestamp(east.astimezone()) == "2024-05-01T10:00:00.000+00:00"


def test_tokens_and_assertions_never_reach_the_logs(
    rsps: responses.RequestsMock, tokens: list, clock: Clock, sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    scores = service_url(LINEITEM_17, "scores")
    rsps.post(scores, status=401, json={"error": "invalid_token"})
    rsps.post(scores, status=200, json={})

    with caplog.at_level(logging.DEBUG):
        make(clock, sleeps).push(score())

    assert caplog.records
    assert "token-1" not in caplog.text and "token-2" not in caplog.text
    assert "eyJ" not in caplog.text  # no signed assertion
