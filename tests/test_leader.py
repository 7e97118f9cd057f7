"""Exactly one scheduler: advisory-lock leader election on PostgreSQL, a lock file on SQLite, the leader loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from connectors import sync
from connectors.base import Scope
from connectors.fake import FakeConnector, sample_district
from plugin import jobs
from plugin.leader import FileElector, LeaderLoop, PostgresElector, SoloElector, elector_for
from tests.connectors.sync_support import top_up_schema

ROOT = Path(__file__).resolve().parents[1]
LOCK_ID = 7_413_920_555
WAIT = 20.0  # generous bound for background threads to notice; never a timing assertion


def wait_for(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def terminate_backend(url: str, pid: int) -> None:
    """Kill one server session, as a crashed host or a cut network would."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            gone = text("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid)")
            wait_for(lambda: conn.execute(gone, {"pid": pid}).scalar_one(), "the session to end")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def electors(database_url: str) -> Iterator[list[PostgresElector]]:
    made: list[PostgresElector] = []
    yield made
    for elector in made:
        elector.release()


def _elector(electors: list[PostgresElector], url: str, lock_id: int = LOCK_ID) -> PostgresElector:
    electors.append(PostgresElector(url, lock_id, heartbeat_seconds=1))
    return electors[-1]


@pytest.mark.postgres
def test_two_electors_one_wins(database_url: str, electors: list[PostgresElector]) -> None:
    a, b = _elector(electors, database_url), _elector(electors, database_url)
    assert a.try_acquire() is True
    assert b.try_acquire() is False
    assert a.still_held() is True and b.still_held() is False
    assert a.try_acquire() is True  # asking again while leading changes nothing
    assert b.try_acquire() is False
    a.release()
    assert b.try_acquire() is True and b.still_held() is True
    other = _elector(electors, database_url, lock_id=LOCK_ID + 1)
    assert other.try_acquire() is True  # another lock id is another election


@pytest.mark.postgres
def test_a_dead_leader_connection_hands_over_to_the_standby(database_url: str,
                                                             electors: list[PostgresElector]) -> None:
    a, b = _elector(electors, database_url), _elector(electors, database_url)
    assert a.try_acquire() and not b.try_acquire()
    pid = a.backend_pid
    assert pid is not None

    terminate_backend(database_url, pid)

    assert b.try_acquire() is True  # the standby's next attempt wins
    assert a.still_held() is False  # the old leader's next heartbeat tells it that it lost
    assert a.try_acquire() is False  # and it stands by on a new connection
    assert b.still_held() is True


@pytest.mark.postgres
def test_the_leader_session_is_set_to_die_with_its_host(database_url: str,
                                                        electors: list[PostgresElector]) -> None:
    a = _elector(electors, database_url)
    a.heartbeat = 3
    assert a.try_acquire()
    assert a._conn is not None
    settings = dict(a._conn.execute(text(
        "SELECT name, setting FROM pg_settings WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', "
        "'tcp_keepalives_count', 'tcp_user_timeout')")).all())
    assert settings == {"tcp_keepalives_idle": "3", "tcp_keepalives_interval": "3", "tcp_keepalives_count": "3",
                        "tcp_user_timeout": "12000"}


@pytest.mark.postgres
def test_leader_loops_take_over_when_the_leader_dies(database_url: str) -> None:
    running: list[str] = []
    events: list[str] = []
    lock = threading.Lock()

    def loop(name: str) -> LeaderLoop:
        def start() -> str:
            with lock:
                running.append(name)
                events.append(f"start {name}")
            return name

        def stop(handle: str) -> None:
            with lock:
                running.remove(handle)
                events.append(f"stop {handle}")

        return LeaderLoop(PostgresElector(database_url, LOCK_ID, heartbeat_seconds=1), start=start, stop=stop,
                          heartbeat_seconds=0.1, name=name)

    first, second = loop("first"), loop("second")
    first.start()
    wait_for(lambda: first.is_leader, "the first loop to lead")
    second.start()
    try:
        for _ in range(5):
            second.step()
        assert running == ["first"] and not second.is_leader  # the standby keeps standing by

        pid = first.elector.backend_pid  # type: ignore[attr-defined]
        terminate_backend(database_url, pid)

        wait_for(lambda: second.is_leader and not first.is_leader, "the standby to take over")
        wait_for(lambda: running == ["second"], "the old leader to stop its jobs")
        assert events[:2] == ["start first", "start second"] or events[:2] == ["start first", "stop first"]
        assert events.count("start second") == 1 and events.count("stop first") == 1
    finally:
        first.close()
        second.close()
    assert running == []


def test_scheduler_runs_in_one_of_two_apps(app: Any, app_config: dict[str, Any]) -> None:
    """Two Trailmark processes (here: two apps) on one database: only the leader has a running scheduler."""
    from plugin.app import create_app

    other = create_app(app_config, env={})
    loops = [jobs.elected_scheduler(a) for a in (app, other)]
    try:
        for loop in loops:
            loop.step()
        assert [loop.is_leader for loop in loops] == [True, False]
        assert app.extensions[jobs.EXTENSION].running and jobs.EXTENSION not in other.extensions
        loops[0].resign()
        loops[1].step()
        assert loops[1].is_leader and other.extensions[jobs.EXTENSION].running
        assert not app.extensions[jobs.EXTENSION].running
    finally:
        for loop in loops:
            loop.resign()


