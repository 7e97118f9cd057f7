"""What the admin console and its JSON API do, as plain functions of one district.

Every function takes the district id of the signed-in administrator and touches only that district's rows
(signing keys are Trailmark-wide and shared by every district). Results are JSON-ready dicts, so the HTML pages
and the API show the same facts. Every change is recorded as an ``AuditEvent`` by ``audit``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from plugin.admin.auth import Principal
from plugin.privacy import iso_time as _iso
from plugin.store import models as m
from plugin.store import queries

if TYPE_CHECKING:
    from flask import Flask

PAGE = 50
COUNT_FIELDS = ("added", "updated", "unchanged", "tombstoned", "rejected")


class NotFoundInDistrict(LookupError):
    """The row does not exist, or belongs to another district."""


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def audit(session: Session, who: Principal, action: str, subject: str | None = None, *, now: datetime,
          **detail: Any) -> None:
    """Record an administrator's action."""
    session.add(m.AuditEvent(district_id=who.district_id, at=now, actor=who.actor, action=action, subject=subject,
                             detail={"via": who.via, **detail}))


def district_of(session: Session, district_id: int) -> dict[str, Any]:
    """The district's name and settings."""
    d = session.get(m.District, district_id)
    if d is None:
        raise NotFoundInDistrict("no such district")
    return {"id": d.id, "slug": d.slug, "name": d.name}


# --------------------------------------------------------------------------- platforms


def _platform(p: m.Platform, deployments: Sequence[str]) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "issuer": p.issuer, "client_id": p.client_id,
            "deployment_ids": list(deployments), "product_family": p.product_family,
            "registered_via": p.registered_via, "auth_login_url": p.auth_login_url,
            "auth_token_url": p.auth_token_url, "key_set_url": p.key_set_url, "created_at": _iso(p.created_at)}


def list_platforms(session: Session, district_id: int) -> list[dict[str, Any]]:
    """The district's LMS registrations with their deployments."""
    return [_platform(p, deps) for p, deps in queries.list_platforms(session, district_id)]


def check_platform_url(value: str, *, production: bool) -> str | None:
    """Why a platform URL is not acceptable, or None."""
    parts = urlsplit(value or "")
    if parts.scheme not in ("https", "http") or not parts.netloc:
        return "expected a URL like https://lms.example.org/…"
    if parts.scheme == "http" and production:
        return "production platforms must use https"
    return None


