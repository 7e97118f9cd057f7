"""Observability: structured JSON logs with request ids and redaction, Prometheus ``/metrics``, ``/readyz``.

Logs. One JSON object per line on stderr (``[observability] log_format = "json"``; ``"text"`` for a terminal),
from the ``trailmark`` and ``connectors`` loggers: time, level, logger, message, the request id of the request
being served and, for errors, the traceback. The formatter is the standard library's ``logging.Formatter`` with
``json.dumps``: thirty lines that also redact, where a logging library would still need the same redaction and
request-id code around it. Redaction runs on every message and traceback: JWTs, bearer credentials, PEM blocks,
encrypted values, API tokens, e-mail addresses and the values of ``key=value`` pairs whose key names a secret or
an identifier (``ltik``, ``token``, ``password``, ``state``, ``nonce``, ``code``, ``sub``, ``email``, …).

Request ids. Each request gets an id: the incoming ``X-Request-Id`` when it looks like one (letters, digits and
``._:-``, 8–128 characters), otherwise a new random one. It is in every log line written while serving the
request and in the ``X-Request-Id`` response header (which the gunicorn access log picks up).

Metrics. ``/metrics`` serves launches by message type and view, refused logins and launches by reason and
requests by endpoint and status, counted where they happen; and, read from the database at scrape time so every
worker answers alike: sync runs per source and status, their durations, each source's last run and health, and
the outbox depth by status. Under ``trailmark serve`` the counters are prometheus-client's multiprocess kind:
``serve`` gives the workers a fresh private directory (``PROMETHEUS_MULTIPROC_DIR``) before they fork, each
worker counts into its own memory-mapped file there, any worker's scrape adds every file up (those of workers
that have exited too, so no counter drops while the server runs), and the master marks a worker dead when it
exits, so the ``livesum`` gauge of live workers drops it. Without gunicorn (``trailmark start``, tests) the same
counters live in the process.

Readiness. ``/healthz`` says the process is up; ``/readyz`` says it can serve: the database answers and is at the
schema this code needs, Redis answers when configured, and the encryption key is loaded. 503 otherwise.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from sqlalchemy import func, select, text

from plugin.store import models as m

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("trailmark.observability")

REQUEST_ID_HEADER = "X-Request-Id"
LOGGERS = ("trailmark", "connectors")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_request_id: ContextVar[str | None] = ContextVar("trailmark_request_id", default=None)

bp = Blueprint("observability", __name__)


# =========================================================================== request ids


def current_request_id() -> str | None:
    """The id of the request being served (None outside a request)."""
    return _request_id.get()


def request_id_for(incoming: str | None) -> str:
    """Keep a sane incoming id, otherwise make a new one."""
    if incoming and _SANE_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


# =========================================================================== redaction

_SECRET_KEY_WORDS = (r"[\w.-]*?(?:ltik|token|secret|passw(?:or)?d|assertion|api_?key|authorization|cookie|email|"
                     r"nonce|signature)[\w-]*")
_EXACT_KEYS = r"state|code|sub|user_sub|login_hint|lti_message_hint|given_name|family_name|username|sis_id|ticket"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]+-----.*?(?:-----END [A-Z ]+-----|$)", re.S), "[pem]"),
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]*\.[\w-]*"), "[jwt]"),
    (re.compile(r"\bgAAAAA[\w-]{16,}=*"), "[encrypted]"),
    (re.compile(r"\btmk_[\w-]{8,}"), "[api-token]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]{6,}"), r"\1 [redacted]"),
    (re.compile(rf"(?i)(\b(?:{_SECRET_KEY_WORDS}|{_EXACT_KEYS})[\"']?\s*[=:]\s*[\"']?)([^\s&\"',;)}}\]]+)"),
     r"\1[redacted]"),
    (re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
)


def redact(message: str) -> str:
    """Remove secrets, tokens, identifiers and e-mail addresses from a log message."""
    for pattern, replacement in _REDACTIONS:
        message = pattern.sub(replacement, message)
    return message


# =========================================================================== log formatting

_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, request_id, exception; everything redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        request_id = _request_id.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in entry:
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """A readable line for terminals, redacted the same way."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = _request_id.get()
        return redact(f"{line} [request {request_id}]" if request_id else line)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(log_format: str, level: str) -> None:
    """Give the Trailmark and connector loggers one redacting handler (replacing an earlier one)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, "_trailmark", False)]:
            logger.removeHandler(handler)
        handler = _StderrHandler()
        handler._trailmark = True  # type: ignore[attr-defined]
        handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
        logger.addHandler(handler)
    logging.getLogger("trailmark").setLevel(level)  # connectors.* keep the root's level (warnings by default)


# =========================================================================== metrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_MESSAGE_TYPES = {"LtiResourceLinkRequest": "resource_link", "LtiDeepLinkingRequest": "deep_linking"}


class _Metrics:
    """The metrics counted in this process (built again when the process switches to multiprocess files)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.launches = Counter("trailmark_lti_launches", "LTI launches that passed every check, by message type "
                                "and view", ["message_type", "view"], registry=self.registry)
        self.refusals = Counter("trailmark_lti_launch_failures", "LTI logins and launches refused, by reason",
                                ["reason"], registry=self.registry)
        self.requests = Counter("trailmark_http_requests", "HTTP requests answered, by endpoint and status",
                                ["endpoint", "status"], registry=self.registry)
        # Made by the first worker_started(): an unlabelled metric has a value (in multiprocess mode, a file)
        # from the moment it exists, and only web workers should have one.
        self.workers: Gauge | None = None


