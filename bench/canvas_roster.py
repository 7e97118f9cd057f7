"""Canvas roster pull against a local mock of the documented API: Trailmark at concurrency 8 vs canvasapi.

The mock (a threaded ``http.server`` in its own process on 127.0.0.1, so it shares no interpreter lock
with the clients) serves one account with ``--courses`` courses of ``--students`` students and one teacher
each and pages lists the Canvas way: ``per_page`` honoured up to 100, opaque ``page=bookmark:…`` URLs in
``Link``. Every request is answered ``--latency`` ms after it arrived: the body is rendered (once per URL,
then cached) while the request waits, so the mock's own work neither adds to the latency nor competes for
the CPU the clients use. The mock counts the requests served and the most it held at once (in flight).

The roster pull is the account, its courses (with terms) and each course's enrollments (with users). The
minimum number of requests is one per page. The latency bound is the shortest possible schedule of those
pages with at most ``--concurrency`` requests in flight, each taking exactly one latency: pages form
chains (a list's next page is only known once the previous one arrived; a course's enrollments only once
the course page listing it arrived), so the bound is neither the perfect packing ``ceil(pages / c)``
rounds nor the longest chain alone. ``latency_rounds`` computes it exactly: the page graph is a forest of
out-trees, and for unit-time jobs on ``c`` slots the optimum is found by Hu's level algorithm on the
reversed forest (highest level first). For 200 courses of 31 people that is 27 rounds (810 ms at 30 ms):
the account and the first course page alone in round one (nothing else is known yet), then 201 pages in
26 full rounds of 8. Perfect packing would be 26 rounds, the longest chain (course page 1, course page 2,
one course's enrollments) only 3.

    python -m bench.canvas_roster [--courses 200] [--students 30] [--latency 30] [--concurrency 8]
                                  [--repeat 3] [--skip-canvasapi]
"""

from __future__ import annotations

import argparse
import base64
import heapq
import json
import math
import multiprocessing as mp
import statistics
import sys
import threading
import time
from collections.abc import Callable
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
Answer = tuple[int, bytes, dict[str, str]]


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


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Answer:
    return status, json.dumps(payload).encode(), {"Content-Type": "application/json; charset=utf-8",
                                                  **(headers or {})}


class CanvasHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: MockCanvas

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        arrived = time.monotonic()
        stats = self.server.stats
        with stats.get_lock():
            stats[0] += 1  # served
            stats[1] += 1  # in flight
            stats[2] = max(stats[2], stats[1])  # most in flight at once
        try:
            if self.headers.get("Authorization") != "Bearer bench-token":
                status, data, headers = _json(401, {"errors": [{"message": "Invalid access token."}]})
            else:
                status, data, headers = self.server.answer(self.headers.get("Host", ""), self.path)
            late = time.monotonic() - arrived - self.server.latency
            if late < 0:
                time.sleep(-late)
            else:  # the answer took longer to render than the latency: record by how much
                with stats.get_lock():
                    stats[3] = max(stats[3], int(late * 1_000_000))
        finally:
            with stats.get_lock():
                stats[1] -= 1  # leaves before it is written: a client's next request may not overlap it
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class MockCanvas(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, courses: int, students: int, latency: float, stats: Any) -> None:
        super().__init__(("127.0.0.1", 0), CanvasHandler)
        self.courses, self.students, self.latency, self.stats = courses, students, latency, stats
        self._answers: dict[tuple[str, str], Answer] = {}
        self._lock = threading.Lock()

    def answer(self, host: str, target: str) -> Answer:
        """Return the (cached) answer to ``GET target``."""
        key = (host, target)
        with self._lock:
            cached = self._answers.get(key)
        if cached is None:
            cached = self._render(host, target)
            with self._lock:
                self._answers[key] = cached
        return cached

    def _render(self, host: str, target: str) -> Answer:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        path = parts.path.rstrip("/").removesuffix(".json")
        segments = path.split("/")
        if path == f"/api/v1/accounts/{ACCOUNT_ID}":
            return _json(200, {"id": ACCOUNT_ID, "name": "Bench District", "parent_account_id": None,
                               "root_account_id": None, "sis_account_id": "BENCH", "workflow_state": "active"})
        if path == f"/api/v1/accounts/{ACCOUNT_ID}/courses":
            return self._page(host, parts.path, query, self.courses, course_json)
        if len(segments) == 6 and segments[:4] == ["", "api", "v1", "courses"] and segments[5] == "enrollments":
            n = int(segments[4]) - 1000
            if not 0 <= n < self.courses:
                return _json(404, {"errors": [{"message": "The specified resource does not exist."}]})
            rows = enrollments_json(n, self.students)
            wanted = set(query.get("type[]", [])) or set(ENROLLMENT_TYPES)
            rows = [r for r in rows if r["type"] in wanted]
            return self._page(host, parts.path, query, len(rows), lambda i: rows[i])
        return _json(404, {"errors": [{"message": "The specified resource does not exist."}]})

    @staticmethod
    def _page(host: str, path: str, query: dict[str, list[str]], total: int,
              row: Callable[[int], Any]) -> Answer:
        per_page = max(1, min(int(query.get("per_page", ["10"])[0]), MAX_PER_PAGE))
        page = query.get("page", ["first"])[0]
        start = 0 if page == "first" else \
            json.loads(base64.urlsafe_b64decode(page.removeprefix("bookmark:")))[0]
        end = min(start + per_page, total)
        body = [row(i) for i in range(start, end)]
        base = f"http://{host}{path}"
        keep = [(k, v) for k, vs in query.items() if k not in ("page", "per_page") for v in vs]
        extra = "".join(f"&{k}={v}" for k, v in keep)

        def url(at: int | str) -> str:
            token = at if isinstance(at, str) else "bookmark:" + base64.urlsafe_b64encode(
                json.dumps([at, "b"]).encode()).decode()
            return f"{base}?page={token}&per_page={per_page}{extra}"

        links = [f'<{url(page if page == "first" else start)}>; rel="current"', f'<{url("first")}>; rel="first"']
        if end < total:
            links.insert(0, f'<{url(end)}>; rel="next"')
        return _json(200, body, {"Link": ",".join(links), "X-Rate-Limit-Remaining": "700.0"})