def add_platform(session: Session, who: Principal, data: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Register an LMS by hand for the district (or add deployments to its registration); audited."""
    from plugin.lti.platforms import add_platform as add

    district = session.get(m.District, who.district_id)
    platform = add(session, district, issuer=data["issuer"], client_id=data["client_id"],  # type: ignore[arg-type]
                   deployment_ids=data["deployment_ids"], auth_login_url=data["auth_login_url"],
                   auth_token_url=data["auth_token_url"], key_set_url=data["key_set_url"],
                   auth_audience=data.get("auth_audience") or None, name=data.get("name") or "",
                   product_family=(data.get("product_family") or "").lower(), registered_via="manual", now=now)
    session.flush()
    audit(session, who, "admin.platform_added", f"platform:{platform.id}", now=now, issuer=platform.issuer,
          client_id=platform.client_id)
    return next(p for p in list_platforms(session, who.district_id) if p["id"] == platform.id)


def remove_platform(session: Session, who: Principal, platform_id: int, *, now: datetime) -> None:
    """Remove one of the district's registrations (its launches stop working); audited."""
    platform = session.get(m.Platform, platform_id)
    if platform is None or platform.district_id != who.district_id:
        raise NotFoundInDistrict(f"no platform {platform_id} in this district")
    audit(session, who, "admin.platform_removed", f"platform:{platform_id}", now=now, issuer=platform.issuer,
          client_id=platform.client_id)
    session.delete(platform)
    session.flush()


def create_invite(session: Session, who: Principal, *, base_url: str, hours: int, note: str,
                  now: datetime) -> dict[str, Any]:
    """A one-time Dynamic Registration URL for the district; audited (the code itself is not)."""
    from plugin.lti.platforms import create_invite as invite

    district = session.get(m.District, who.district_id)
    code = invite(session, district, hours=hours, note=note)  # type: ignore[arg-type]
    audit(session, who, "admin.registration_invite", None, now=now, hours=hours, note=note[:100])
    return {"url": f"{base_url}/lti/register?code={code}", "hours": hours}


# --------------------------------------------------------------------------- sources and sync runs


def _totals(counts: Mapping[str, Any]) -> dict[str, int]:
    out = dict.fromkeys(COUNT_FIELDS, 0)
    for kind, c in (counts or {}).items():
        if kind.startswith("_") or not isinstance(c, Mapping):
            continue
        for f in COUNT_FIELDS:
            value = c.get(f, 0)
            out[f] += value if isinstance(value, int) else 0
    return out


def _run(r: m.SyncRun, source_name: str) -> dict[str, Any]:
    started, finished = _aware(r.started_at), _aware(r.finished_at)
    return {"id": r.id, "source": source_name, "scope": r.scope, "full": r.full, "dry_run": r.dry_run,
            "status": r.status, "started_at": _iso(started), "finished_at": _iso(finished),
            "duration_seconds": round((finished - started).total_seconds(), 3) if started and finished else None,
            "totals": _totals(r.counts), "error_count": len(r.errors or []),
            "first_error": (r.errors[0].get("reason") if r.errors and isinstance(r.errors[0], dict) else None)}


def _next_run(cfg: Mapping[str, Any], source: m.Source | None, last: m.SyncRun | None, now: datetime,
              scheduler_enabled: bool) -> datetime | None:
    if not scheduler_enabled or not cfg.get("enabled", True) or not cfg.get("schedule"):
        return None
    from plugin.jobs import parse_schedule

    try:
        trigger = parse_schedule(str(cfg["schedule"]))
    except ValueError:
        return None
    previous = _aware(last.started_at) if last is not None else None
    nxt = trigger.get_next_fire_time(previous, now)
    if nxt is not None and nxt < now:
        nxt = now  # overdue: the scheduler runs it at its next chance
    paused = _aware(source.paused_until) if source is not None else None
    if nxt is not None and paused is not None and paused > nxt:
        nxt = paused
    return nxt


def list_sources(app: Flask, session: Session, district_id: int, *, now: datetime) -> list[dict[str, Any]]:
    """The district's configured sources with their last run, next run, health and errors."""
    slug = session.scalar(select(m.District.slug).where(m.District.id == district_id))
    configured = [s for s in app.config.get("SOURCES") or [] if s.get("district") == slug]
    rows = {s.name: s for s in session.scalars(select(m.Source).where(m.Source.district_id == district_id))}
    latest = dict(session.execute(select(m.SyncRun.source_id, func.max(m.SyncRun.id))
                                  .where(m.SyncRun.district_id == district_id)
                                  .group_by(m.SyncRun.source_id)).all())
    runs = {r.source_id: r for r in session.scalars(select(m.SyncRun).where(m.SyncRun.id.in_(latest.values())))} \
        if latest else {}
    scheduler = bool(app.config.get("SCHEDULER_ENABLED"))
    out = []
    names = [c["name"] for c in configured] + sorted(n for n in rows if n not in {c["name"] for c in configured})
    by_name = {c["name"]: c for c in configured}
    for name in names:
        cfg = by_name.get(name, {})
        src = rows.get(name)
        last = runs.get(src.id) if src is not None else None
        paused = _aware(src.paused_until) if src is not None else None
        nxt = _next_run(cfg, src, last, now, scheduler)
        out.append({
            "name": name, "kind": cfg.get("kind") or (src.kind if src else ""), "configured": bool(cfg),
            "enabled": bool(cfg.get("enabled", True)) if cfg else False, "schedule": cfg.get("schedule"),
            "last_run": _run(last, name) if last is not None else None, "next_run_at": _iso(nxt),
            "paused_until": _iso(paused) if paused and paused > now else None,
            "consecutive_failures": src.consecutive_failures if src else 0,
            "last_error": src.last_error if src else None,
            "sync_requested": _request(src),
            "errors": [e for e in (last.errors or [])[:20] if isinstance(e, dict)] if last is not None else [],
        })
    return out


def _request(src: m.Source | None) -> dict[str, Any] | None:
    if src is None or src.sync_requested_at is None:
        return None
    return {"at": _iso(_aware(src.sync_requested_at)), "by": src.sync_requested_by, "full": src.sync_requested_full}


def request_sync(app: Flask, session: Session, who: Principal, name: str, *, full: bool, now: datetime
                 ) -> dict[str, Any]:
    """Ask the scheduler to run one of the district's sources at its next poll (a paused source too); audited.

    A request already waiting is kept (its time stays; asking for a full run makes it one).
    """
    slug = session.scalar(select(m.District.slug).where(m.District.id == who.district_id))
    cfg = next((c for c in app.config.get("SOURCES") or [] if c.get("district") == slug and c.get("name") == name),
               None)
    if cfg is None:
        raise NotFoundInDistrict(f"no source {name!r} is configured for this district")
    if not cfg.get("enabled", True):
        raise ValueError(f"source {name!r} is disabled in the district file; enable it there to sync it")
    from connectors import sync

    source = sync.ensure_source(session, who.district_id, name, str(cfg["kind"]), now, cfg.get("schedule"))
    if source.sync_requested_at is None:
        source.sync_requested_at = now
    source.sync_requested_by = who.label or who.actor
    source.sync_requested_full = bool(source.sync_requested_full or full)
    audit(session, who, "admin.sync_requested", f"source:{name}", now=now, full=source.sync_requested_full)
    session.flush()
    return {"source": name, **(_request(source) or {})}


def list_runs(session: Session, district_id: int, *, source: str | None = None, limit: int = PAGE,
              before_id: int | None = None) -> list[dict[str, Any]]:
    """The district's sync runs, newest first."""
    stmt = (select(m.SyncRun, m.Source.name).join(m.Source, m.Source.id == m.SyncRun.source_id)
            .where(m.SyncRun.district_id == district_id).order_by(m.SyncRun.id.desc()).limit(min(limit, 500)))
    if source:
        stmt = stmt.where(m.Source.name == source)
    if before_id:
        stmt = stmt.where(m.SyncRun.id < before_id)
    return [_run(r, name) for r, name in session.execute(stmt).all()]


def get_run(session: Session, district_id: int, run_id: int) -> dict[str, Any]:
    """One sync run with its counts per record kind and its errors."""
    row = session.execute(select(m.SyncRun, m.Source.name).join(m.Source, m.Source.id == m.SyncRun.source_id)
                          .where(m.SyncRun.id == run_id, m.SyncRun.district_id == district_id)).first()
    if row is None:
        raise NotFoundInDistrict(f"no sync run {run_id} in this district")
    run, name = row
    return {**_run(run, name), "counts": {k: v for k, v in (run.counts or {}).items() if not k.startswith("_")},
            "errors": [e for e in run.errors or [] if isinstance(e, dict)]}


# --------------------------------------------------------------------------- outbox


def _target(item: m.OutboxItem, names: Mapping[int, str], platforms: Mapping[int, str]) -> str:
    if item.source_id is not None:
        return f"source {names.get(item.source_id, item.source_id)}"
    return f"platform {platforms.get(item.platform_id or 0, item.platform_id)}"


def outbox_overview(session: Session, district_id: int, *, now: datetime, limit: int = PAGE) -> dict[str, Any]:
    """Outbox depth by status, the oldest pending write, dead letters and the next pending writes."""
    item = m.OutboxItem
    counts = dict.fromkeys(("pending", "sent", "dead", "cancelled"), 0)
    counts.update({s: n for s, n in session.execute(select(item.status, func.count())
                                                   .where(item.district_id == district_id)
                                                   .group_by(item.status)).all()})
    oldest = _aware(session.scalar(select(func.min(item.created_at)).where(item.district_id == district_id,
                                                                          item.status == "pending")))
    names = dict(session.execute(select(m.Source.id, m.Source.name).where(m.Source.district_id == district_id)).all())
    platforms = dict(session.execute(select(m.Platform.id, m.Platform.issuer)
                                     .where(m.Platform.district_id == district_id)).all())

    def rows(status: str, order: Any) -> list[dict[str, Any]]:
        return [{"id": i.id, "kind": i.kind, "target": _target(i, names, platforms), "status": i.status,
                 "attempts": i.attempts, "next_attempt_at": _iso(i.next_attempt_at), "last_error": i.last_error,
                 "created_at": _iso(i.created_at)}
                for i in session.scalars(select(item).where(item.district_id == district_id, item.status == status)
                                         .order_by(*order).limit(limit))]

    return {"counts": counts, "oldest_pending_at": _iso(oldest),
            "oldest_pending_age_seconds": int((now - oldest).total_seconds()) if oldest else None,
            "dead": rows("dead", (item.id.desc(),)), "pending": rows("pending", (item.next_attempt_at, item.id)),
            "cancelled": rows("cancelled", (item.id.desc(),))}


def retry_outbox_item(session: Session, who: Principal, item_id: int, *, now: datetime) -> None:
    """Put one of the district's dead letters back in the queue; audited."""
    from connectors import outbox

    found = session.scalar(select(m.OutboxItem.status).where(m.OutboxItem.id == item_id,
                                                            m.OutboxItem.district_id == who.district_id))
    if found is None:
        raise NotFoundInDistrict(f"no outbox item {item_id} in this district")
    if not outbox.retry_dead(session, item_id, now=now):
        raise ValueError(f"outbox item {item_id} is {found}, not dead; only dead letters are retried")
    audit(session, who, "admin.outbox_retry", f"outbox:{item_id}", now=now)


def retry_all_dead(session: Session, who: Principal, *, now: datetime) -> int:
    """Put every dead letter of the district back in the queue; audited."""
    item = m.OutboxItem
    result = session.execute(update(item).where(item.district_id == who.district_id, item.status == "dead")
                             .values(status="pending", attempts=0, next_attempt_at=now)
                             .execution_options(synchronize_session=False))
    n = int(result.rowcount or 0)  # type: ignore[attr-defined]
    audit(session, who, "admin.outbox_retry_all", None, now=now, count=n)
    return n


# --------------------------------------------------------------------------- signing keys (Trailmark-wide)


def list_keys(session: Session) -> list[dict[str, Any]]:
    """Trailmark's signing keys (public facts only)."""
    return [{"kid": k.kid, "status": k.status, "created_at": _iso(k.created_at), "retired_at": _iso(k.retired_at)}
            for k in queries.list_keys(session)]


def rotate_key(session: Session, who: Principal, *, now: datetime) -> dict[str, Any]:
    """Make a new active signing key; the old one stays published until retired; audited."""
    from plugin.lti import keys

    new, old = keys.rotate(session, now)
    audit(session, who, "admin.key_rotated", f"key:{new.kid}", now=now, retiring=old)
    return {"active": new.kid, "retiring": old}


def retire_key(session: Session, who: Principal, kid: str, *, now: datetime) -> None:
    """Stop publishing a retiring key; audited. Raises LookupError or ValueError."""
    from plugin.lti import keys

    keys.retire(session, kid, now)
    audit(session, who, "admin.key_retired", f"key:{kid}", now=now)


# --------------------------------------------------------------------------- configuration check


@dataclass(frozen=True)
class Check:
    """One line of the configuration check."""

    name: str
    ok: bool
    detail: str
    warning: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "warning": self.warning, "detail": self.detail}


