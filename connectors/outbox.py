"""The outbox: every write to an LMS or SIS is a durable row, pushed until acknowledged, exactly once.

``enqueue`` adds a write under an idempotency key (a second enqueue with the same key is a no-op).
``dispatch_due`` claims due items, pushes each through its target's connector and records the outcome:
acknowledged → ``sent`` with the remote id; a retryable failure (rate limiting, an upstream outage) → tried
again later with exponential backoff and jitter (``Retry-After`` honoured); a refusal (``RemoteRejected``,
``AuthError``, ``ConfigurationError``) or too many attempts → ``dead`` with the reason kept on the row until
someone calls ``retry_dead``.

A claim moves ``next_attempt_at`` past a short lease before the push, so a dispatcher that dies mid-push
lets another retry the item later; on PostgreSQL the claim also skips rows another dispatcher has locked
(``FOR UPDATE SKIP LOCKED``). Connectors' pushes are idempotent (stable ids, AGS timestamps), so a retried
push never doubles a write.

``cancel`` stops pending and dead items for good (``cancelled``, with the reason on the row): erasing a student
on request cancels the scores and messages still queued for them. An outcome is only recorded on an item that
is still pending, so a push that was in flight when its item was cancelled leaves it cancelled.
"""

from __future__ import annotations

import logging
import random
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from connectors.base import (
    Capability,
    ConfigurationError,
    Connector,
    ConnectorError,
    GateWrite,
    MessageWrite,
    RateLimited,
    ScoreWrite,
    Write,
)
from plugin.store import models
from plugin.store.db import Store

log = logging.getLogger("trailmark.outbox")

PENDING, SENT, DEAD = "pending", "sent", "dead"
CANCELLED = "cancelled"  # never pushed, whatever happens next (e.g. its person was erased on request)
MAX_ATTEMPTS = 8
BACKOFF_FIRST = timedelta(minutes=1)
BACKOFF_MAX = timedelta(hours=1)
CLAIM_LEASE = timedelta(minutes=5)
JITTER = 0.2  # ± share of each delay

WRITE_KINDS: Mapping[str, type] = {"score": ScoreWrite, "gate": GateWrite, "message": MessageWrite}
KIND_OF_WRITE: Mapping[type, str] = {v: k for k, v in WRITE_KINDS.items()}
CAPABILITY_OF: Mapping[type, Capability] = {
    ScoreWrite: Capability.WRITE_SCORES,
    GateWrite: Capability.WRITE_GATES,
    MessageWrite: Capability.WRITE_MESSAGES,
}


#: ``hook(session, item_id, outcome, now)``: told of each recorded outcome (``status``, ``last_error`` …) of one
#: write kind, inside the transaction that records it
OutcomeHook = Callable[[Session, int, Mapping[str, Any], datetime], None]
_outcome_hooks: dict[str, list[OutcomeHook]] = {}


def on_outcome(kind: str, hook: OutcomeHook) -> None:
    """Have ``hook`` told of every recorded outcome of ``kind`` writes (once per hook)."""
    hooks = _outcome_hooks.setdefault(kind, [])
    if hook not in hooks:
        hooks.append(hook)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a write goes: a configured source, or an LTI platform (AGS)."""

    source_id: int | None = None
    platform_id: int | None = None

    def __post_init__(self) -> None:
        if (self.source_id is None) == (self.platform_id is None):
            raise ValueError("a target is exactly one of a source or a platform")

    @classmethod
    def of(cls, target: Target | models.Source | models.Platform) -> Target:
        if isinstance(target, Target):
            return target
        if isinstance(target, models.Source):
            return cls(source_id=target.id)
        if isinstance(target, models.Platform):
            return cls(platform_id=target.id)
        raise TypeError(f"not an outbox target: {target!r}")

    def __str__(self) -> str:
        return f"source:{self.source_id}" if self.source_id is not None else f"platform:{self.platform_id}"


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """What one dispatch pass did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    dead: int = 0


# --------------------------------------------------------------------------- payloads