_metrics = _Metrics()


def multiprocess_dir() -> str | None:
    """The directory of the workers' metric files, when this process counts into one."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if path and os.path.isdir(path) else None


def use_multiprocess(path: str) -> Callable[[], None]:
    """Count into files under ``path``, shared with every process forked from here; return how to undo it.

    ``trailmark serve`` calls it before gunicorn forks: prometheus-client chose in-memory values when it was
    imported, so the value class is switched and the metrics are built again on it.
    """
    global _metrics
    from prometheus_client import values

    before = (os.environ.get(MULTIPROC_ENV), values.ValueClass, _metrics)
    os.environ[MULTIPROC_ENV] = path
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    _metrics = _Metrics()

    def undo() -> None:
        global _metrics
        env, values.ValueClass, _metrics = before
        if env is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = env

    return undo


def _in_memory_unless_the_directory_exists() -> None:
    """A ``PROMETHEUS_MULTIPROC_DIR`` that is not a directory would fail every count: count in memory instead."""
    global _metrics
    path = os.environ.get(MULTIPROC_ENV)
    if not path or os.path.isdir(path):
        return
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        log.warning("observability.metrics_dir_missing %s=%s is not a directory: metrics are counted in this "
                    "process only", MULTIPROC_ENV, path)
        values.ValueClass = values.MutexValue
        _metrics = _Metrics()


def count_launch(message_type: str | None, view: str | None) -> None:
    """Count a launch that passed every check."""
    _metrics.launches.labels(message_type=_MESSAGE_TYPES.get(message_type or "", "other"),
                             view=(view or "none")[:16]).inc()


def count_refusal(reason: str | None) -> None:
    """Count a refused login or launch."""
    _metrics.refusals.labels(reason=(reason or "unknown")[:64]).inc()


def count_request(endpoint: str | None, status: int) -> None:
    """Count an answered request under its endpoint's name (bounded, unlike paths)."""
    _metrics.requests.labels(endpoint=(endpoint or "unmatched")[:64], status=str(status)).inc()


def worker_started() -> None:
    """Say this process is a live web worker (gunicorn's post_worker_init)."""
    if _metrics.workers is None:
        _metrics.workers = Gauge("trailmark_web_workers", "Web workers alive under trailmark serve",
                                 registry=_metrics.registry, multiprocess_mode="livesum")
    _metrics.workers.set(1)


def _duration_seconds(dialect: str) -> Any:
    run = m.SyncRun
    if dialect == "postgresql":
        return func.extract("epoch", run.finished_at - run.started_at)
    return (func.julianday(run.finished_at) - func.julianday(run.started_at)) * 86400.0