def config_check(app: Flask, session: Session, district_id: int, *, now: datetime) -> list[Check]:
    """Check what this district depends on: secrets, database, Redis, keys, platforms, sources, mode."""
    from plugin import observability
    from plugin.config import ConfigError, resolve_secrets

    cfg = app.config["TRAILMARK"]
    slug = session.scalar(select(m.District.slug).where(m.District.id == district_id))
    out: list[Check] = []
    _ready, checks = observability.readiness(app)
    for name, value in checks.items():
        out.append(Check(name.replace("_", " "), value == "ok", value))
    production = cfg["mode"] == "production"
    url = app.config["BASE_URL"]
    out.append(Check("public URL", url.startswith("https://") or not production,
                     f"{url} ({'https' if url.startswith('https://') else 'http: fine only for local runs'})",
                     warning=not url.startswith("https://")))
    out.append(Check("mode", True, f"{cfg['mode']}; sandbox {'on' if cfg['sandbox']['enabled'] else 'off'}",
                     warning=not production))
    for source in [s for s in cfg["sources"] if s.get("district") == slug]:
        try:
            resolve_secrets(source)
        except ConfigError as exc:
            out.append(Check(f"source {source['name']}", False, str(exc)))
        else:
            out.append(Check(f"source {source['name']}", True,
                             f"{source['kind']}, {'enabled' if source.get('enabled', True) else 'disabled'}, "
                             f"schedule {source.get('schedule') or 'none (run by hand)'}; secrets readable"))
    platforms = list_platforms(session, district_id)
    out.append(Check("platforms", bool(platforms), f"{len(platforms)} registered" if platforms else
                     "none registered yet: invite one from the Platforms page", warning=not platforms))
    no_deployment = [p["issuer"] for p in platforms if not p["deployment_ids"]]
    if no_deployment:
        out.append(Check("deployments", False, "no deployment id yet for " + ", ".join(no_deployment) +
                         "; launches are refused until the LMS's deployment id is added", warning=True))
    active = [k for k in queries.list_keys(session) if k.status == "active"]
    if not active:
        out.append(Check("signing key", False, "no active signing key: run `trailmark keys rotate`"))
    else:
        age = (now - _aware(active[-1].created_at)).days  # type: ignore[operator]
        out.append(Check("signing key", True, f"active key {active[-1].kid} is {age} days old"
                         + ("; consider rotating it (yearly)" if age > 365 else ""), warning=age > 365))
    retention = cfg["privacy"]["retention_days"]
    out.append(Check("retention", True, f"audit events, sync runs, sent outbox items and profile snapshots are "
                     f"kept {retention} days unless set per kind"))
    return out


