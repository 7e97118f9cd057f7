"""/metrics under `trailmark serve` with two gunicorn workers: a scrape, whichever worker answers it, adds up the
launches, refusals and requests of every worker, the live-worker gauge follows workers that die, and the
metric files go with the server.

Requests are steered to one worker by keeping the other busy (see tests/gunicorn_server.py), so which worker
served what is known, not hoped for.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from connectors import sync
from connectors.fake import FakeConnector, sample_district
from plugin.store.db import Store
from plugin.store.models import District
from tests.gunicorn_server import HTTP_TIMEOUT, WAIT, Served, serve, wait_for


@pytest.fixture
def metrics_parent(tmp_path: Path) -> Path:
    return tmp_path / "run-metrics"


@pytest.fixture
def served(database_url: str, tmp_path: Path, metrics_parent: Path) -> Iterator[Served]:
    with serve(database_url, tmp_path, workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_parent)}) as server:
        yield server


def scrape(served: Served) -> tuple[str, dict[str, list[tuple[dict[str, str], float]]]]:
    """GET /metrics; return the worker that answered and samples by name."""
    resp = requests.get(f"{served.base}/metrics", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text[:500]
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return resp.headers["X-Trailmark-Worker"], samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, []) if all(lbl.get(k) == want for k, want in labels.items()))


def refuse(served: Served) -> str:
    """A launch with a state nobody issued; return the worker that refused it."""
    resp = served.post_launch(requests.Session(), "never-issued", "x.y.z")
    assert resp.status_code >= 400
    return resp.headers["X-Trailmark-Worker"]


def sync_once(database_url: str) -> None:
    """One sync run, recorded in the database the workers read their sync figures from."""
    store = Store(database_url)
    try:
        with store.session() as session:
            district = session.scalars(select(District).where(District.slug == "north")).one()
        result = sync.run_sync(store, district.id, "sis", FakeConnector("sis", sample_district(classes=1)),
                               now=datetime.now(UTC))
        assert result.ok, result.message
    finally:
        store.dispose()


def test_a_scrape_on_any_worker_counts_every_worker(served: Served, metrics_parent: Path, database_url: str) -> None:
    sync_once(database_url)
    with served.pins() as pin:
        p1 = pin()                                                  # X is busy
        _login, y, _html = served.launch(requests.Session(), "teacher", "t1")
        assert refuse(served) == y
        p2 = pin()                                                  # Y is busy
        x = p1.finish()
        _login, on_x, _html = served.launch(requests.Session(), "student", "s1")
        assert on_x == x != y and refuse(served) == x
        from_x = scrape(served)                                     # answered by X (Y is busy)
        p3 = pin()                                                  # X is busy
        p2.finish()
        from_y = scrape(served)                                     # answered by Y
        p3.finish()
    assert {from_x[0], from_y[0]} == {x, y}
    for _worker, samples in (from_x, from_y):
        assert total(samples, "trailmark_lti_launches_total") == 2
        assert total(samples, "trailmark_lti_launches_total", view="teacher", message_type="resource_link") == 1
        assert total(samples, "trailmark_lti_launches_total", view="student", message_type="resource_link") == 1
        assert total(samples, "trailmark_lti_launch_failures_total") == 2
        assert total(samples, "trailmark_http_requests_total", endpoint="lti.launch", status="303") == 2
        assert total(samples, "trailmark_http_requests_total", endpoint="lti.login", status="302") == 2
        assert total(samples, "trailmark_web_workers") == 2
        # and the database's figures: sync runs, their durations, the outbox
        assert total(samples, "trailmark_sync_runs_total", source="sis", status="succeeded") == 1
        assert total(samples, "trailmark_sync_duration_seconds_count", source="sis") == 1
        assert total(samples, "trailmark_outbox_items", status="pending") == 0
    # The second scrape saw the first one (and the finished pins) too: requests of both workers, one total.
    assert total(from_y[1], "trailmark_http_requests_total", endpoint="observability.metrics") >= 1

    (private,) = list(metrics_parent.iterdir())  # one fresh directory of this server's own
    assert private.name.startswith("trailmark-metrics-") and oct(private.stat().st_mode & 0o777) == "0o700"
    assert any(f.name.startswith("counter_") for f in private.iterdir())

    # A worker that dies: its counts stay, and once gunicorn has replaced it the live-worker gauge is 2 again.
    os.kill(int(x), signal.SIGKILL)
    wait_for(lambda: str(x) not in {str(p) for p in served.workers()} and len(served.workers()) == 2,
             "gunicorn to replace the killed worker")
    _worker, after = wait_for(lambda: (got := scrape(served)) and total(got[1], "trailmark_web_workers") == 2
                              and got, "the new worker to count itself")
    assert total(after, "trailmark_lti_launches_total") == 2
    assert total(after, "trailmark_lti_launch_failures_total") == 2
    assert not any(f.name == f"gauge_livesum_{x}.db" for f in private.iterdir())

    # Stopping the server removes its directory (the next start begins from zero, never from stale files).
    served.proc.send_signal(signal.SIGTERM)
    served.proc.wait(timeout=WAIT)
    assert list(metrics_parent.iterdir()) == []

