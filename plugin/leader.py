"""Leader election: exactly one process runs the scheduler, however many hosts and workers stand by.

On PostgreSQL the leader holds a session-level ``pg_try_advisory_lock(scheduler.leader_lock_id)`` on a
dedicated connection (no pool, autocommit) and checks every ``scheduler.heartbeat_seconds`` that it still
does. Standbys try to take the lock at the same interval. When the leader process dies, PostgreSQL ends its
session at once and the lock is free at the next try; when its host or network dies, the server-side TCP
keepalives and ``tcp_user_timeout`` set on that session end it within about four heartbeats, so a standby
takes over within ``TAKEOVER_HEARTBEATS`` heartbeats (25 s with the default 5 s). The same settings on the
client side make a cut-off leader's heartbeat fail, and it stops its jobs. A short overlap while a partition
heals is covered by the per-source sync lease (``connectors/sync.py``): a source job never runs twice at once.

On SQLite (one host by nature) the leader holds an exclusive ``flock`` on a file next to the database; the
kernel releases it when the process dies. An in-memory database has a single process, which leads.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

log = logging.getLogger("trailmark.leader")

TAKEOVER_HEARTBEATS = 5  # a dead leader's host is noticed within ~4 heartbeats; a standby's next try wins


class Elector(Protocol):
    """One candidate for leadership; every method returns quickly and never raises for a lost connection."""

    description: str

    def try_acquire(self) -> bool:
        """Take the leadership if it is free; True when this candidate now leads."""
        ...

    def still_held(self) -> bool:
        """Check that this candidate still leads (the heartbeat)."""
        ...

    def release(self) -> None:
        """Give the leadership up (no-op when not held)."""
        ...


# --------------------------------------------------------------------------- PostgreSQL


class PostgresElector:
    """A session-level advisory lock held on one dedicated connection."""

    def __init__(self, url: str, lock_id: int, *, heartbeat_seconds: float = 5, connect_timeout: int = 5):
        self.lock_id = lock_id
        self.heartbeat = max(1, int(heartbeat_seconds))
        self.description = f"PostgreSQL advisory lock {lock_id}"
        # Client-side keepalives and tcp_user_timeout: a leader cut off from the server notices within
        # ~4 heartbeats instead of the kernel default of two hours.
        self.engine: Engine = create_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": connect_timeout, "keepalives": 1,
                          "keepalives_idle": self.heartbeat, "keepalives_interval": self.heartbeat,
                          "keepalives_count": 3, "tcp_user_timeout": 4 * self.heartbeat * 1000,
                          "application_name": "trailmark-scheduler"})
        self._conn: Connection | None = None
        self._held = False

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the dedicated connection (for operators and tests)."""
        if self._conn is None:
            return None
        try:
            return int(self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        except DBAPIError:
            self._drop()
            return None

    def _connect(self) -> Connection:
        if self._conn is None:
            conn = self.engine.connect()
            hb = self.heartbeat
            # Server-side: a leader whose host vanished loses its session (and the lock) within ~4 heartbeats.
            for name, value in (("tcp_keepalives_idle", hb), ("tcp_keepalives_interval", hb),
                                ("tcp_keepalives_count", 3), ("tcp_user_timeout", 4 * hb * 1000)):
                conn.execute(text("SELECT set_config(:name, :value, false)"),
                             {"name": name, "value": str(value)})
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass

    def try_acquire(self) -> bool:
        """Run ``pg_try_advisory_lock`` on the dedicated connection (once: session locks stack)."""
        if self._held:
            return self.still_held()
        try:
            conn = self._connect()
            self._held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:id)"),
                                           {"id": self.lock_id}).scalar_one())
        except DBAPIError as exc:
            log.warning("leader.unreachable lock=%s error=%s", self.lock_id, type(exc.orig).__name__)
            self._drop()
        return self._held

    def still_held(self) -> bool:
        """Confirm in ``pg_locks`` that this session still holds the lock."""
        if not self._held or self._conn is None:
            return False
        hi, lo = (self.lock_id >> 32) & 0xFFFFFFFF, self.lock_id & 0xFFFFFFFF
        try:
            self._held = bool(self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid = :hi AND objid = :lo AND objsubid = 1)"),
                {"hi": hi, "lo": lo}).scalar_one())
        except DBAPIError as exc:
            log.warning("leader.lost lock=%s error=%s", self.lock_id, type(exc.orig).__name__)
            self._drop()
        return self._held

    def release(self) -> None:
        """Unlock and close the dedicated connection."""
        if self._conn is not None and self._held:
            try:  # the connection is dedicated to this lock, so all of its advisory locks are this one
                self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
            except DBAPIError:
                pass
        self._drop()
        self.engine.dispose()


