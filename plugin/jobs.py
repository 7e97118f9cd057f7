"""Scheduler wiring: one job per enabled source (from its ``schedule``) and one for the outbox.

``run_source`` is what a job (and ``trailmark sync run``) calls: it makes sure the district and source rows
exist, builds the connector from the district file (secrets resolved), runs the engine and records what
happened. Jobs never run twice at once (``max_instances=1``, ``coalesce=True``), and the engine's lease keeps
two processes from syncing one source together.
"""

from __future__ import annotations

import atexit
import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select, update

from connectors import outbox, sync
from connectors.base import ConfigurationError, Connector, Scope
from connectors.registry import build_connector
from plugin import notify, privacy
from plugin.store import models
from plugin.store.db import get_store

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("trailmark.jobs")

EXTENSION = "trailmark.scheduler"
ON_APPLIED = "trailmark.on_applied"  # app.extensions key: called after a sync changed classes
OUTBOX_SECONDS = 30
REQUESTS_SECONDS = 15  # how often the scheduler looks for syncs asked for from the admin console
FULL_EVERY = "24h"  # a delta-capable source is pulled in full at least this often
_INTERVAL = re.compile(r"^\s*(\d+)\s*(s|sec|m|min|h|d)\s*$")
_UNITS = {"s": "seconds", "sec": "seconds", "m": "minutes", "min": "minutes", "h": "hours", "d": "days"}


# --------------------------------------------------------------------------- schedules


def parse_duration(text: str) -> timedelta:
    """Parse an interval such as ``"15m"``, ``"1h"``, ``"30s"`` or ``"2d"``."""
    match = _INTERVAL.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an interval like '15m', '1h' or '1d'")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_schedule(text: str) -> BaseTrigger:
    """Turn a source's ``schedule`` (a 5-field cron expression or an interval) into a trigger."""
    if _INTERVAL.match(text):
        return IntervalTrigger(seconds=int(parse_duration(text).total_seconds()), timezone=UTC)
    if len(text.split()) == 5:
        try:
            return CronTrigger.from_crontab(text, timezone=UTC)
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a valid cron expression ({exc})") from None
    raise ValueError(f"{text!r} is neither a cron expression ('*/15 * * * *') nor an interval ('15m', '1h')")


def source_configs(app: Flask) -> list[Mapping[str, Any]]:
    return list(app.config.get("SOURCES") or [])


def source_config(app: Flask, name: str) -> Mapping[str, Any] | None:
    """Return the configured source called ``name``."""
    return next((s for s in source_configs(app) if s.get("name") == name), None)


def build_scheduler(app: Flask) -> BackgroundScheduler:
    """Create (without starting) the scheduler with a job per scheduled, enabled source and the outbox job."""
    sqlite = str(app.config.get("DATABASE_URL", "")).startswith("sqlite")
    scheduler = BackgroundScheduler(
        timezone=UTC,
        executors={"default": ThreadPoolExecutor(1 if sqlite else 4)},  # SQLite has one writer anyway
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 600},
    )
    for cfg in source_configs(app):
        if not cfg.get("enabled", True) or not cfg.get("schedule"):
            continue
        name = cfg["name"]
        try:
            trigger = parse_schedule(str(cfg["schedule"]))
        except ValueError as exc:
            raise ConfigurationError(f"sources.{name}.schedule: {exc}", source=name) from None
        scheduler.add_job(run_source_job, trigger, args=(app, name), id=f"sync:{name}", name=f"sync {name}",
                          max_instances=1, coalesce=True, replace_existing=True)
    trailmark = app.config.get("TRAILMARK") or {}
    seconds = int((trailmark.get("scheduler") or {}).get("outbox_seconds") or OUTBOX_SECONDS)
    scheduler.add_job(run_outbox_job, IntervalTrigger(seconds=seconds, timezone=UTC), args=(app,), id="outbox",
                      name="outbox", max_instances=1, coalesce=True, replace_existing=True)
    scheduler.add_job(run_requested_syncs, IntervalTrigger(seconds=REQUESTS_SECONDS, timezone=UTC), args=(app,),
                      id="sync-requests", name="syncs asked for", max_instances=1, coalesce=True,
                      replace_existing=True)
    privacy.register_jobs(scheduler, app)  # the daily retention purge
    notify.register_jobs(scheduler, app)  # the daily learning recompute and the weekly digest
    return scheduler