# --------------------------------------------------------------------------- one job at a time


class BlockingConnector(FakeConnector):
    """A fake source whose pull stops half-way until released."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pulling = threading.Event()
        self.release = threading.Event()

    def pull(self, scope: Scope = Scope.ALL, since: Any = None) -> Iterator[Any]:
        items = super().pull(scope, since)
        for i, item in enumerate(items):
            if i == 1:
                self.pulling.set()
                assert self.release.wait(WAIT)
            yield item


@pytest.fixture
def app_config(app_config: dict[str, Any], database_url: str) -> dict[str, Any]:
    top_up_schema(database_url)
    return {**app_config, "sources": [{"name": "sis", "kind": "fake", "district": "north", "schedule": "1h"}],
            "districts": [{"slug": "north", "name": "North District"}]}


def test_a_source_never_syncs_twice_at_once_even_with_two_leaders(app: Any) -> None:
    """Were two schedulers ever to overlap (a healing partition), the source lease still lets one run in."""
    slow = BlockingConnector("sis", sample_district(classes=1, students_per_class=2))
    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", jobs.run_source(app, "sis", connector=slow,
                                                                                          full=True)))
    first.start()
    try:
        assert slow.pulling.wait(WAIT)
        second = jobs.run_source(app, "sis", full=True,
                                 connector=FakeConnector("sis", sample_district(classes=1, students_per_class=2)))
        assert second.status == sync.SKIPPED and "already syncing" in second.message
    finally:
        slow.release.set()
        first.join(WAIT)
    assert results["first"].status == sync.SUCCEEDED
    assert jobs.run_source(app, "sis", full=True, connector=FakeConnector(
        "sis", sample_district(classes=1, students_per_class=2))).status == sync.SUCCEEDED


# --------------------------------------------------------------------------- SQLite and the loop


def test_lock_file_elects_one_and_frees_on_release(tmp_path: Path) -> None:
    a, b = FileElector(tmp_path / "db.scheduler-lock"), FileElector(tmp_path / "db.scheduler-lock")
    assert a.try_acquire() and not b.try_acquire()
    assert (tmp_path / "db.scheduler-lock").read_text().strip() == str(os.getpid())
    a.release()
    assert b.try_acquire() and b.still_held()
    b.release()


def test_lock_file_is_freed_when_the_leader_process_dies(tmp_path: Path) -> None:
    path = tmp_path / "db.scheduler-lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from plugin.leader import FileElector; "
        f"e = FileElector(Path({str(path)!r})); assert e.try_acquire(); print('held', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        standby = FileElector(path)
        assert not standby.try_acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert standby.try_acquire()
        standby.release()
    finally:
        if holder.poll() is None:
            holder.kill()


def test_electors_follow_the_database(tmp_path: Path) -> None:
    assert isinstance(elector_for(f"sqlite:///{tmp_path}/t.db", lock_id=1, heartbeat_seconds=5), FileElector)
    assert isinstance(elector_for("sqlite://", lock_id=1, heartbeat_seconds=5), SoloElector)
    pg = elector_for("postgresql+psycopg://u@127.0.0.1:1/x", lock_id=1, heartbeat_seconds=5)
    assert isinstance(pg, PostgresElector)
    assert pg.try_acquire() is False  # an unreachable server means standing by, not crashing
    pg.release()


class ScriptedElector:
    description = "scripted"

    def __init__(self, answers: list[bool]):
        self.answers = answers
        self.held = False
        self.released = 0

    def try_acquire(self) -> bool:
        self.held = self.answers.pop(0)
        return self.held

    def still_held(self) -> bool:
        self.held = self.answers.pop(0)
        return self.held

    def release(self) -> None:
        self.released += 1
        self.held = False


def test_loop_starts_on_winning_stops_on_losing_and_resigns() -> None:
    calls: list[str] = []
    elector = ScriptedElector([False, True, True, False, True])
    loop = LeaderLoop(elector, start=lambda: calls.append("start") or "handle",
                      stop=lambda h: calls.append(f"stop {h}"), heartbeat_seconds=0)
    assert [loop.step() for _ in range(5)] == [False, True, True, False, True]
    assert calls == ["start", "stop handle", "start"]
    loop.resign()
    assert calls[-1] == "stop handle" and elector.released == 1 and not loop.is_leader


def test_a_leader_that_cannot_start_gives_the_lock_back() -> None:
    elector = ScriptedElector([True])

    def start() -> None:
        raise RuntimeError("scheduler cannot start")

    loop = LeaderLoop(elector, start=start, stop=lambda h: None, heartbeat_seconds=0)
    assert loop.step() is False and elector.released == 1 and not loop.is_leader
