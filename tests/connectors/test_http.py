"""The shared HTTP layer: paging, opaque URLs, typed errors, safe retries, Retry-After, redaction."""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime

import pytest
import requests
import responses

from connectors.base import AuthError, NotFound, RateLimited, RemoteRejected, UpstreamError
from connectors.http import BearerAuth, HttpClient, parse_link_header, parse_retry_after, redact

BASE = "https://district.instructure.com"


class Sleeps(list[float]):
    """An injected sleep that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps) -> HttpClient:
    return HttpClient(BASE, source="canvas-test", auth=BearerAuth("s3cr3t-token"), sleep=sleeps,
                      max_retries=3, backoff=1.0, max_backoff=10.0, rng=random.Random(7))


# --------------------------------------------------------------------------- Link header


def test_parse_link_header_keeps_urls_verbatim() -> None:
    header = (
        '<https://d.instructure.com/api/v1/courses/1/users?page=bookmark:WzE2NTld%7E&per_page=100>;'
        ' rel="next", <https://d.instructure.com/api/v1/courses/1/users?page=first&per_page=100>;'
        ' rel="first", '
        '<https://d.instructure.com/api/v1/courses/1/users?page=bookmark:AbC&per_page=100>; rel="current"'
    )
    links = parse_link_header(header)
    assert links["next"] == "https://d.instructure.com/api/v1/courses/1/users?page=bookmark:WzE2NTld%7E&per_page=100"
    assert links["first"].endswith("page=first&per_page=100")
    assert links["current"].endswith("bookmark:AbC&per_page=100")
    assert "last" not in links


def test_parse_link_header_handles_multiple_rels_and_empty() -> None:
    assert parse_link_header('<https://x/a?p=2>; rel="next last"') == {"next": "https://x/a?p=2",
                                                                        "last": "https://x/a?p=2"}
    assert parse_link_header("") == {}
    assert parse_link_header(None) == {}
    assert parse_link_header("<https://x/a>; title=none") == {}


@responses.activate
def test_iter_link_pages_follows_next_with_lowercase_header_and_opaque_url(client: HttpClient) -> None:
    nxt = f"{BASE}/api/v1/Courses/1/users?page=bookmark:WzE2NTld%7E&per_page=100"
    first = f"<{BASE}/api/v1/courses/1/users?page=1>; rel=\"first\""
    responses.get(f"{BASE}/api/v1/courses/1/users", json=[{"id": 1}, {"id": 2}],
                  headers={"link": f'<{nxt}>; rel="next", {first}'})
    responses.get(nxt, json=[{"id": 3}], headers={"Link": f'<{nxt}>; rel="current", {first}'})

    pages = list(client.iter_link_pages("/api/v1/courses/1/users", params={"per_page": 100}))

    assert [p.json() for p in pages] == [[{"id": 1}, {"id": 2}], [{"id": 3}]]
    assert client.requests_made == 2
    assert responses.calls[0].request.url == f"{BASE}/api/v1/courses/1/users?per_page=100"
    assert responses.calls[1].request.url == nxt  # byte for byte: case and percent-escapes kept


@responses.activate
def test_get_json_joins_paths_and_sends_user_agent_timeout_and_auth(client: HttpClient) -> None:
    responses.get(f"{BASE}/api/v1/courses/7", json={"id": 7})
    assert client.get_json("api/v1/courses/7") == {"id": 7}
    sent = responses.calls[0].request
    assert sent.headers["User-Agent"].startswith("Trailmark/")
    assert sent.headers["Authorization"] == "Bearer s3cr3t-token"
    assert sent.req_kwargs["timeout"] == (5.0, 30.0)


@responses.activate
def test_get_json_non_json_body_is_upstream_error(client: HttpClient) -> None:
    responses.get(f"{BASE}/api/v1/courses/7", body="<html>maintenance</html>")
    with pytest.raises(UpstreamError, match="not JSON"):
        client.get_json("/api/v1/courses/7")


# --------------------------------------------------------------------------- errors


@responses.activate
def test_401_is_auth_error(client: HttpClient) -> None:
    responses.get(f"{BASE}/api/v1/users/self", status=401,
                  json={"errors": [{"message": "Invalid access token."}]})
    with pytest.raises(AuthError) as err:
        client.get_json("/api/v1/users/self")
    assert err.value.status == 401
    message = str(err.value)
    assert "canvas-test" in message and "GET" in message and "Invalid access token." in message
    assert client.requests_made == 1  # no retry


@responses.activate
def test_throttled_403_is_rate_limited_and_retried(client: HttpClient, sleeps: Sleeps) -> None:
    url = f"{BASE}/api/v1/accounts/1/courses"
    responses.get(url, status=403, body="403 Forbidden (Rate Limit Exceeded)", content_type="text/plain",
                  headers={"X-Rate-Limit-Remaining": "0.0"})
    responses.get(url, json=[{"id": 1}])
    assert client.get_json("/api/v1/accounts/1/courses") == [{"id": 1}]
    assert client.requests_made == 2
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 1.0  # full jitter within backoff * 2**0


@responses.activate
def test_permission_403_is_auth_error_not_retried(client: HttpClient) -> None:
    responses.get(f"{BASE}/api/v1/accounts/1/courses", status=403,
                  json={"status": "unauthorized",
                        "errors": [{"message": "user not authorized to perform that action"}]})
    with pytest.raises(AuthError, match="permission denied: user not authorized"):
        client.get_json("/api/v1/accounts/1/courses")
    assert client.requests_made == 1


@responses.activate
def test_404_is_not_found(client: HttpClient) -> None:
    responses.get(f"{BASE}/api/v1/courses/999", status=404,
                  json={"errors": [{"message": "The specified resource does not exist."}]})
    with pytest.raises(NotFound) as err:
        client.get_json("/api/v1/courses/999")
    assert err.value.status == 404 and "/api/v1/courses/999" in str(err.value)


@responses.activate
def test_expected_status_is_returned_not_raised(client: HttpClient) -> None:
    responses.get(f"{BASE}/api/v1/courses/999", status=404, json={})
    assert client.request("GET", "/api/v1/courses/999", expected=(404,)).status_code == 404


@responses.activate
def test_other_4xx_is_remote_rejected_with_body_message(client: HttpClient) -> None:
    responses.put(f"{BASE}/api/v1/courses/1/modules/2", status=400,
                  json={"errors": {"name": [{"attribute": "name", "type": "blank",
                                             "message": "can't be blank"}]}})
    with pytest.raises(RemoteRejected, match="can't be blank") as err:
        client.request("PUT", "/api/v1/courses/1/modules/2", data={"module[name]": ""})
    assert err.value.status == 400
    assert client.requests_made == 1


@responses.activate
def test_429_honours_retry_after_seconds_capped(sleeps: Sleeps) -> None:
    client = HttpClient(BASE, source="s", sleep=sleeps, max_backoff=10.0, rng=random.Random(1))
    url = f"{BASE}/api/lti/courses/1/line_items"
    responses.get(url, status=429, headers={"Retry-After": "3"})
    responses.get(url, status=429, headers={"Retry-After": "120"})
    responses.get(url, json=[])
    assert client.get_json(url) == []
    assert sleeps == [3.0, 10.0]


def test_parse_retry_after_http_date() -> None:
    now = datetime(2025, 1, 6, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Mon, 06 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Mon, 06 Jan 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@responses.activate
def test_429_with_http_date_is_rate_limited_with_retry_after() -> None:
    client = HttpClient(BASE, source="s", max_retries=0)
    responses.get(f"{BASE}/x", status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    with pytest.raises(RateLimited) as err:
        client.get_json("/x")
    assert err.value.retry_after == 0.0  # a date in the past means "now"


@responses.activate
def test_5xx_retried_with_full_jitter_then_raises_last(client: HttpClient, sleeps: Sleeps) -> None:
    responses.get(f"{BASE}/x", status=502, body="bad gateway")
    responses.get(f"{BASE}/x", status=503, body="unavailable")
    responses.get(f"{BASE}/x", status=500, body="boom")
    responses.get(f"{BASE}/x", status=504, body="timeout")
    with pytest.raises(UpstreamError) as err:
        client.get_json("/x")
    assert err.value.status == 504  # the last error
    assert client.requests_made == 4  # first try + max_retries
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps):
        assert 0.0 <= delay <= min(10.0, 1.0 * 2**n)


@responses.activate
def test_503_retry_after_is_honoured(client: HttpClient, sleeps: Sleeps) -> None:
    responses.get(f"{BASE}/x", status=503, headers={"Retry-After": "4"})
    responses.get(f"{BASE}/x", json={})
    client.get_json("/x")
    assert sleeps == [4.0]


@responses.activate
def test_post_is_not_retried(client: HttpClient, sleeps: Sleeps) -> None:
    responses.post(f"{BASE}/api/v1/conversations", status=503)
    with pytest.raises(UpstreamError):
        client.request("POST", "/api/v1/conversations", data={"body": "hi"})
    assert client.requests_made == 1 and sleeps == []


@responses.activate
def test_post_retried_when_asked(client: HttpClient, sleeps: Sleeps) -> None:
    responses.post(f"{BASE}/api/v1/conversations", status=429, headers={"Retry-After": "1"})
    responses.post(f"{BASE}/api/v1/conversations", json=[{"id": 5}])
    assert client.request("POST", "/api/v1/conversations", retry=True).json() == [{"id": 5}]
    assert sleeps == [1.0]


@responses.activate
def test_put_is_retried_by_default(client: HttpClient, sleeps: Sleeps) -> None:
    url = f"{BASE}/api/v1/courses/1/assignments/2/submissions/3"
    responses.put(url, status=500)
    responses.put(url, json={"id": 9})
    assert client.request("PUT", url, data={"submission[posted_grade]": "8"}).json() == {"id": 9}
    assert len(sleeps) == 1


@responses.activate
def test_get_not_retried_when_told(client: HttpClient, sleeps: Sleeps) -> None:
    responses.get(f"{BASE}/x", status=500)
    with pytest.raises(UpstreamError):
        client.request("GET", "/x", retry=False)
    assert client.requests_made == 1 and sleeps == []


@responses.activate
def test_timeout_and_connection_error_are_upstream_errors(sleeps: Sleeps) -> None:
    client = HttpClient(BASE, source="s", sleep=sleeps, max_retries=1)
    responses.get(f"{BASE}/t", body=requests.ReadTimeout("read timed out"))
    responses.get(f"{BASE}/t", body=requests.ReadTimeout("read timed out"))
    responses.get(f"{BASE}/c", body=requests.ConnectionError("refused"))
    responses.get(f"{BASE}/c", json={"ok": True})
    with pytest.raises(UpstreamError, match="ReadTimeout") as err:
        client.get_json("/t")
    assert err.value.status is None
    assert client.get_json("/c") == {"ok": True}
    assert client.requests_made == 4


# --------------------------------------------------------------------------- auth refresh


@responses.activate
def test_401_refreshes_token_once_and_resends() -> None:
    tokens = iter(["fresh-1", "fresh-2"])
    client = HttpClient(BASE, source="s", auth=BearerAuth("stale", fetch=lambda: next(tokens)))
    responses.get(f"{BASE}/x", status=401, json={"errors": [{"message": "Invalid access token."}]})
    responses.get(f"{BASE}/x", json={"ok": 1})
    assert client.get_json("/x") == {"ok": 1}
    assert [c.request.headers["Authorization"] for c in responses.calls] == ["Bearer stale", "Bearer fresh-1"]


@responses.activate
def test_401_after_refresh_is_auth_error() -> None:
    client = HttpClient(BASE, source="s", auth=BearerAuth("stale", fetch=lambda: "still-bad"))
    responses.get(f"{BASE}/x", status=401, json={"errors": [{"message": "Invalid access token."}]})
    with pytest.raises(AuthError):
        client.get_json("/x")
    assert client.requests_made == 2


@responses.activate
def test_bearer_token_is_renewed_before_it_expires() -> None:
    now = {"t": 1000.0}
    tokens = iter([("first", 3600.0), ("second", 3600.0)])
    auth = BearerAuth(fetch=lambda: next(tokens), clock=lambda: now["t"], leeway=60.0)
    client = HttpClient(BASE, source="s", auth=auth)
    responses.get(f"{BASE}/x", json={})
    client.get_json("/x")
    now["t"] += 3000.0
    client.get_json("/x")
    now["t"] += 560.0  # within the leeway of expiry
    client.get_json("/x")
    assert [c.request.headers["Authorization"] for c in responses.calls] == [
        "Bearer first", "Bearer first", "Bearer second"]


# --------------------------------------------------------------------------- redaction


def test_redact_query_params_headers_and_json() -> None:
    text = (
        "GET https://m.example/webservice/rest/server.php?wstoken=abc123&wsfunction=core_course_get_courses "
        "https://c.example/api/v1/x?access_token=tok&per_page=10 "
        "https://c.example/login/oauth2/token?client_secret=shh&refresh_token=r1&token=plain "
        'Authorization: Bearer eyJhbGciOi.payload.sig {"access_token": "zzz", "expires_in": 3600}'
    )
    out = redact(text)
    for secret in ("abc123", "=tok", "shh", "r1", "plain", "eyJhbGciOi", "zzz"):
        assert secret not in out
    assert "wsfunction=core_course_get_courses" in out and "per_page=10" in out
    assert '"expires_in": 3600' in out


@responses.activate
def test_errors_and_logs_never_carry_secrets(caplog: pytest.LogCaptureFixture) -> None:
    client = HttpClient(BASE, source="moodle", auth=BearerAuth("hunter2"), max_retries=0)
    responses.get(f"{BASE}/webservice/rest/server.php", status=400,
                  json={"message": "bad request for wstoken=hunter2"})
    caplog.set_level(logging.DEBUG, logger="connectors.http")
    with pytest.raises(RemoteRejected) as err:
        client.get_json("/webservice/rest/server.php?wstoken=hunter2&wsfunction=x")
    assert "hunter2" not in str(err.value)
    assert "wstoken=[REDACTED]" in str(err.value) and "wsfunction=x" in str(err.value)
    assert "-> 400" in str(err.value) and "moodle" in str(err.value)
    assert caplog.records and all("hunter2" not in r.getMessage() for r in caplog.records)


def test_session_pool_matches_pool_size() -> None:
    client = HttpClient(BASE, source="s", pool_size=8)
    adapter = client.session.get_adapter(BASE)
    assert adapter._pool_maxsize == 8  # type: ignore[attr-defined]
    client.close()