def start_scheduler(app: Flask) -> BackgroundScheduler:
    """Build and start the scheduler (what the elected leader runs)."""
    scheduler = build_scheduler(app)
    scheduler.start()
    app.extensions[EXTENSION] = scheduler
    log.info("scheduler.started jobs=%s", ",".join(job.id for job in scheduler.get_jobs()))
    return scheduler


def stop_scheduler(scheduler: BackgroundScheduler | None) -> None:
    """Stop a running scheduler, letting the jobs in flight finish."""
    if scheduler is not None and scheduler.running:
        scheduler.shutdown(wait=True)
        log.info("scheduler.stopped")


def elected_scheduler(app: Flask) -> Any:
    """A leader loop that runs the scheduler only while this process leads (one leader across hosts)."""
    from plugin.leader import loop_for_app

    return loop_for_app(app, start=lambda: start_scheduler(app), stop=stop_scheduler)


def run_scheduler_forever(app: Flask) -> None:
    """Stand for election and run the jobs while leading, until SIGTERM or SIGINT."""
    from plugin.leader import run_until_signalled

    run_until_signalled(elected_scheduler(app))


def init_app(app: Flask) -> Any:
    """When ``SCHEDULER_ENABLED`` is set, stand for election in the background and run the jobs when elected."""
    if not app.config.get("SCHEDULER_ENABLED"):
        return None
    loop = elected_scheduler(app)
    app.extensions[EXTENSION + ".leader"] = loop
    loop.start()
    atexit.register(loop.close)
    return loop


# --------------------------------------------------------------------------- building connectors