def _epoch(value: datetime | None) -> float:
    if value is None:
        return 0.0
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class StoreCollector:
    """Metrics read from the database at scrape time: sync runs, source health, the outbox."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self) -> Iterator[Any]:
        """Yield the metric families."""
        from plugin.store.db import get_store

        store = get_store(self.app)
        with store.session() as session:
            yield from self._outbox(session)
            yield from self._sync(session, store.engine.dialect.name)

    def _outbox(self, session: Any) -> Iterator[Any]:
        item = m.OutboxItem
        depth = GaugeMetricFamily("trailmark_outbox_items", "Outbox items by status (pending, sent, dead, "
                                  "cancelled)", labels=["status"])
        counts = dict.fromkeys(("pending", "sent", "dead", "cancelled"), 0)
        counts.update({status: n for status, n in session.execute(
            select(item.status, func.count()).group_by(item.status)).all()})
        for status, n in sorted(counts.items()):
            depth.add_metric([status], n)
        yield depth
        oldest = session.scalar(select(func.min(item.created_at)).where(item.status == "pending"))
        age = GaugeMetricFamily("trailmark_outbox_oldest_pending_age_seconds",
                                "Age of the oldest pending outbox item (0 when none is pending)")
        age.add_metric([], max(0.0, time.time() - _epoch(oldest)) if oldest else 0.0)
        yield age

    def _sync(self, session: Any, dialect: str) -> Iterator[Any]:
        run = m.SyncRun
        sources = {s.id: s for s in session.scalars(select(m.Source))}
        slugs = dict(session.execute(select(m.District.id, m.District.slug)).all())

        def labels(source_id: int) -> list[str]:
            s = sources.get(source_id)
            return [slugs.get(s.district_id, "") if s else "", s.name if s else str(source_id)]

        runs = CounterMetricFamily("trailmark_sync_runs", "Sync runs recorded (within the retention period), "
                                   "by source and outcome", labels=["district", "source", "status"])
        for source_id, status, n in session.execute(
                select(run.source_id, run.status, func.count()).group_by(run.source_id, run.status)).all():
            runs.add_metric([*labels(source_id), status], n)
        yield runs
        duration = SummaryMetricFamily("trailmark_sync_duration_seconds", "Duration of finished sync runs",
                                       labels=["district", "source"])
        seconds = _duration_seconds(dialect)
        for source_id, n, total in session.execute(
                select(run.source_id, func.count(), func.coalesce(func.sum(seconds), 0.0))
                .where(run.finished_at.is_not(None)).group_by(run.source_id)).all():
            duration.add_metric(labels(source_id), count_value=n, sum_value=float(total or 0.0))
        yield duration
        last_ts = GaugeMetricFamily("trailmark_sync_last_run_timestamp_seconds",
                                    "When each source's latest sync run started", labels=["district", "source",
                                                                                          "status"])
        last_duration = GaugeMetricFamily("trailmark_sync_last_run_duration_seconds",
                                          "Duration of each source's latest finished sync run",
                                          labels=["district", "source"])
        last_records = GaugeMetricFamily("trailmark_sync_last_run_records",
                                         "Records each source's latest sync run added, updated, … by change",
                                         labels=["district", "source", "change"])
        latest = select(func.max(run.id)).group_by(run.source_id)
        for r in session.scalars(select(run).where(run.id.in_(latest))):
            lbl = labels(r.source_id)
            last_ts.add_metric([*lbl, r.status], _epoch(r.started_at))
            if r.finished_at is not None:
                last_duration.add_metric(lbl, max(0.0, _epoch(r.finished_at) - _epoch(r.started_at)))
            totals: dict[str, int] = {}
            for kind, c in (r.counts or {}).items():
                if kind.startswith("_") or not isinstance(c, dict):
                    continue
                for change, n in c.items():
                    if isinstance(n, int):
                        totals[change] = totals.get(change, 0) + n
            for change, n in sorted(totals.items()):
                last_records.add_metric([*lbl, change], n)
        yield last_ts
        yield last_duration
        yield last_records
        failures = GaugeMetricFamily("trailmark_source_consecutive_failures",
                                     "Failed sync runs in a row per source (0 when healthy)",
                                     labels=["district", "source"])
        paused = GaugeMetricFamily("trailmark_source_paused", "1 while a source rests after failures",
                                   labels=["district", "source"])
        now = time.time()
        for s in sources.values():
            failures.add_metric(labels(s.id), s.consecutive_failures or 0)
            paused.add_metric(labels(s.id), 1.0 if s.paused_until and _epoch(s.paused_until) > now else 0.0)
        yield failures
        yield paused


class _Scrape:
    """Everything one scrape reports: the process (or multiprocess) counters and the database metrics."""

    def __init__(self, app: Flask):
        self.parts: list[Any] = []
        path = multiprocess_dir()
        if path is not None:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=path)
            self.parts.append(registry)
        else:
            self.parts.append(_metrics.registry)
        self.parts.append(StoreCollector(app))

    def collect(self) -> Iterator[Any]:
        for part in self.parts:
            yield from part.collect()


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition."""
    cfg = current_app.config["TRAILMARK"]["observability"]
    if not cfg["metrics_enabled"]:
        return Response("metrics are turned off (observability.metrics_enabled)\n", status=404,
                        mimetype="text/plain")
    expected = current_app.extensions.get("trailmark.metrics_token")
    if expected:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            return Response("metrics need Authorization: Bearer <observability.metrics_token>\n", status=401,
                            mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
    body = generate_latest(_Scrape(current_app._get_current_object()))  # type: ignore[attr-defined, arg-type]
    return Response(body, mimetype=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


# =========================================================================== readiness


def readiness(app: Flask) -> tuple[bool, dict[str, str]]:
    """Check the database (reachable, schema at head), Redis when configured, and the encryption key."""
    from plugin import privacy
    from plugin.store.db import current_revision, get_store

    checks: dict[str, str] = {}
    engine = get_store(app).engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"unreachable ({type(exc).__name__})"
    if checks["database"] == "ok":
        head = app.extensions.get("trailmark.schema_head")
        try:
            current = current_revision(engine)
        except Exception as exc:  # noqa: BLE001
            checks["schema"] = f"unreadable ({type(exc).__name__})"
        else:
            checks["schema"] = "ok" if current == head else (
                f"at revision {current or 'none'}, this version needs {head}: run `trailmark db upgrade`")
    if app.config["TRAILMARK"]["redis"]["url"]:
        from plugin.cache import get_cache

        cache = get_cache(app)
        ping = getattr(cache, "ping", None)
        checks["redis"] = "ok" if ping is not None and ping() else "unreachable"
    problem = privacy.keyring_problem(app)
    checks["encryption_key"] = "ok" if problem is None else problem
    return all(v == "ok" for v in checks.values()), checks


@bp.get("/readyz")
def readyz() -> tuple[dict[str, Any], int]:
    """200 when this worker can serve; 503 with the failing checks otherwise."""
    ready, checks = readiness(current_app._get_current_object())  # type: ignore[attr-defined]
    return {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503


# =========================================================================== wiring


def init_app(app: Flask) -> None:
    """Install logging, request ids and the /metrics and /readyz endpoints."""
    cfg = app.config["TRAILMARK"]
    configure_logging(cfg["observability"]["log_format"], cfg["server"]["log_level"])
    _in_memory_unless_the_directory_exists()
    token_ref = cfg["observability"]["metrics_token"]
    if token_ref:
        from plugin.config import resolve_secret

        app.extensions["trailmark.metrics_token"] = resolve_secret(token_ref, key="observability.metrics_token")
    from plugin.store.db import head_revision

    app.extensions["trailmark.schema_head"] = head_revision()

    @app.before_request
    def _start_request() -> None:
        rid = request_id_for(request.headers.get(REQUEST_ID_HEADER))
        g.request_id = rid
        g.request_id_token = _request_id.set(rid)

    @app.after_request
    def _tag_response(resp: Response) -> Response:
        rid = g.get("request_id")
        if rid:
            resp.headers[REQUEST_ID_HEADER] = rid
        count_request(request.endpoint, resp.status_code)
        return resp

    @app.teardown_request
    def _end_request(_exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            try:
                _request_id.reset(token)
            except ValueError:  # set in another context (never in practice); just clear it
                _request_id.set(None)

    app.register_blueprint(bp)