def to_payload(write: Write) -> dict[str, Any]:
    """Serialise a write to JSON-safe data (``type`` names the write)."""
    kind = KIND_OF_WRITE.get(type(write))
    if kind is None:
        raise TypeError(f"not a write: {type(write).__name__}")
    out: dict[str, Any] = {"type": kind}
    for f in fields(write):  # type: ignore[arg-type]
        value = getattr(write, f.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def from_payload(payload: Mapping[str, Any]) -> Write:
    """Rebuild the write a payload describes."""
    cls = WRITE_KINDS.get(str(payload.get("type")))
    if cls is None:
        raise ValueError(f"unknown write type {payload.get('type')!r}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in payload:
            continue
        value = payload[f.name]
        hint = hints[f.name]
        if value is not None and hint is datetime:
            value = datetime.fromisoformat(value)
        elif value is not None and typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)  # type: ignore[no-any-return]


def score_key(target: Target | models.Source | models.Platform, write: ScoreWrite) -> str:
    """A stable idempotency key for a score: one per (target, item, person, AGS timestamp)."""
    t = Target.of(target)
    return (f"score:{t}:{write.class_sourced_id}:{write.activity_sourced_id}:{write.person_sourced_id}:"
            f"{write.timestamp.isoformat()}")[:255]


# --------------------------------------------------------------------------- enqueue


def enqueue(session: Session, district_id: int, target: Target | models.Source | models.Platform, write: Write,
            idempotency_key: str, *, now: datetime | None = None) -> bool:
    """Add ``write`` for ``target``; return False when that key was already enqueued (nothing changes)."""
    t = Target.of(target)
    now = now or datetime.now(UTC)
    values = {
        "district_id": district_id, "source_id": t.source_id, "platform_id": t.platform_id,
        "kind": KIND_OF_WRITE[type(write)], "idempotency_key": idempotency_key, "payload": to_payload(write),
        "status": PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now,
    }
    table = models.OutboxItem.__table__
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing(
            index_elements=["district_id", "idempotency_key"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing(
            index_elements=["district_id", "idempotency_key"])
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        exists = session.scalar(select(func.count()).select_from(table).where(
            table.c.district_id == district_id, table.c.idempotency_key == idempotency_key))
        if exists:
            return False
        stmt = table.insert().values(**values)
    return session.execute(stmt.returning(table.c.id)).first() is not None


# --------------------------------------------------------------------------- dispatch


def backoff(attempts: int, rng: random.Random, *, retry_after: float | None = None) -> timedelta:
    """Return the wait before the next try: 1 min, 2, 4 … 1 h (± jitter), at least ``retry_after``."""
    base = min(BACKOFF_FIRST * (2 ** max(min(attempts - 1, 20), 0)), BACKOFF_MAX)
    delay = base * (1 + rng.uniform(-JITTER, JITTER))
    if retry_after is not None:
        delay = max(delay, timedelta(seconds=retry_after))
    return delay


def _claim(store: Store, now: datetime, limit: int) -> list[tuple[int, Target, dict[str, Any], int]]:
    """Take up to ``limit`` due items (lease: ``next_attempt_at`` moves past CLAIM_LEASE)."""
    item = models.OutboxItem
    claimed = []
    with store.session() as session:
        stmt = (select(item.id, item.source_id, item.platform_id, item.payload, item.attempts)
                .where(item.status == PENDING, item.next_attempt_at <= now)
                .order_by(item.next_attempt_at, item.id).limit(limit))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        for item_id, source_id, platform_id, payload, attempts in session.execute(stmt).all():
            taken = session.execute(
                update(item).where(item.id == item_id, item.status == PENDING, item.next_attempt_at <= now)
                .values(next_attempt_at=now + CLAIM_LEASE))
            if taken.rowcount:  # type: ignore[attr-defined]
                claimed.append((item_id, Target(source_id=source_id, platform_id=platform_id), payload, attempts))
    return claimed


def dispatch_due(
    store: Store,
    get_connector: Callable[[Target], Connector],
    now: datetime,
    limit: int = 100,
    *,
    max_attempts: int = MAX_ATTEMPTS,
    rng: random.Random | None = None,
) -> DispatchReport:
    """Push every due item once; record sent, retry later or dead-letter each."""
    rng = rng or random.Random()
    claimed = _claim(store, now, limit)
    connectors: dict[Target, Connector | ConnectorError] = {}
    sent = retried = dead = 0
    for item_id, target, payload, attempts in claimed:
        attempts += 1
        outcome: dict[str, Any]
        try:
            write = from_payload(payload)
            connector = connectors.get(target)
            if connector is None:
                try:
                    connector = connectors[target] = get_connector(target)
                except ConnectorError as exc:
                    connector = connectors[target] = exc
            if isinstance(connector, ConnectorError):
                raise connector
            needed = CAPABILITY_OF[type(write)]
            if needed not in connector.capabilities:
                raise ConfigurationError(f"source {connector.name!r} cannot {needed.value.replace(':', ' ')}")
            result = connector.push(write)
        except ConnectorError as exc:
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            if exc.retryable and attempts < max_attempts:
                delay = backoff(attempts, rng, retry_after=exc.retry_after if isinstance(exc, RateLimited) else None)
                outcome = {"status": PENDING, "next_attempt_at": now + delay, "last_error": reason}
                retried += 1
                log.info("outbox.retry item=%s target=%s attempt=%s in=%ss reason=%s", item_id, target, attempts,
                         int(delay.total_seconds()), reason)
            else:
                outcome = {"status": DEAD, "last_error": reason if not exc.retryable else
                           f"gave up after {attempts} attempts; last: {reason}"}
                dead += 1
                log.warning("outbox.dead item=%s target=%s reason=%s", item_id, target, outcome["last_error"])
        except (ValueError, TypeError, KeyError) as exc:  # a payload that cannot become a write
            outcome = {"status": DEAD, "last_error": f"unreadable payload: {exc}"[:2000]}
            dead += 1
        except Exception as exc:  # a connector bug: keep the write, try again later
            log.exception("outbox.push.crashed item=%s target=%s", item_id, target)
            reason = f"{type(exc).__name__}: {exc}"[:2000]
            if attempts < max_attempts:
                outcome = {"status": PENDING, "next_attempt_at": now + backoff(attempts, rng), "last_error": reason}
                retried += 1
            else:
                outcome = {"status": DEAD, "last_error": f"gave up after {attempts} attempts; last: {reason}"}
                dead += 1
        else:
            outcome = {"status": SENT, "remote_id": result.remote_id, "sent_at": now, "last_error": None}
            sent += 1
        with store.session() as session:
            recorded = session.execute(update(models.OutboxItem)
                                       .where(models.OutboxItem.id == item_id, models.OutboxItem.status == PENDING)
                                       .values(attempts=attempts, **outcome))
            if not recorded.rowcount:  # type: ignore[attr-defined]
                log.info("outbox.cancelled_in_flight item=%s", item_id)  # it stays cancelled
                continue
            for hook in _outcome_hooks.get(str(payload.get("type")) if isinstance(payload, Mapping) else "", ()):
                try:
                    with session.begin_nested():
                        hook(session, item_id, outcome, now)
                except Exception:  # the outcome stands whatever a listener does
                    log.exception("outbox.hook.failed item=%s", item_id)
    return DispatchReport(claimed=len(claimed), sent=sent, retried=retried, dead=dead)


def retry_dead(session: Session, item_id: int, *, now: datetime | None = None) -> bool:
    """Put a dead-lettered item back in the queue (attempts start over); return False if it was not dead."""
    result = session.execute(
        update(models.OutboxItem).where(models.OutboxItem.id == item_id, models.OutboxItem.status == DEAD)
        .values(status=PENDING, attempts=0, next_attempt_at=now or datetime.now(UTC)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def cancel(session: Session, item_ids: Iterable[int], reason: str, *, forget: bool = False) -> int:
    """Cancel pending and dead items for good, keeping ``reason`` on them; return how many were cancelled.

    With ``forget`` the items also lose what they carried (payload and idempotency key), for writes about
    someone whose data is being erased. A push already in flight is not recorded over a cancellation.
    """
    item = models.OutboxItem
    ids = sorted(set(item_ids))
    values: dict[str, Any] = {"status": CANCELLED, "last_error": reason[:2000]}
    if forget:
        values.update(payload={}, idempotency_key=literal(f"{CANCELLED}:") + cast(item.id, String))
    done = 0
    for start in range(0, len(ids), 500):
        result = session.execute(update(item).where(item.id.in_(ids[start:start + 500]),
                                                    item.status.in_((PENDING, DEAD)))
                                 .values(**values).execution_options(synchronize_session=False))
        done += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return done


def summary(session: Session, district_id: int | None = None) -> dict[str, int]:
    """Count outbox items per status."""
    item = models.OutboxItem
    stmt = select(item.status, func.count()).group_by(item.status)
    if district_id is not None:
        stmt = stmt.where(item.district_id == district_id)
    return {status: n for status, n in session.execute(stmt).all()}