def resolve_secrets(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Replace ``env:``/``file:`` references in a source entry with their values."""
    from plugin.config import ConfigError
    from plugin.config import resolve_secrets as resolve

    try:
        return resolve(cfg)
    except ConfigError as exc:
        raise ConfigurationError(str(exc), source=str(cfg.get("name"))) from None


def _lti_context(session: Any, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The platform settings and key signer an LTI source needs (from the stored registration)."""
    import jwt

    from connectors.lti import PlatformSettings
    from plugin.lti import keys

    query = select(models.Platform)
    if cfg.get("platform_id") is not None:
        query = query.where(models.Platform.id == cfg["platform_id"])
    elif cfg.get("issuer"):
        query = query.where(models.Platform.issuer == cfg["issuer"])
        if cfg.get("client_id"):
            query = query.where(models.Platform.client_id == cfg["client_id"])
    else:
        raise ConfigurationError(f"{cfg.get('name')}: an lti source names its platform (issuer and client_id)",
                                 source=str(cfg.get("name")))
    platforms = list(session.scalars(query.limit(2)))
    if len(platforms) != 1:
        raise ConfigurationError(f"{cfg.get('name')}: {'no' if not platforms else 'more than one'} registered "
                                 "platform matches its issuer/client_id", source=str(cfg.get("name")))
    platform = platforms[0]
    key = keys.signing_key(session)

    def signer(claims: dict[str, Any]) -> str:
        return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": key.kid})

    settings = PlatformSettings(issuer=platform.issuer, client_id=platform.client_id,
                                token_url=platform.auth_token_url, audience=platform.auth_audience)
    return {"platform": settings, "signer": signer}


def connector_for(app: Flask, cfg: Mapping[str, Any], source: models.Source | None = None) -> Connector:
    """Build the connector of a configured source, handing it the state it left after its last run."""
    resolved = resolve_secrets(cfg)
    if source is not None and (source.cursor or {}).get("connector"):
        resolved["cursor"] = dict(source.cursor["connector"])
    context: dict[str, Any] = {}
    if resolved.get("kind") == "lti":
        with get_store(app).session() as session:
            context = _lti_context(session, resolved)
    return build_connector(resolved, tool_url=app.config.get("BASE_URL"), **context)


def connector_for_target(app: Flask, target: outbox.Target) -> Connector:
    """Find the connector an outbox item goes through."""
    with get_store(app).session() as session:
        if target.source_id is not None:
            source = session.get(models.Source, target.source_id)
            cfg = source_config(app, source.name) if source is not None else None
            if source is None or cfg is None:
                raise ConfigurationError(f"outbox target {target} is not a configured source")
            session.expunge(source)
            return connector_for(app, cfg, source)
        platform = session.get(models.Platform, target.platform_id)
    for cfg in source_configs(app):
        if cfg.get("kind") == "lti" and platform is not None and (
                cfg.get("platform_id") == platform.id
                or (cfg.get("issuer") == platform.issuer and cfg.get("client_id") in (None, platform.client_id))):
            return connector_for(app, cfg)
    raise ConfigurationError(f"outbox target {target}: no lti source is configured for that platform")


# --------------------------------------------------------------------------- running


def ensure_rows(app: Flask, cfg: Mapping[str, Any], now: datetime) -> tuple[int, models.Source]:
    """Create (or update) the district and source rows a configured source needs; return (district id, source)."""
    slug = cfg.get("district")
    if not slug:
        raise ConfigurationError(f"source {cfg.get('name')!r} names no district", source=str(cfg.get("name")))
    trailmark = app.config.get("TRAILMARK") or {}
    entry = next((d for d in trailmark.get("districts") or [] if d.get("slug") == slug), {})
    with get_store(app).session() as session:
        district = session.scalars(select(models.District).where(models.District.slug == slug)).first()
        if district is None:
            district = models.District(slug=slug, name=entry.get("name") or slug, settings={}, created_at=now)
            session.add(district)
            session.flush()
        if entry.get("match_on") and (district.settings or {}).get("match_on") != entry["match_on"]:
            district.settings = {**(district.settings or {}), "match_on": list(entry["match_on"])}
        source = sync.ensure_source(session, district.id, str(cfg["name"]), str(cfg["kind"]), now,
                                    cfg.get("schedule"))
        session.flush()
        session.expunge(source)
        return district.id, source


def _due_for_full(cfg: Mapping[str, Any], source: models.Source, scope: Scope, now: datetime) -> bool:
    every = parse_duration(str(cfg.get("full_every") or FULL_EVERY))
    last = sync.last_full(source.cursor or {}, scope)
    return last is None or now - last >= every


def run_source(
    app: Flask,
    name: str,
    *,
    scope: Scope | str | None = None,
    full: bool | None = None,
    dry_run: bool = False,
    confirm: bool = False,
    progress: Callable[[int], None] | None = None,
    ignore_pause: bool = False,
    now: datetime | None = None,
    connector: Connector | None = None,
) -> sync.SyncRunResult:
    """Sync one configured source now; a connector that cannot be built is a failed run."""
    cfg = source_config(app, name)
    if cfg is None:
        raise KeyError(name)
    now = now or datetime.now(UTC)
    scope = Scope(scope or cfg.get("scope") or Scope.ALL)
    district_id, source = ensure_rows(app, cfg, now)
    store = get_store(app)
    paused = sync._aware(source.paused_until)
    if paused is not None and paused > now and not ignore_pause:
        return sync.SyncRunResult(sync.SKIPPED, name, message=f"source {name!r} is paused until "
                                  f"{paused.isoformat(timespec='seconds')}: {source.last_error or ''}".strip())
    if full is None:
        full = _due_for_full(cfg, source, scope, now)
    if connector is None:
        try:
            connector = connector_for(app, cfg, source)
        except Exception as exc:  # a source that cannot be built counts as a failed run
            return record_unbuildable(store, district_id, source.id, name, scope, exc, now)
    try:
        return sync.run_sync(
            store, district_id, name, connector, scope=scope, full=full, dry_run=dry_run, confirm=confirm,
            now=now, progress=progress, max_removal_share=float(cfg.get("max_removal_share", 0.10)),
            on_applied=app.extensions.get(ON_APPLIED), ignore_pause=ignore_pause)
    finally:
        close = getattr(connector, "close", None)
        if callable(close):
            close()


def record_unbuildable(store: Any, district_id: int, source_id: int, name: str, scope: Scope, exc: Exception,
                       now: datetime) -> sync.SyncRunResult:
    """Record a run that could not start because the connector could not be built."""
    message = f"{type(exc).__name__}: {exc}"[:2000]
    with store.session() as session:
        source = session.get(models.Source, source_id)
        sync.record_failure(session, source, message, now)
        run = models.SyncRun(district_id=district_id, source_id=source_id, scope=scope.value, full=False,
                             dry_run=False, status=sync.FAILED, started_at=now, finished_at=now, counts={},
                             errors=[{"type": sync.FAILED, "reason": message}])
        session.add(run)
        session.flush()
        run_id = run.id
    log.warning("sync.unbuildable source=%s error=%s", name, message)
    return sync.SyncRunResult(sync.FAILED, name, run_id=run_id, message=message, started_at=now, finished_at=now)


def run_source_job(app: Flask, source_name: str) -> sync.SyncRunResult | None:
    """The scheduled job of one source: run it, log the outcome, never raise."""
    cfg = source_config(app, source_name)
    if cfg is None or not cfg.get("enabled", True):
        log.info("sync.job.skipped source=%s reason=%s", source_name, "not configured" if cfg is None else "disabled")
        return None
    try:
        result = run_source(app, source_name)
    except Exception:
        log.exception("sync.job.crashed source=%s", source_name)
        return None
    log.info("sync.job source=%s status=%s added=%s updated=%s tombstoned=%s rejected=%s %s", source_name,
             result.status, result.total("added"), result.total("updated"), result.total("tombstoned"),
             result.total("rejected"), result.message)
    return result


def run_requested_syncs(app: Flask, now: datetime | None = None) -> list[sync.SyncRunResult]:
    """Run the syncs asked for from the admin console (paused sources too), one after another; never raise.

    A request is taken (cleared by a conditional UPDATE, so two schedulers never both run it) only when its
    source is not syncing already; otherwise it waits for the next poll. A run skipped because another
    process took the lease in between puts the request back; one skipped for any other reason (logged) ends it.
    """
    results: list[sync.SyncRunResult] = []
    try:
        now = now or datetime.now(UTC)
        names = {(c.get("district"), c.get("name")): c for c in source_configs(app) if c.get("enabled", True)}
        store = get_store(app)
        with store.session() as session:
            waiting = session.execute(
                select(models.Source.id, models.Source.name, models.District.slug, models.Source.sync_requested_at,
                       models.Source.sync_requested_full, models.Source.sync_requested_by,
                       models.Source.lock_expires_at)
                .join(models.District, models.District.id == models.Source.district_id)
                .where(models.Source.sync_requested_at.is_not(None))
                .order_by(models.Source.sync_requested_at)).all()
    except Exception:
        log.exception("sync.requests.crashed")
        return results
    for source_id, name, slug, asked_at, full, by, lease in waiting:
        if (slug, name) not in names:
            continue  # no longer configured (or disabled): the request stays visible, nothing runs
        if lease is not None and sync._aware(lease) > now:
            continue  # syncing now: the request waits for the next poll
        try:
            if not _take_request(store, source_id, asked_at):
                continue
            log.info("sync.requested source=%s by=%s full=%s", name, by, full)
            result = run_source(app, name, full=True if full else None, ignore_pause=True, now=now)
            if result.status == sync.SKIPPED and _syncing(store, source_id, now):
                _put_back_request(store, source_id, asked_at, full, by)
            results.append(result)
            log.info("sync.requested.done source=%s status=%s %s", name, result.status, result.message)
        except Exception:
            log.exception("sync.requested.crashed source=%s", name)
    return results


def _take_request(store: Any, source_id: int, asked_at: datetime) -> bool:
    with store.session() as session:
        taken = session.execute(
            update(models.Source).where(models.Source.id == source_id, models.Source.sync_requested_at == asked_at)
            .values(sync_requested_at=None, sync_requested_by=None, sync_requested_full=False)
            .execution_options(synchronize_session=False))
        return bool(taken.rowcount)  # type: ignore[attr-defined]


def _syncing(store: Any, source_id: int, now: datetime) -> bool:
    with store.session() as session:
        lease = session.scalar(select(models.Source.lock_expires_at).where(models.Source.id == source_id))
    return lease is not None and sync._aware(lease) > now


def _put_back_request(store: Any, source_id: int, asked_at: datetime, full: bool, by: str | None) -> None:
    with store.session() as session:
        session.execute(
            update(models.Source).where(models.Source.id == source_id, models.Source.sync_requested_at.is_(None))
            .values(sync_requested_at=asked_at, sync_requested_by=by, sync_requested_full=full)
            .execution_options(synchronize_session=False))


def run_outbox_job(app: Flask, now: datetime | None = None, limit: int = 200) -> outbox.DispatchReport | None:
    """Push due outbox items; never raise."""
    try:
        report = outbox.dispatch_due(get_store(app), lambda target: connector_for_target(app, target),
                                     now or datetime.now(UTC), limit)
    except Exception:
        log.exception("outbox.job.crashed")
        return None
    if report.claimed:
        log.info("outbox.job claimed=%s sent=%s retried=%s dead=%s", report.claimed, report.sent, report.retried,
                 report.dead)
    return report
