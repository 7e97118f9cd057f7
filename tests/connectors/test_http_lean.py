"""The shared HTTP layer's lean request path: same requests as the session would send, cookies, redirects, caps."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from connectors.http import BearerAuth, HttpClient, encode_params

BASE = "https://district.instructure.com"
ANY = re.compile(re.escape(BASE) + r"/.*")

PARAMS: list[Any] = [
    None,
    [("type[]", "StudentEnrollment"), ("type[]", "TeacherEnrollment"), ("per_page", 100)],
    {"include[]": ["term", "total_students"], "search_term": "Algebra I & II", "skip": None},
    {"q": "ünïcødé/ä+b", "raw": b"\xff", "n": 3, "flag": True},
    (("student_ids[]", "all"),),
    [],
    {},
]
URLS = [
    f"{BASE}/api/v1/courses/101/enrollments",
    f"{BASE}/api/v1/courses/101/enrollments?page=first",
    f"{BASE}/api/v1/courses/101/enrollments?",
    f"{BASE}/api/v1/courses/101/search#top",
    f"{BASE}/api/v1/a b/ü/./x/../y?z=%7e%41",
    "HTTPS://District.Instructure.COM:443/api/v1/users/self",
]


def session_prepared(client: HttpClient, method: str, url: str, **kw: Any) -> requests.PreparedRequest:
    """What ``Session.prepare_request`` (plus the client's auth) makes of the same request."""
    headers = {**client.headers, **kw.pop("headers", {})}
    prepared = client.session.prepare_request(requests.Request(method, url, headers=headers, **kw))
    if client.auth is not None:
        prepared.prepare_auth(client.auth, url)
    return prepared


def lean_prepared(client: HttpClient, method: str, url: str, **kw: Any) -> requests.PreparedRequest:
    headers = {**client.headers, **kw.pop("headers", {})}
    return client._prepare(method, url, params=kw.get("params"), data=kw.get("data"), json=kw.get("json"),
                           headers=headers, opaque=False, lean=True)


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("auth", [BearerAuth("t0k3n"), None])
def test_lean_requests_equal_what_the_session_prepares(url: str, params: Any, auth: BearerAuth | None) -> None:
    client = HttpClient(BASE, source="s", auth=auth)
    for _ in range(2):  # the second time from the memoised query and headers
        ours = lean_prepared(client, "GET", url, params=params)
        theirs = session_prepared(client, "GET", url, params=params)
        assert (ours.method, ours.url, dict(ours.headers), ours.body) == \
            (theirs.method, theirs.url, dict(theirs.headers), theirs.body)


@pytest.mark.parametrize("body", [
    {"data": [("submission[posted_grade]", "9.5"), ("comment[text_comment]", "Nice work & more")]},
    {"data": {"module[prerequisite_module_ids][]": ["1", "2"]}},
    {"json": {"scoreGiven": 9, "comment": "ü"}},
    {"data": "grant_type=refresh_token"},
    {"headers": {"Accept": "application/vnd.ims.lis.v2.lineitem+json", "User-Agent": None}},
])
def test_lean_bodies_and_headers_equal_what_the_session_prepares(body: dict[str, Any]) -> None:
    client = HttpClient(BASE, source="s", auth=BearerAuth("t0k3n"), headers={"X-Trace": "1"})
    for method in ("PUT", "POST"):
        ours = lean_prepared(client, method, f"{BASE}/api/v1/x", **dict(body))
        theirs = session_prepared(client, method, f"{BASE}/api/v1/x", **dict(body))
        assert (ours.url, dict(ours.headers), ours.body) == (theirs.url, dict(theirs.headers), theirs.body)


def test_credentials_from_the_url_and_netrc_are_used_as_the_session_uses_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine moodle.example.org login svc password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    client = HttpClient("", source="s")
    for url in ("https://moodle.example.org/webservice/rest/server.php",
                "https://user:p%40ss@other.example.org/api", "https://other.example.org/api"):
        ours = lean_prepared(client, "GET", url, params={"wsfunction": "core_webservice_get_site_info"})
        theirs = session_prepared(client, "GET", url, params={"wsfunction": "core_webservice_get_site_info"})
        assert ours.headers.get("Authorization") == theirs.headers.get("Authorization")
        assert (ours.url, dict(ours.headers)) == (theirs.url, dict(theirs.headers))
    assert lean_prepared(client, "GET", "https://moodle.example.org/x").headers["Authorization"].startswith("Basic ")


def test_memoised_queries_tell_equal_looking_values_apart() -> None:
    client = HttpClient(BASE, source="s", auth=BearerAuth("t0k3n"))
    url = f"{BASE}/api/v1/x"
    values: list[Any] = [1, True, 1.0, "1", b"1", [1], (True,), {"k": 1}]
    for _ in range(2):
        ours = [lean_prepared(client, "GET", url, params=[("v", v)]).url for v in values[:-1]]
        ours.append(lean_prepared(client, "GET", url, params=values[-1]).url)
        theirs = [session_prepared(client, "GET", url, params=[("v", v)]).url for v in values[:-1]]
        theirs.append(session_prepared(client, "GET", url, params=values[-1]).url)
        assert ours == theirs
    assert len(set(ours)) == 4  # v=1 (three ways), v=True (two ways), v=1.0, k=1


def test_encode_params_matches_requests_and_leaves_other_shapes_to_it() -> None:
    for params in PARAMS[1:]:
        expected = requests.PreparedRequest()
        expected.prepare_url("https://x.test/p", params)
        assert expected.url == f"https://x.test/p?{encode_params(params)}".rstrip("?")
    assert encode_params("a=1") is None
    assert encode_params(b"a=1") is None


@responses.activate
def test_cookies_a_response_sets_are_sent_back() -> None:
    client = HttpClient(BASE, source="s", auth=BearerAuth("t0k3n"))
    responses.get(f"{BASE}/api/v1/users/self", json={"id": 1},
                  headers={"Set-Cookie": "AWSALB=sticky-1; Path=/; Secure"})
    responses.get(f"{BASE}/api/v1/courses", json=[])

    client.get_json("/api/v1/users/self")
    client.get_json("/api/v1/courses")

    assert "Cookie" not in responses.calls[0].request.headers
    assert responses.calls[1].request.headers["Cookie"] == "AWSALB=sticky-1"
    assert responses.calls[1].request.headers["Authorization"] == "Bearer t0k3n"


@responses.activate
def test_redirects_are_followed_with_history() -> None:
    client = HttpClient(BASE, source="s", auth=BearerAuth("t0k3n"))
    responses.get(f"{BASE}/api/v1/files/7", status=302, headers={"Location": f"{BASE}/files/7/download"})
    responses.get(f"{BASE}/files/7/download", json={"ok": True})

    response = client.request("GET", "/api/v1/files/7")

    assert response.json() == {"ok": True}
    assert [r.status_code for r in response.history] == [302]
    assert response.url == f"{BASE}/files/7/download"
    assert client.requests_made == 1


@responses.activate
def test_session_parameters_and_hooks_take_the_sessions_own_path() -> None:
    session = requests.Session()
    session.params = {"as_user_id": "sis_user_id:T-1"}
    seen: list[int] = []
    session.hooks["response"].append(lambda r, *a, **k: seen.append(r.status_code))
    client = HttpClient(BASE, source="s", auth=BearerAuth("t0k3n"), session=session)
    responses.get(f"{BASE}/api/v1/courses", json=[])

    client.get_json("/api/v1/courses", params={"per_page": 10})

    assert responses.calls[0].request.url == f"{BASE}/api/v1/courses?as_user_id=sis_user_id%3AT-1&per_page=10"
    assert seen == [200]


def test_max_in_flight_caps_the_requests_on_the_wire() -> None:
    client = HttpClient(BASE, source="s", auth=BearerAuth("t0k3n"), max_in_flight=2, max_retries=0)
    cond = threading.Condition()
    gate = threading.Event()
    inside = peak = queued = 0

    class CountingSlots(threading.BoundedSemaphore):
        def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
            nonlocal queued
            with cond:
                queued += 1
                cond.notify_all()
            return super().acquire(blocking, timeout)

        __enter__ = acquire

    client._slots = CountingSlots(2)

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        nonlocal inside, peak
        with cond:
            inside += 1
            peak = max(peak, inside)
            cond.notify_all()
        gate.wait(30)
        with cond:
            inside -= 1
        return 200, {}, "[]"

    results: list[Any] = []
    with responses.RequestsMock() as rsps:
        rsps.add_callback(responses.GET, ANY, callback=answer, content_type="application/json")
        threads = [threading.Thread(target=lambda i=i: results.append(client.get_json(f"/api/v1/x/{i}")))
                   for i in range(6)]
        for thread in threads:
            thread.start()
        with cond:  # two on the wire, the other four waiting for a slot
            assert cond.wait_for(lambda: inside == 2 and queued == 6, timeout=30)
        gate.set()
        for thread in threads:
            thread.join(30)

    assert peak == 2
    assert results == [[]] * 6
    assert client.requests_made == 6