def serve(courses: int, students: int, latency: float, stats: Any, port: Any, ready: Any) -> None:
    server = MockCanvas(courses, students, latency, stats)
    port.value = server.server_address[1]
    ready.set()
    server.serve_forever()


# --------------------------------------------------------------------------- the bound


def latency_rounds(courses: int, people: int, concurrency: int, per_page: int = MAX_PER_PAGE) -> int:
    """Return the fewest latency rounds that fetch every page with ``concurrency`` requests in flight.

    Nodes are pages; a page's parent is the page whose answer makes it known (the previous page of the
    same list; for a course's first enrollment page, the course page listing the course). Hu's algorithm
    on the reversed forest, which is optimal for unit-time jobs on identical slots, runs from the leaves:
    each round takes the ``concurrency`` ready pages deepest in the original forest.
    """
    course_pages = max(1, math.ceil(courses / per_page))
    enrollment_pages = max(1, math.ceil(people / per_page))
    parent: list[int] = [-1, -1]  # the account and the first course page start their trees
    depth: list[int] = [1, 1]
    for k in range(1, course_pages):
        parent.append(len(depth) - 1 if k > 1 else 1)
        depth.append(k + 1)
    course_page_node = [1] + list(range(2, 1 + course_pages))
    for n in range(courses):
        above = course_page_node[n // per_page]
        for _ in range(enrollment_pages):
            parent.append(above)
            depth.append(depth[above] + 1)
            above = len(depth) - 1
    waiting = [0] * len(parent)  # children not yet scheduled (reversed: predecessors)
    for p in parent:
        if p >= 0:
            waiting[p] += 1
    ready = [(-depth[v], v) for v in range(len(parent)) if waiting[v] == 0]
    heapq.heapify(ready)
    rounds = 0
    while ready:
        rounds += 1
        taken = [heapq.heappop(ready)[1] for _ in range(min(concurrency, len(ready)))]
        for v in taken:
            p = parent[v]
            if p >= 0:
                waiting[p] -= 1
                if waiting[p] == 0:
                    heapq.heappush(ready, (-depth[p], p))
    return rounds


# --------------------------------------------------------------------------- the clients


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


class Run:
    """One client run as the mock saw it."""

    def __init__(self, stats: Any, work: Callable[[], Any]) -> None:
        with stats.get_lock():
            before = stats[0]
            stats[2] = stats[3] = 0
        started, cpu = time.perf_counter(), time.process_time()
        self.result = work()
        self.wall = time.perf_counter() - started
        self.cpu = time.process_time() - cpu  # this process only: the mock runs in its own
        with stats.get_lock():
            self.served = stats[0] - before
            self.peak = stats[2]
            self.late_ms = stats[3] / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--courses", type=int, default=200)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--latency", type=float, default=30.0, help="milliseconds per request")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs of Trailmark and the floor (medians)")
    parser.add_argument("--skip-canvasapi", action="store_true")
    args = parser.parse_args(argv)

    latency = args.latency / 1000
    per_course = args.students + 1
    enrollment_pages = args.courses * math.ceil(per_course / MAX_PER_PAGE)
    course_pages = max(1, math.ceil(args.courses / MAX_PER_PAGE))
    minimum = 1 + course_pages + enrollment_pages
    rounds = latency_rounds(args.courses, per_course, args.concurrency)
    bound = rounds * latency
    chain = course_pages + math.ceil(per_course / MAX_PER_PAGE)

    ctx = mp.get_context("spawn")
    stats, port, ready = ctx.Array("q", 4), ctx.Value("i", 0), ctx.Event()
    server = ctx.Process(target=serve, daemon=True,
                         args=(args.courses, args.students, latency, stats, port, ready))
    server.start()
    try:
        if not ready.wait(30):
            raise SystemExit("mock Canvas did not start")
        base_url = f"http://127.0.0.1:{port.value}"
        Run(stats, lambda: trailmark_pull(base_url, args.concurrency))  # warm-ups: the mock renders each
        Run(stats, lambda: transport_floor(base_url, args.concurrency))  # answer once, imports are done
        ours: list[Run] = []
        floors: list[Run] = []
        for _ in range(args.repeat):
            run = Run(stats, lambda: trailmark_pull(base_url, args.concurrency))
            records, enrollments, made = run.result
            assert enrollments == args.courses * per_course, enrollments
            assert made == run.served, (made, run.served)
            ours.append(run)
            floors.append(Run(stats, lambda: transport_floor(base_url, args.concurrency)))
        api: Run | None = None
        if not args.skip_canvasapi:
            api = Run(stats, lambda: canvasapi_pull(base_url))
            assert api.result == args.courses * per_course, api.result
    finally:
        server.terminate()
        server.join(5)

    wall = statistics.median(r.wall for r in ours)
    floor_wall = statistics.median(r.wall for r in floors)
    print(f"Canvas roster pull: {args.courses} courses x ({args.students} students + 1 teacher), "
          f"{args.latency:.0f} ms per request, per_page={MAX_PER_PAGE}")
    print(f"minimum requests (one per page): {minimum}; latency bound with {args.concurrency} in flight: "
          f"{rounds} rounds x {args.latency:.0f} ms = {bound * 1000:.0f} ms "
          f"(perfect packing {math.ceil(minimum / args.concurrency)} rounds, longest chain {chain})")
    print(f"Trailmark records streamed: {records}")
    print()
    header = (f"{'client':<36}{'requests':>9}{'req/min':>9}{'in flight':>10}{'CPU ms':>8}{'wall ms':>10}"
              f"{'wall/bound':>12}{'vs canvasapi':>14}")
    print(header)
    print("-" * len(header))

    def row(name: str, runs: list[Run], wall: float) -> None:
        served, peak = runs[-1].served, max(r.peak for r in runs)
        cpu = statistics.median(r.cpu for r in runs)
        speedup = f"{api.wall / wall:>13.1f}x" if api is not None else f"{'-':>14}"
        print(f"{name:<36}{served:>9}{served / minimum:>9.2f}{peak:>10}{cpu * 1000:>8.0f}{wall * 1000:>10.0f}"
              f"{wall / bound:>12.2f}{speedup}")

    row(f"Trailmark (concurrency {args.concurrency})", ours, wall)
    if api is not None:
        row("canvasapi (serial)", [api], api.wall)
    row("floor: bare requests, no parsing", floors, floor_wall)
    print(f"{'latency bound':<36}{minimum:>9}{1.0:>9.2f}{args.concurrency:>10}{'':>8}{bound * 1000:>10.0f}"
          f"{1.0:>12.2f}")
    print()
    late = max(r.late_ms for r in [*ours, *floors, *([api] if api else [])])
    print(f"Trailmark runs (ms): {', '.join(f'{r.wall * 1000:.0f}' for r in ours)}; floor runs (ms): "
          f"{', '.join(f'{r.wall * 1000:.0f}' for r in floors)}; mock answers later than {args.latency:.0f} ms "
          f"by at most {late:.1f} ms")
    print(f"target wall/bound <= 1.30: {'met' if wall / bound <= 1.3 else 'NOT met'}; requests == minimum: "
          f"{'yes' if ours[-1].served == minimum else 'NO'}; Trailmark at most {args.concurrency} in flight: "
          f"{'yes' if max(r.peak for r in ours) <= args.concurrency else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
