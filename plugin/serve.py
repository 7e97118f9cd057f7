"""``trailmark serve``: the web tier under gunicorn, ``server.workers`` processes, nothing in process memory.

Every worker builds its own app with ``create_app()`` after the fork (no preloading, so no database connection
or lock crosses a fork). Login state, nonces, sessions and the platform key cache live in the database (and in
Redis when ``redis.url`` is set), so any worker can finish a launch another one started.

With ``--with-scheduler`` every worker also stands for election as the scheduler (see ``plugin/leader.py``):
exactly one runs the jobs at a time, and when that worker exits or is recycled another one takes over within a
few heartbeats. Large districts run ``trailmark scheduler`` on its own host instead and serve without it.

Metrics add up across workers: before forking, the master makes a fresh private directory for prometheus-client's
multiprocess files (inside ``PROMETHEUS_MULTIPROC_DIR`` when that is set, e.g. to systemd's ``RuntimeDirectory``,
else in the system's temporary directory), points ``PROMETHEUS_MULTIPROC_DIR`` at it for the workers, marks each
worker dead when it exits (``child_exit``) and removes the directory when it stops.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from plugin import observability

WORKER_HEADER = "X-Trailmark-Worker"
LEADER_ATTR = "_trailmark_leader"


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


# --------------------------------------------------------------------------- logging and headers


class JsonAccessLogger(glogging.Logger):
    """One JSON object per request: no query string (panel URLs carry session tickets), no cookies."""

    def access(self, resp: Any, req: Any, environ: Mapping[str, Any], request_time: Any) -> None:
        """Write the access line."""
        if not self.cfg.accesslog:
            return
        headers = {k.lower(): v for k, v in (getattr(resp, "headers", None) or [])}
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        status = getattr(resp, "status_code", None)
        entry = {  # the shape of Trailmark's own JSON log lines, plus the request's fields
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "level": "INFO",
            "logger": "trailmark.access",
            "message": f"{method} {path} {status}",
            "method": method,
            "path": path,
            "status": status,
            "bytes": getattr(resp, "sent", None),
            "ms": round(request_time.total_seconds() * 1000, 2),
            "worker": os.getpid(),
            "remote": environ.get("REMOTE_ADDR"),
        }
        if "x-request-id" in headers:
            entry["request_id"] = headers["x-request-id"]
        try:
            self.access_log.info(json.dumps(entry, separators=(",", ":")))
        except Exception:  # noqa: BLE001 - never fail a request over its log line
            self.exception("access log")


def with_worker_header(wsgi: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a WSGI app so every response names the worker process that served it."""
    pid = str(os.getpid())

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, (WORKER_HEADER, pid)], exc_info)

        return wsgi(environ, start)

    return app


# --------------------------------------------------------------------------- options


def check_bind(host: str, port: int) -> None:
    """Fail early, with a clear message, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror}). Set server.host "
                         "(HOST) to an address of this machine, e.g. 127.0.0.1 or 0.0.0.0.") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {host} is already in use by another program (is Trailmark "
                                 "already running?). Stop it or choose another port with --port or PORT."
                                 ) from None
            if exc.errno == errno.EACCES:
                raise ServeError(f"not allowed to listen on port {port}: ports below 1024 need privileges. "
                                 "Use a port like 8000 behind your TLS proxy.") from None
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def gunicorn_options(cfg: Mapping[str, Any], *, host: str, port: int, workers: int,
                     threads: int) -> dict[str, Any]:
    """The gunicorn settings for a Trailmark configuration."""
    server = cfg["server"]
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options: dict[str, Any] = {
        "bind": [bind],
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread" if threads > 1 else server["worker_class"],
        "timeout": server["timeout_seconds"],
        "graceful_timeout": server["graceful_timeout_seconds"],
        "keepalive": 5,
        "preload_app": False,
        "proc_name": "trailmark",
        "errorlog": "-",
        "loglevel": server["log_level"].lower(),
        "logger_class": JsonAccessLogger,
        "accesslog": "-" if server["access_log"] == "json" else None,
        "control_socket_disable": True,
    }
    return options


# --------------------------------------------------------------------------- the application


class TrailmarkServer(BaseApplication):  # type: ignore[misc]
    """gunicorn running Trailmark: each worker calls ``create_app(overrides)`` once after the fork."""

    def __init__(self, options: Mapping[str, Any], *, overrides: Mapping[str, Any] | None = None,
                 with_scheduler: bool = False, worker_header: bool = False):
        self.options = dict(options)
        self.overrides = dict(overrides or {})
        self.with_scheduler = with_scheduler
        self.worker_header = worker_header
        super().__init__()

    def load_config(self) -> None:
        """Apply the options gunicorn knows (newer-only settings are skipped on older versions)."""
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        self.cfg.set("post_worker_init", _worker_ready)
        self.cfg.set("child_exit", _worker_gone)
        if self.with_scheduler:
            self.cfg.set("worker_exit", _leave_scheduler)

    def load(self) -> Callable[..., Any]:
        """Build this worker's app."""
        from plugin.app import create_app

        app = create_app(self.overrides or None)
        self.flask_app = app
        return with_worker_header(app) if self.worker_header else app


def _worker_ready(worker: Any) -> None:
    """In a new worker: count it among the live ones, and stand for scheduler if asked."""
    observability.worker_started()
    if getattr(worker.app, "with_scheduler", False):
        _stand_for_scheduler(worker)


def _worker_gone(_server: Any, worker: Any) -> None:
    """In the master, when a worker has exited: its live gauges stop counting (its counters stay)."""
    path = observability.multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """A fresh private directory for the workers' metric files while gunicorn runs; removed afterwards."""
    parent = os.environ.get(observability.MULTIPROC_ENV) or None
    if parent is not None:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    path = tempfile.mkdtemp(prefix="trailmark-metrics-", dir=parent)  # mode 0700, never reused
    undo = observability.use_multiprocess(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        undo()


def _stand_for_scheduler(worker: Any) -> None:
    from plugin import jobs

    app = worker.app.flask_app
    loop = jobs.elected_scheduler(app)
    setattr(worker, LEADER_ATTR, loop)
    loop.start()


def _leave_scheduler(_server: Any, worker: Any) -> None:
    loop = getattr(worker, LEADER_ATTR, None)
    if loop is not None:
        loop.close()


def serve(cfg: Mapping[str, Any], *, host: str, port: int, workers: int, threads: int,
          with_scheduler: bool = False) -> None:
    """Run gunicorn in the foreground until stopped (SIGTERM/SIGINT: graceful; SIGHUP: reload workers)."""
    check_bind(host, port)
    options = gunicorn_options(cfg, host=host, port=port, workers=workers, threads=threads)
    overrides = {"server": {"host": host, "port": port, "workers": workers, "threads": threads}}
    with metrics_directory():
        TrailmarkServer(options, overrides=overrides, with_scheduler=with_scheduler,
                        worker_header=cfg["server"]["worker_header"]).run()
