"""Canvas roster pull against a local mock of the documented API: Trailmark at concurrency 8 vs canvasapi.

The mock (a threaded ``http.server`` in its own process on 127.0.0.1) serves one account with ``--courses``
courses of ``--students`` students and one teacher each, answers every request after ``--latency`` ms and
pages lists the Canvas way: ``per_page`` honoured up to 100, opaque ``page=bookmark:…`` URLs in ``Link``.

The roster pull is the account, its courses (with terms) and each course's enrollments (with users). The
minimum number of requests is one per page; the latency bound is the serial part (the account and the
course pages) plus ``ceil(enrollment pages / concurrency)`` round trips.

    python -m bench.canvas_roster [--courses 200] [--students 30] [--latency 30] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import requests.adapters

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connectors.base import Enrollment, Scope  # noqa: E402
from connectors.canvas import CanvasConnector  # noqa: E402

ACCOUNT_ID = 1
MAX_PER_PAGE = 100
TERM = {"id": 12, "name": "2024-25 Full Year", "start_at": "2024-08-20T06:00:00Z",
        "end_at": "2025-06-10T06:00:00Z", "workflow_state": "active"}
ENROLLMENT_TYPES = ("StudentEnrollment", "TeacherEnrollment", "TaEnrollment", "ObserverEnrollment",
                    "StudentViewEnrollment")


# --------------------------------------------------------------------------- the mock Canvas


def course_json(n: int) -> dict[str, Any]:
    cid = 1000 + n
    return {"id": cid, "name": f"Course {n:04d}", "account_id": ACCOUNT_ID, "uuid": f"uuid-{cid}",
            "course_code": f"C{n:04d}", "sis_course_id": f"SIS-C{n:04d}", "workflow_state": "available",
            "enrollment_term_id": TERM["id"], "start_at": None, "end_at": None, "root_account_id": ACCOUNT_ID,
            "default_view": "modules", "is_public": False, "time_zone": "America/Denver", "term": TERM}


def user_json(uid: int, role: str) -> dict[str, Any]:
    return {"id": uid, "name": f"{role.title()} {uid}", "sortable_name": f"{uid}, {role.title()}",
            "short_name": f"{role.title()} {uid}", "sis_user_id": f"U{uid}", "integration_id": None,
            "created_at": "2024-06-01T15:00:00-06:00", "root_account": "bench.instructure.com",
            "login_id": f"user{uid}"}


def enrollments_json(n: int, students: int) -> list[dict[str, Any]]:
    cid = 1000 + n
    people = [(200_000 + n, "TeacherEnrollment", "teacher")]
    people += [(100_000 + n * students + i, "StudentEnrollment", "student") for i in range(students)]
    rows = []
    for k, (uid, kind, role) in enumerate(people):
        rows.append({"id": cid * 1000 + k, "user_id": uid, "course_id": cid, "type": kind, "role": kind,
                     "role_id": 3, "enrollment_state": "active", "associated_user_id": None,
                     "course_section_id": cid, "root_account_id": ACCOUNT_ID, "start_at": None,
                     "end_at": None,
                     "created_at": "2024-08-01T15:00:00Z", "updated_at": "2024-08-01T15:00:00Z",
                     "limit_privileges_to_course_section": False, "last_activity_at": None,
                     "total_activity_time": 0, "sis_user_id": f"U{uid}",
                     "html_url": f"http://bench/courses/{cid}/users/{uid}", "user": user_json(uid, role)})
    return rows


class CanvasHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: MockCanvas

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        with self.server.counter.get_lock():
            self.server.counter.value += 1
        time.sleep(self.server.latency)
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        path = parts.path.rstrip("/").removesuffix(".json")
        segments = path.split("/")
        if self.headers.get("Authorization") != "Bearer bench-token":
            return self._send(401, {"errors": [{"message": "Invalid access token."}]})
        if path == f"/api/v1/accounts/{ACCOUNT_ID}":
            return self._send(200, {"id": ACCOUNT_ID, "name": "Bench District", "parent_account_id": None,
                                    "root_account_id": None, "sis_account_id": "BENCH",
                                    "workflow_state": "active"})
        if path == f"/api/v1/accounts/{ACCOUNT_ID}/courses":
            return self._page(query, self.server.courses, lambda i: course_json(i))
        if len(segments) == 6 and segments[:4] == ["", "api", "v1", "courses"] \
                and segments[5] == "enrollments":
            n = int(segments[4]) - 1000
            if not 0 <= n < self.server.courses:
                return self._send(404, {"errors": [{"message": "The specified resource does not exist."}]})
            rows = enrollments_json(n, self.server.students)
            wanted = set(query.get("type[]", [])) or set(ENROLLMENT_TYPES)
            rows = [r for r in rows if r["type"] in wanted]
            return self._page(query, len(rows), lambda i: rows[i])
        return self._send(404, {"errors": [{"message": "The specified resource does not exist."}]})

    def _page(self, query: dict[str, list[str]], total: int, row: Any) -> None:
        per_page = max(1, min(int(query.get("per_page", ["10"])[0]), MAX_PER_PAGE))
        page = query.get("page", ["first"])[0]
        start = 0 if page == "first" else \
            json.loads(base64.urlsafe_b64decode(page.removeprefix("bookmark:")))[0]
        end = min(start + per_page, total)
        body = [row(i) for i in range(start, end)]
        base = f"http://{self.headers['Host']}{urlsplit(self.path).path}"
        keep = [(k, v) for k, vs in query.items() if k not in ("page", "per_page") for v in vs]
        extra = "".join(f"&{k}={v}" for k, v in keep)

        def url(at: int | str) -> str:
            token = at if isinstance(at, str) else "bookmark:" + base64.urlsafe_b64encode(
                json.dumps([at, "b"]).encode()).decode()
            return f"{base}?page={token}&per_page={per_page}{extra}"

        links = [f'<{url(page if page == "first" else start)}>; rel="current"',
                 f'<{url("first")}>; rel="first"']
        if end < total:
            links.insert(0, f'<{url(end)}>; rel="next"')
        self._send(200, body, {"Link": ",".join(links), "X-Rate-Limit-Remaining": "700.0"})

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class MockCanvas(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, courses: int, students: int, latency: float, counter: Any) -> None:
        super().__init__(("127.0.0.1", 0), CanvasHandler)
        self.courses, self.students, self.latency, self.counter = courses, students, latency, counter


def serve(courses: int, students: int, latency: float, counter: Any, port: Any, ready: Any) -> None:
    server = MockCanvas(courses, students, latency, counter)
    port.value = server.server_address[1]
    ready.set()
    server.serve_forever()


# --------------------------------------------------------------------------- the two clients


def trailmark_pull(base_url: str, concurrency: int) -> tuple[int, int, int]:
    """Return (records, enrollments, requests) of one Trailmark roster pull."""
    connector = CanvasConnector("bench-canvas", base_url, account_id=ACCOUNT_ID, token="bench-token",
                                concurrency=concurrency)
    records = enrollments = 0
    for item in connector.pull(Scope.ROSTER):
        records += 1
        enrollments += isinstance(item, Enrollment)
    requests_made = connector.client.requests_made
    connector.close()
    return records, enrollments, requests_made


def transport_floor(base_url: str, concurrency: int) -> int:
    """Fetch the same pages with bare ``requests`` and no parsing; return the number of requests."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=concurrency + 2)
    session.mount("http://", adapter)
    session.headers["Authorization"] = "Bearer bench-token"
    made = 1
    account = ThreadPoolExecutor(1).submit(session.get, f"{base_url}/api/v1/accounts/{ACCOUNT_ID}")
    url: str | None = f"{base_url}/api/v1/accounts/{ACCOUNT_ID}/courses?include[]=term&per_page=100"
    course_ids: list[int] = []
    while url:
        response = session.get(url)
        made += 1
        course_ids += [c["id"] for c in response.json()]
        url = response.links.get("next", {}).get("url")
    account.result()
    query = "&".join(f"type[]={t}" for t in ENROLLMENT_TYPES) + "&per_page=100"
    with ThreadPoolExecutor(concurrency) as pool:
        bodies = pool.map(lambda cid: session.get(f"{base_url}/api/v1/courses/{cid}/enrollments?{query}"),
                          course_ids)
        made += sum(1 for _ in bodies)
    session.close()
    return made