# --------------------------------------------------------------------------- audit log


def list_audit(session: Session, district_id: int, *, limit: int = PAGE, before_id: int | None = None,
               action: str | None = None) -> list[dict[str, Any]]:
    """The district's audit events, newest first."""
    ev = m.AuditEvent
    stmt = select(ev).where(ev.district_id == district_id).order_by(ev.id.desc()).limit(min(limit, 500))
    if before_id:
        stmt = stmt.where(ev.id < before_id)
    if action:
        stmt = stmt.where(ev.action == action)
    return [{"id": e.id, "at": _iso(e.at), "actor": e.actor, "action": e.action, "subject": e.subject,
             "detail": e.detail or {}} for e in session.scalars(stmt)]


# --------------------------------------------------------------------------- privacy requests


def export_student(session: Session, who: Principal, person_id: int, *, now: datetime) -> dict[str, Any]:
    """Export one person's data for a privacy request; audited."""
    from plugin import privacy

    try:
        data = privacy.export_person(session, who.district_id, person_id, now=now)
    except LookupError:
        raise NotFoundInDistrict(f"no person {person_id} in this district") from None
    audit(session, who, "privacy.export", f"person:{person_id}", now=now)
    return data


def erase_student(session: Session, who: Principal, person_id: int, *, now: datetime) -> dict[str, Any]:
    """Erase one person's data on request (audited by the erasure itself)."""
    from plugin import privacy
    from plugin.cache import get_cache
    from plugin.lti.sessions import end_sessions_of

    try:
        report = privacy.erase_person(session, who.district_id, person_id, actor=who.actor, now=now)
    except LookupError:
        raise NotFoundInDistrict(f"no person {person_id} in this district") from None
    end_sessions_of(get_cache(), who.district_id, person_id)  # signed-in pages and remembered launch ids end now
    return {"person_id": report.person_id, "already_erased": report.already_erased,
            "deleted": dict(report.deleted), "references_marked": report.refs_marked}


def find_student(session: Session, district_id: int, ref: str) -> dict[str, Any] | None:
    """A person of the district by Trailmark id, SIS id or sourced id (for the privacy page)."""
    from plugin import privacy

    p = privacy.find_person(session, district_id, ref)
    if p is None:
        return None
    return {"id": p.id, "name": p.display_name, "role": p.role, "sis_id": p.sis_id, "status": p.status}
