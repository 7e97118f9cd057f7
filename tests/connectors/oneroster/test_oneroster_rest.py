"""OneRoster REST connector against payloads shaped as the 1.1 and 1.2 specifications document them."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature
from responses import matchers

from connectors.base import (
    AcademicSession,
    Activity,
    AuthError,
    Capability,
    Class,
    Complete,
    ConfigurationError,
    Course,
    Enrollment,
    GuardianLink,
    Org,
    Person,
    RateLimited,
    Rejected,
    Result,
    Scope,
    ScoreWrite,
    Tombstone,
    kind_of,
)
from connectors.oneroster import OneRosterConnector, OneRosterRestConnector
from connectors.oneroster.connector import service_urls

FIXTURES = Path(__file__).parents[2] / "fixtures" / "oneroster"
V1P1 = "https://sis.example.org/ims/oneroster/v1p1"
V1P2 = "https://sis.example.org/ims/oneroster/rostering/v1p2"
GRADEBOOK_V1P2 = "https://sis.example.org/ims/oneroster/gradebook/v1p2"
TOKEN_URL = "https://sis.example.org/oauth/token"
SECRET = "s3cret-consumer-secret"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def rest_1_1(**extra: Any) -> OneRosterRestConnector:
    cfg = {
        "name": "sis",
        "kind": "oneroster-rest",
        "base_url": "https://sis.example.org",
        "version": "1.1",
        "client_id": "consumer-key",
        "client_secret": SECRET,
        **extra,
    }
    connector = OneRosterConnector.from_config(cfg, sleep=lambda _s: None)
    assert isinstance(connector, OneRosterRestConnector)
    return connector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rest_1_2(clock: Clock | None = None, **extra: Any) -> OneRosterRestConnector:
    cfg = {
        "name": "sis12",
        "kind": "oneroster-rest",
        "base_url": "https://sis.example.org/ims/oneroster",
        "version": "1.2",
        "client_id": "client-12",
        "client_secret": SECRET,
        "token_url": TOKEN_URL,
        **extra,
    }
    connector = OneRosterConnector.from_config(cfg, sleep=lambda _s: None, clock=clock or Clock())
    assert isinstance(connector, OneRosterRestConnector)
    return connector


ROSTER = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")


def serve_roster(root: str, **payloads: Any) -> None:
    """Serve every roster collection at ``root``: the given payloads, the rest empty."""
    for name in ROSTER:
        responses.get(f"{root}/{name}", json=payloads.get(name, {name: []}))


def add_roster_1_1(rsps: responses.RequestsMock, *, users_links: bool = True) -> None:
    """Serve a small 1.1 district; /users comes in two pages (limit 3) with X-Total-Count and Link."""
    for name in (
        "orgs",
        "academicSessions",
        "courses",
        "classes",
        "enrollments",
        "categories",
        "lineItems",
        "results",
    ):
        payload = fixture(f"v1p1_{name}.json")
        rsps.get(f"{V1P1}/{name}", json=payload, headers={"X-Total-Count": str(len(payload[name]))})
    next_url = f"{V1P1}/users?limit=3&offset=3"
    rsps.get(
        f"{V1P1}/users",
        json=fixture("v1p1_users_page1.json"),
        match=[matchers.query_param_matcher({"limit": "3", "offset": "0"}, strict_match=False)],
        headers={
            "X-Total-Count": "5",
            "Link": f'<{next_url}>; rel="next", <{V1P1}/users?limit=3&offset=3>; rel="last"',
        }
        if users_links
        else {"X-Total-Count": "5"},
    )
    rsps.get(
        f"{V1P1}/users",
        json=fixture("v1p1_users_page2.json"),
        match=[matchers.query_param_matcher({"limit": "3", "offset": "3"}, strict_match=False)],
        headers={"X-Total-Count": "5", "Link": f'<{V1P1}/users?limit=3&offset=0>; rel="first"'}
        if users_links
        else {"X-Total-Count": "5"},
    )


# --------------------------------------------------------------------------- 1.1 full pull


@responses.activate
def test_full_pull_streams_records_in_dependency_order_with_complete_markers() -> None:
    add_roster_1_1(responses.mock)
    connector = rest_1_1(page_size=3)

    items = list(connector.pull(Scope.ALL))

    kinds = [item.kind if isinstance(item, Complete) else f"+{kind_of(item)}" for item in items]
    assert kinds == [
        "+org",
        "+org",
        "org",
        "+academic_session",
        "+academic_session",
        "academic_session",
        "+course",
        "course",
        "+class",
        "class",
        "+person",
        "+person",
        "+person",
        "+person",
        "+person",
        "person",
        "+guardian_link",
        "+guardian_link",
        "+guardian_link",
        "guardian_link",
        "+enrollment",
        "+enrollment",
        "enrollment",
        "+activity",
        "activity",
        "+result",
        "result",
    ]
    records = {(kind_of(i), i.sourced_id): i for i in items if not isinstance(i, Complete)}
    assert records["org", "org-s1"] == Org("org-s1", "Hillside High", "school", "HHS", "org-d")
    assert records["academic_session", "sem-1"] == AcademicSession(
        "sem-1", "Fall 2025", "semester", date(2025, 8, 25), date(2026, 1, 16), "sy-2026", "2026"
    )
    assert records["course", "crs-alg1"] == Course(
        "crs-alg1", "Algebra I", "MTH-101", "org-s1", sis_id="crs-alg1"
    )
    assert records["class", "cls-alg1-p1"] == Class(
        "cls-alg1-p1", "Algebra I - P1", "crs-alg1", "org-s1", ("sem-1",), "ALG1-P1", sis_id="cls-alg1-p1"
    )
    assert records["person", "stu-1"] == Person(
        "stu-1", "student", "Ava", "Garcia", "ava@example.org", "ava.garcia", sis_id="stu-1", grades=("09",)
    )
    assert records["person", "par-2"].role == "guardian"
    assert records["enrollment", "enr-2"] == Enrollment(
        "enr-2", "cls-alg1-p1", "tch-1", "teacher", True, date(2025, 8, 25), date(2026, 1, 16)
    )
    assert records["activity", "li-1"] == Activity(
        "li-1",
        "cls-alg1-p1",
        "Linear equations quiz",
        score_maximum=10.0,
        due_at=datetime(2025, 9, 8, 23, 59, tzinfo=UTC),
        category="Homework",
    )
    assert records["result", "res-1"] == Result(
        "res-1", "stu-1", "li-1", score=8.5, scored_at=datetime(2025, 9, 9, tzinfo=UTC), comment="Well done"
    )
    links = {i for i in items if isinstance(i, GuardianLink)}
    assert links == {
        GuardianLink("par-1", "stu-1", "parent"),
        GuardianLink("par-1", "stu-2", "parent"),
        GuardianLink("par-2", "stu-1", "guardian"),
    }


@responses.activate
def test_signed_requests_use_oauth1_hmac_sha256_and_verify() -> None:
    add_roster_1_1(responses.mock)
    list(rest_1_1(page_size=3).pull(Scope.ROSTER))

    call = responses.calls[0]
    header = call.request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    assert header.startswith("OAuth ")
    assert 'oauth_signature_method="HMAC-SHA256"' in header
    assert 'oauth_consumer_key="consumer-key"' in header
    assert SECRET not in header
    query = urlsplit(call.request.url).query
    sent = dict(
        signature.collect_parameters(
            uri_query=query, headers={"Authorization": header}, exclude_oauth_signature=False
        )
    )
    request = OAuthRequest(call.request.url, "GET", headers={"Authorization": header})
    request.params = signature.collect_parameters(uri_query=query, headers={"Authorization": header})
    request.signature = sent["oauth_signature"]
    assert signature.verify_hmac_sha256(request, client_secret=SECRET)
    request.signature = "forged"
    assert not signature.verify_hmac_sha256(request, client_secret=SECRET)
    nonces = {
        re.search(r'oauth_nonce="([^"]+)"', str(c.request.headers["Authorization"])).group(1)  # type: ignore[union-attr]
        for c in responses.calls
    }
    assert len(nonces) == len(responses.calls)


@responses.activate
def test_users_follow_link_next_verbatim() -> None:
    add_roster_1_1(responses.mock)
    connector = rest_1_1(page_size=3)
    users = [i for i in connector.pull(Scope.ROSTER) if isinstance(i, Person)]
    assert [u.sourced_id for u in users] == ["stu-1", "stu-2", "par-1", "par-2", "tch-1"]
    user_calls = [c.request.url for c in responses.calls if "/users" in c.request.url]
    assert user_calls[1] == f"{V1P1}/users?limit=3&offset=3"


@responses.activate
def test_x_total_count_alone_pages_by_offset() -> None:
    add_roster_1_1(responses.mock, users_links=False)
    users = [i for i in rest_1_1(page_size=3).pull(Scope.ROSTER) if isinstance(i, Person)]
    assert len(users) == 5
    offsets = [
        parse_qs(urlsplit(c.request.url).query)["offset"]
        for c in responses.calls
        if "/users" in c.request.url
    ]
    assert offsets == [["0"], ["3"]]


@responses.activate
def test_provider_without_total_or_link_stops_on_short_page() -> None:
    page = fixture("v1p1_users_page1.json")["users"] + fixture("v1p1_users_page2.json")["users"]
    responses.get(
        f"{V1P1}/users",
        json={"users": page[:2]},
        match=[matchers.query_param_matcher({"limit": "2", "offset": "0"})],
    )
    responses.get(
        f"{V1P1}/users",
        json={"users": page[2:4]},
        match=[matchers.query_param_matcher({"limit": "2", "offset": "2"})],
    )
    responses.get(
        f"{V1P1}/users",
        json={"users": page[4:]},
        match=[matchers.query_param_matcher({"limit": "2", "offset": "4"})],
    )
    ids = [o["sourcedId"] for o in rest_1_1(page_size=2).client.iter_users()]
    assert ids == ["stu-1", "stu-2", "par-1", "par-2", "tch-1"]
    assert len(responses.calls) == 3


@responses.activate
def test_provider_without_total_or_link_stops_on_empty_page() -> None:
    page = fixture("v1p1_users_page1.json")["users"]
    responses.get(
        f"{V1P1}/users",
        json={"users": page[:2]},
        match=[matchers.query_param_matcher({"limit": "2", "offset": "0"})],
    )
    responses.get(
        f"{V1P1}/users",
        json={"users": []},
        match=[matchers.query_param_matcher({"limit": "2", "offset": "2"})],
    )
    assert len(list(rest_1_1(page_size=2).client.iter_users())) == 2
    assert len(responses.calls) == 2


# --------------------------------------------------------------------------- deltas


@responses.activate
def test_delta_filters_by_date_last_modified_and_tombstones_without_complete() -> None:
    serve_roster(V1P1, users=fixture("v1p1_users_delta.json"))
    since = datetime(2026, 2, 1, 0, 0, tzinfo=UTC)

    items = list(rest_1_1().pull(Scope.ROSTER, since=since))

    query = urlsplit(next(c.request.url for c in responses.calls if "/users" in c.request.url)).query
    assert "filter=dateLastModified%3E%272026-02-01T00%3A00%3A00.000Z%27" in query
    assert parse_qs(query)["filter"] == ["dateLastModified>'2026-02-01T00:00:00.000Z'"]
    # stu-2 was not modified after `since`: a provider that ignores the filter still yields only the delta.
    assert [i.sourced_id for i in items if isinstance(i, Person)] == ["stu-1"]
    assert Tombstone("person", "stu-9") in items
    assert not any(isinstance(i, Complete) for i in items)
    # par-1 is not in the delta: the link it already has stands, and nothing is guessed or rejected.
    assert not any(isinstance(i, GuardianLink | Rejected) for i in items)


@responses.activate
def test_delta_pull_emits_no_complete_markers() -> None:
    add_roster_1_1(responses.mock)
    items = list(rest_1_1(page_size=3).pull(Scope.ALL, since=datetime(2020, 1, 1, tzinfo=UTC)))
    assert items and not any(isinstance(i, Complete) for i in items)
    first_calls: dict[str, str] = {}
    for call in responses.calls:
        first_calls.setdefault(urlsplit(call.request.url).path.rsplit("/", 1)[-1], call.request.url)
    assert first_calls.pop("categories").find("filter=") == -1  # a tiny list, always read whole
    assert all("filter=" in url for url in first_calls.values())


# --------------------------------------------------------------------------- rejections and errors


@responses.activate
def test_invalid_object_is_rejected_and_blocks_complete() -> None:
    users = fixture("v1p1_users_page1.json")
    users["users"][1]["role"] = "wizard"
    serve_roster(V1P1, users=users)
    items = list(rest_1_1().pull(Scope.ROSTER))
    assert Rejected("person", "stu-2", "role", "unknown role 'wizard'") in items
    completed = {i.kind for i in items if isinstance(i, Complete)}
    assert completed == {"org", "academic_session", "course", "class", "enrollment"}


@responses.activate
def test_401_raises_auth_error() -> None:
    responses.get(f"{V1P1}/orgs", json=fixture("v1p1_error_401.json"), status=401)
    with pytest.raises(AuthError) as err:
        list(rest_1_1().pull(Scope.ROSTER))
    assert "not correctly authorised" in str(err.value)
    assert SECRET not in str(err.value)


@responses.activate
def test_429_honours_retry_after_then_succeeds() -> None:
    slept: list[float] = []
    responses.get(
        f"{V1P1}/orgs", json=fixture("v1p1_error_429.json"), status=429, headers={"Retry-After": "7"}
    )
    responses.get(f"{V1P1}/orgs", json=fixture("v1p1_orgs.json"))
    cfg = {
        "name": "sis",
        "kind": "oneroster-rest",
        "base_url": V1P1,
        "version": "1.1",
        "client_id": "k",
        "client_secret": SECRET,
    }
    connector = OneRosterConnector.from_config(cfg, sleep=slept.append)
    orgs = list(connector.client.iter_orgs())  # type: ignore[attr-defined]
    assert [o["sourcedId"] for o in orgs] == ["org-d", "org-s1"]
    assert slept == [7.0]


@responses.activate
def test_429_that_persists_raises_rate_limited() -> None:
    responses.get(
        f"{V1P1}/orgs", json=fixture("v1p1_error_429.json"), status=429, headers={"Retry-After": "1"}
    )
    with pytest.raises(RateLimited) as err:
        list(rest_1_1().client.iter_orgs())
    assert err.value.retry_after == 1.0


# --------------------------------------------------------------------------- 1.2


@responses.activate
def test_v1p2_token_is_fetched_once_and_reused_until_expiry() -> None:
    clock = Clock()
    token = responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    responses.get(f"{V1P2}/users", json=fixture("v1p2_users.json"))
    connector = rest_1_2(clock)

    list(connector.client.iter_users())
    list(connector.client.iter_users())
    assert token.call_count == 1
    clock.now += 3600
    list(connector.client.iter_users())
    assert token.call_count == 2

    request = token.calls[0].request
    assert request.headers["Authorization"].startswith("Basic ")
    form = parse_qs(request.body)
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"][0].split() == [
        "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly",
        "https://purl.imsglobal.org/spec/or/v1p2/scope/gradebook.readonly",
    ]
    api = [c.request for c in responses.calls if "/users" in c.request.url]
    assert api[0].headers["Authorization"] == "Bearer eyJhbGciOiJSUzI1NiJ9.test-access-token.sig"


@responses.activate
def test_v1p2_refused_token_is_refreshed_once() -> None:
    token = responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    responses.get(f"{V1P2}/orgs", json=fixture("v1p1_error_401.json"), status=401)
    responses.get(f"{V1P2}/orgs", json=fixture("v1p1_orgs.json"))
    assert len(list(rest_1_2().client.iter_orgs())) == 2
    assert token.call_count == 2


@responses.activate
def test_v1p2_bad_client_credentials_raise_auth_error() -> None:
    responses.post(TOKEN_URL, json=fixture("v1p2_token_error.json"), status=401)
    with pytest.raises(AuthError) as err:
        list(rest_1_2().client.iter_orgs())
    assert "Client authentication failed" in str(err.value)
    assert SECRET not in str(err.value)


@responses.activate
def test_v1p2_users_take_their_primary_role_and_agents() -> None:
    responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    serve_roster(V1P2, users=fixture("v1p2_users.json"))
    items = list(rest_1_2().pull(Scope.ROSTER))
    roles = {i.sourced_id: i.role for i in items if isinstance(i, Person)}
    assert roles == {"stu-1": "student", "tch-1": "teacher", "adm-1": "administrator", "par-1": "parent"}
    assert [i for i in items if isinstance(i, GuardianLink)] == [GuardianLink("par-1", "stu-1", "parent")]
    assert Complete("guardian_link") in items


@responses.activate
def test_demographics_are_never_requested_unless_granted() -> None:
    responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    serve_roster(V1P2)
    connector = rest_1_2()
    list(connector.pull(Scope.ROSTER))
    assert not any("demographics" in c.request.url for c in responses.calls)
    with pytest.raises(ConfigurationError, match="demographics"):
        list(connector.iter_demographics())


@responses.activate
def test_granted_demographics_ask_for_the_full_roster_scope() -> None:
    token = responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    responses.get(
        f"{V1P2}/demographics",
        json={
            "demographics": [
                {
                    "sourcedId": "stu-1",
                    "status": "active",
                    "dateLastModified": "2026-01-10T08:00:00.000Z",
                    "birthDate": "2011-04-02",
                    "sex": "female",
                }
            ]
        },
    )
    connector = rest_1_2(demographics=True)
    (demo,) = list(connector.iter_demographics())
    assert demo.birth_date == date(2011, 4, 2)
    assert "roster.readonly" in parse_qs(token.calls[0].request.body)["scope"][0]


# --------------------------------------------------------------------------- writes


def score(**kw: Any) -> ScoreWrite:
    base = {
        "class_sourced_id": "cls-alg1-p1",
        "activity_sourced_id": "li-1",
        "person_sourced_id": "stu-1",
        "score_given": 9.0,
        "score_maximum": 10.0,
        "timestamp": datetime(2026, 2, 1, 12, 0, tzinfo=UTC),
    }
    return ScoreWrite(**{**base, **kw})


@responses.activate
def test_results_are_written_over_the_existing_result() -> None:
    responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    responses.get(
        f"{GRADEBOOK_V1P2}/classes/cls-alg1-p1/students/stu-1/results",
        json=fixture("v1p2_student_results.json"),
    )
    put = responses.put(f"{GRADEBOOK_V1P2}/results/res-existing", json=fixture("v1p2_put_result.json"))
    connector = rest_1_2(write_results=True)
    assert Capability.WRITE_SCORES in connector.capabilities

    pushed = connector.push(score())

    assert pushed.remote_id == "res-existing"
    body = json.loads(put.calls[0].request.body)
    assert body == {
        "result": {
            "sourcedId": "res-existing",
            "status": "active",
            "dateLastModified": "2026-02-01T12:00:00.000Z",
            "lineItem": {"sourcedId": "li-1", "type": "lineItem"},
            "student": {"sourcedId": "stu-1", "type": "user"},
            "class": {"sourcedId": "cls-alg1-p1", "type": "class"},
            "scoreStatus": "fully graded",
            "score": 9.0,
            "scoreDate": "2026-02-01T12:00:00.000Z",
        }
    }
    scopes = parse_qs(responses.calls[0].request.body)["scope"][0]
    assert scopes.endswith("gradebook.createput")


@responses.activate
def test_new_results_get_a_stable_id_so_retries_are_idempotent() -> None:
    responses.post(TOKEN_URL, json=fixture("v1p2_token.json"))
    responses.get(f"{GRADEBOOK_V1P2}/classes/cls-alg1-p1/students/stu-1/results", json={"results": []})
    put = responses.put(re.compile(rf"{GRADEBOOK_V1P2}/results/trailmark-.+"), status=201)
    connector = rest_1_2(write_results=True)
    first = connector.push(score(activity_sourced_id="li-9"))
    second = connector.push(score(activity_sourced_id="li-9"))
    assert first.remote_id == second.remote_id
    assert put.call_count == 2


@responses.activate
def test_v1p1_results_are_signed_and_carry_a_date() -> None:
    responses.get(
        f"{V1P1}/classes/cls-alg1-p1/students/stu-1/results",
        status=404,
        json=fixture("v1p1_error_404.json"),
    )
    put = responses.put(re.compile(rf"{V1P1}/results/.+"), status=200)
    connector = rest_1_1(write_results=True)
    connector.push(score(score_given=None, grading_progress="NotReady"))
    request = put.calls[0].request
    header = request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    assert 'oauth_signature_method="HMAC-SHA256"' in header
    body = json.loads(request.body)["result"]
    assert body["scoreDate"] == "2026-02-01"
    assert body["scoreStatus"] == "not submitted"
    assert "score" not in body and "class" not in body


@responses.activate
def test_provider_without_categories_keeps_category_ids() -> None:
    responses.get(f"{V1P1}/categories", status=404, json=fixture("v1p1_error_404.json"))
    responses.get(f"{V1P1}/lineItems", json=fixture("v1p1_lineItems.json"))
    items = list(rest_1_1().pull(Scope.CONTENT))
    assert items[0].category == "cat-hw"  # type: ignore[union-attr]
    assert items[1:] == [Complete("activity")]


@responses.activate
def test_provider_without_a_gradebook_gets_a_clear_fix() -> None:
    responses.get(f"{V1P1}/categories", json={"categories": []})
    responses.get(f"{V1P1}/lineItems", status=404, json=fixture("v1p1_error_404.json"))
    with pytest.raises(ConfigurationError, match="gradebook = false"):
        list(rest_1_1().pull(Scope.CONTENT))


@responses.activate
def test_roster_only_source_reads_no_gradebook() -> None:
    serve_roster(V1P1)
    connector = rest_1_1(gradebook=False)
    assert Capability.READ_CONTENT not in connector.capabilities
    assert Capability.READ_PROGRESS not in connector.capabilities
    list(connector.pull(Scope.ALL))
    assert len(responses.calls) == len(ROSTER)


def test_write_capability_only_when_enabled() -> None:
    assert Capability.WRITE_SCORES not in rest_1_1().capabilities
    assert Capability.READ_DELTA in rest_1_1().capabilities
    with pytest.raises(ConfigurationError, match="write_results"):
        rest_1_1().push(score())


# --------------------------------------------------------------------------- configuration


def test_v1p2_needs_a_token_url() -> None:
    cfg = {
        "name": "sis",
        "kind": "oneroster-rest",
        "base_url": "https://sis.example.org",
        "version": "1.2",
        "client_id": "c",
        "client_secret": SECRET,
    }
    with pytest.raises(ConfigurationError, match="token_url") as err:
        OneRosterConnector.from_config(cfg)
    assert SECRET not in str(err.value)


def test_unknown_version_is_a_configuration_error() -> None:
    cfg = {
        "name": "sis",
        "kind": "oneroster-rest",
        "base_url": "https://sis.example.org",
        "version": "2.0",
        "client_id": "c",
        "client_secret": SECRET,
    }
    with pytest.raises(ConfigurationError, match="version"):
        OneRosterConnector.from_config(cfg)


@pytest.mark.parametrize(
    ("base", "version", "expected"),
    [
        ("https://h.example", "1.1", ("https://h.example/ims/oneroster/v1p1",) * 2),
        (
            "https://t.oneroster.com/ims/oneroster/v1p1/",
            "1.1",
            ("https://t.oneroster.com/ims/oneroster/v1p1",) * 2,
        ),
        (
            "https://h.example/ims/oneroster",
            "1.2",
            (
                "https://h.example/ims/oneroster/rostering/v1p2",
                "https://h.example/ims/oneroster/gradebook/v1p2",
            ),
        ),
        (
            "https://h.example/ims/oneroster/rostering/v1p2",
            "1.2",
            (
                "https://h.example/ims/oneroster/rostering/v1p2",
                "https://h.example/ims/oneroster/gradebook/v1p2",
            ),
        ),
        ("https://h.example/ims/oneroster/v1p2", "1.2", ("https://h.example/ims/oneroster/v1p2",) * 2),
    ],
)
def test_service_urls(base: str, version: str, expected: tuple[str, str]) -> None:
    assert service_urls(base, version) == expected