def canvasapi_pull(base_url: str) -> int:
    """Return the enrollments of a plain, serial canvasapi pull of the same data."""
    from canvasapi import Canvas

    canvas = Canvas(base_url, "bench-token")
    account = canvas.get_account(ACCOUNT_ID)
    enrollments = 0
    for course in account.get_courses(include=["term"], per_page=100):
        listing = course.get_enrollments(type=list(ENROLLMENT_TYPES), per_page=100,
                                         state=["active", "invited", "completed"])
        for enrollment in listing:
            enrollments += enrollment.user["id"] > 0
    return enrollments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--courses", type=int, default=200)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--latency", type=float, default=30.0, help="milliseconds per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="Trailmark runs (median reported)")
    parser.add_argument("--skip-canvasapi", action="store_true")
    args = parser.parse_args(argv)

    ctx = mp.get_context("spawn")
    counter, port, ready = ctx.Value("l", 0), ctx.Value("i", 0), ctx.Event()
    server = ctx.Process(target=serve, daemon=True,
                         args=(args.courses, args.students, args.latency / 1000, counter, port, ready))
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("mock Canvas did not start")
        base_url = f"http://127.0.0.1:{port.value}"
        latency = args.latency / 1000
        per_course = args.students + 1
        enrollment_pages = args.courses * math.ceil(per_course / MAX_PER_PAGE)
        serial_pages = 1 + math.ceil(args.courses / MAX_PER_PAGE)
        minimum = serial_pages + enrollment_pages
        bound = (serial_pages + math.ceil(enrollment_pages / args.concurrency)) * latency

        walls, served = [], []
        for _ in range(args.repeat):
            before = counter.value
            started = time.perf_counter()
            records, enrollments, made = trailmark_pull(base_url, args.concurrency)
            walls.append(time.perf_counter() - started)
            served.append(counter.value - before)
            assert enrollments == args.courses * per_course, enrollments
            assert made == served[-1], (made, served[-1])
        wall = statistics.median(walls)

        before = counter.value
        started = time.perf_counter()
        transport_floor(base_url, args.concurrency)
        floor_wall = time.perf_counter() - started
        floor_requests = counter.value - before

        api_wall = api_requests = None
        if not args.skip_canvasapi:
            before = counter.value
            started = time.perf_counter()
            api_enrollments = canvasapi_pull(base_url)
            api_wall = time.perf_counter() - started
            api_requests = counter.value - before
            assert api_enrollments == args.courses * per_course, api_enrollments
    finally:
        server.terminate()
        server.join(5)

    print(f"Canvas roster pull: {args.courses} courses x ({args.students} students + 1 teacher), "
          f"{args.latency:.0f} ms per request, per_page={MAX_PER_PAGE}")
    print(f"minimum requests (one per page): {minimum}; latency bound at concurrency {args.concurrency}: "
          f"({serial_pages} serial + ceil({enrollment_pages}/{args.concurrency})) x {args.latency:.0f} ms "
          f"= {bound * 1000:.0f} ms")
    print(f"Trailmark records streamed: {records}")
    print()
    header = (f"{'client':<36}{'requests':>9}{'req/min':>9}{'wall ms':>10}{'wall/bound':>12}"
              f"{'vs canvasapi':>14}")
    print(header)
    print("-" * len(header))
    speedup = f"{api_wall / wall:>13.1f}x" if api_wall else f"{'-':>14}"
    print(f"{f'Trailmark (concurrency {args.concurrency})':<36}{served[-1]:>9}{served[-1] / minimum:>9.2f}"
          f"{wall * 1000:>10.0f}{wall / bound:>12.2f}{speedup}")
    if api_wall is not None and api_requests is not None:
        print(f"{'canvasapi (serial)':<36}{api_requests:>9}{api_requests / minimum:>9.2f}"
              f"{api_wall * 1000:>10.0f}{api_wall / bound:>12.2f}{1.0:>13.1f}x")
    print(f"{'floor: bare requests, no parsing':<36}{floor_requests:>9}{floor_requests / minimum:>9.2f}"
          f"{floor_wall * 1000:>10.0f}{floor_wall / bound:>12.2f}{'':>14}")
    print(f"{'latency bound':<36}{minimum:>9}{1.0:>9.2f}{bound * 1000:>10.0f}{1.0:>12.2f}{'':>14}")
    print()
    print(f"Trailmark runs (ms): {', '.join(f'{w * 1000:.0f}' for w in walls)}; target wall/bound <= 1.30: "
          f"{'met' if wall / bound <= 1.3 else 'NOT met'}; requests == minimum: "
          f"{'yes' if served[-1] == minimum else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
