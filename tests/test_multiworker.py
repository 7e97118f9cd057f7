"""`trailmark serve` with two gunicorn workers (real processes): nothing a launch needs lives in one worker.

Requests are steered to a chosen worker by keeping the other one busy with an unfinished request (a sync
worker serves one connection at a time), so every property below is checked deterministically.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.gunicorn_server import Served, serve


@pytest.fixture
def served(database_url, tmp_path):
    with serve(database_url, tmp_path, workers=2) as server:
        yield server


def test_launches_spread_and_finish_on_any_worker(served: Served):
    platform = served.platform
    with served.pins() as pin:
        # Both workers serve launches: keep X busy and launch (on Y), then keep Y busy and launch (on X).
        p1 = pin()                       # X
        p2 = pin()                       # Y (X is busy)
        y = p2.finish()
        login_1, launch_1, html = served.launch(requests.Session(), "teacher", "t1")
        p3 = pin()                       # Y (X is still busy)
        x = p1.finish()
        login_2, launch_2, _ = served.launch(requests.Session(), "student", "s1")
        assert x != y
        assert (login_1, launch_1) == (y, y) and (login_2, launch_2) == (x, x)
        assert "Biology 1" in html

        # A login on one worker completes its launch on the other one.
        browser = requests.Session()
        state, nonce, login_worker = served.login(browser)       # X (Y is busy)
        p4 = pin()                                                # X
        p3.finish()                                               # Y is free
        token = platform.id_token(nonce, f"{served.base}/lti/launch", "teacher", "t2")
        resp = served.post_launch(browser, state, token)          # Y
        assert resp.status_code == 303, resp.text[:800]
        launch_worker = resp.headers["X-Trailmark-Worker"]
        assert (login_worker, launch_worker) == (x, y)
        panel = served.open_panel(browser, resp.headers["Location"])
        assert panel.status_code == 200 and "Biology 1" in panel.text

        # The same id_token replayed on the other worker is refused: the nonce is used up in the shared store.
        p5 = pin()                                                # Y (X is still busy)
        p4.finish()                                               # X is free
        replay = served.post_launch(requests.Session(), state, token)
        assert replay.headers["X-Trailmark-Worker"] == x
        assert replay.status_code == 401 and "nonce_replayed" in replay.text
        p5.finish()

    # The platform's key set was fetched once and shared through the database by both workers.
    assert platform.jwks_hits == 1


def test_concurrent_launches_all_complete(served: Served):
    def one_client(n: int) -> list[str]:
        http = requests.Session()
        seen = []
        for i in range(3):
            login_worker, launch_worker, html = served.launch(http, "student" if n % 2 else "teacher",
                                                              f"c{n}-{i}")
            assert "Biology 1" in html
            seen += [login_worker, launch_worker]
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one_client, range(8)))
    assert sum(len(r) for r in results) == 8 * 3 * 2
    assert served.proc.poll() is None
    assert "Traceback" not in served.log()