# --------------------------------------------------------------------------- SQLite and in-memory


class FileElector:
    """An exclusive ``flock`` on a file; the kernel drops it with the process."""

    def __init__(self, path: Path):
        self.path = path
        self.description = f"lock file {path}"
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def still_held(self) -> bool:
        """A held flock cannot be taken away while the file stays open."""
        return self._fd is not None

    def release(self) -> None:
        """Unlock and close the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class SoloElector:
    """The only process there is (an in-memory database) always leads."""

    description = "single process"

    def __init__(self) -> None:
        self._held = False

    def try_acquire(self) -> bool:
        """Lead."""
        self._held = True
        return True

    def still_held(self) -> bool:
        """Still lead until released."""
        return self._held

    def release(self) -> None:
        """Stop leading."""
        self._held = False


def elector_for(database_url: str, *, lock_id: int, heartbeat_seconds: float) -> Elector:
    """The elector that fits the database: an advisory lock, a lock file, or none needed."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        return PostgresElector(database_url, lock_id, heartbeat_seconds=heartbeat_seconds)
    if backend == "sqlite" and url.database and url.database != ":memory:":
        path = Path(url.database)
        if not path.is_absolute():
            path = Path.cwd() / path
        return FileElector(path.with_name(path.name + ".scheduler-lock"))
    if backend == "sqlite":
        return SoloElector()
    raise ValueError(f"no leader election for database backend {backend!r}; use PostgreSQL or SQLite")


# --------------------------------------------------------------------------- the loop

Started = Callable[[], Any]  # starts the leader's work; returns a handle given back to ``stop``


class LeaderLoop:
    """Stand for election every heartbeat; run ``start()`` on winning and ``stop(handle)`` on losing."""

    def __init__(self, elector: Elector, *, start: Started, stop: Callable[[Any], None],
                 heartbeat_seconds: float = 5, name: str = "scheduler"):
        self.elector = elector
        self.start_work = start
        self.stop_work = stop
        self.heartbeat = heartbeat_seconds
        self.name = name
        self.is_leader = False
        self.elected = threading.Event()
        self._handle: Any = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> bool:
        """One round: a standby tries to take the lead, the leader checks it still has it."""
        if self.is_leader:
            if not self.elector.still_held():
                log.warning("leader.demoted name=%s pid=%s via=%s", self.name, os.getpid(),
                            self.elector.description)
                self._demote()
            return self.is_leader
        if self.elector.try_acquire():
            log.info("leader.elected name=%s pid=%s via=%s", self.name, os.getpid(), self.elector.description)
            try:
                self._handle = self.start_work()
            except Exception:
                log.exception("leader.start_failed name=%s", self.name)
                self.elector.release()
                return False
            self.is_leader = True
            self.elected.set()
        return self.is_leader

    def _demote(self) -> None:
        self.is_leader = False
        self.elected.clear()
        handle, self._handle = self._handle, None
        try:
            self.stop_work(handle)
        except Exception:
            log.exception("leader.stop_failed name=%s", self.name)

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop until ``stop`` (or ``close()``) is set; then step down."""
        stop = stop or self._stopping
        try:
            while True:
                try:
                    self.step()
                except Exception:
                    log.exception("leader.step_failed name=%s", self.name)
                if stop.wait(self.heartbeat) or self._stopping.is_set():
                    break
        finally:
            self.resign()

    def start(self) -> threading.Thread:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=f"trailmark-{self.name}-leader", daemon=True)
        self._thread.start()
        return self._thread

    def resign(self) -> None:
        """Stop the leader's work and free the lock."""
        if self.is_leader:
            self._demote()
        self.elector.release()

    def close(self, timeout: float = 10) -> None:
        """Stop the loop thread and step down."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        else:
            self.resign()


def loop_for_app(app: Any, *, start: Started, stop: Callable[[Any], None]) -> LeaderLoop:
    """A leader loop configured from the app's ``[scheduler]`` and ``[database]`` settings."""
    cfg = app.config["TRAILMARK"]
    heartbeat = cfg["scheduler"]["heartbeat_seconds"]
    elector = elector_for(cfg["database"]["url"], lock_id=cfg["scheduler"]["leader_lock_id"],
                          heartbeat_seconds=heartbeat)
    return LeaderLoop(elector, start=start, stop=stop, heartbeat_seconds=heartbeat)


def run_until_signalled(loop: LeaderLoop) -> None:
    """Run a leader loop in the foreground until SIGTERM or SIGINT, then step down cleanly."""
    stop = threading.Event()

    def _handler(signum: int, _frame: Any) -> None:
        log.info("leader.stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        loop.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
