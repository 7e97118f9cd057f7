"""Trailmark's own session after a launch.

The id_token is never the session. A launch mints a random bearer ticket (only its SHA-256 is stored), bound to
(platform, deployment, context, user, roles) and carried in panel URLs and forms as ``ltik`` — it works inside an
LMS iframe whether or not the browser allows third-party cookies, and any number of launches in one browser keep
working side by side. Pages send ``Referrer-Policy: no-referrer`` so the ticket never leaks to other sites. Every
POST also needs the session's CSRF token.

Where a session lives: with Redis configured, a launch session is one Redis key (``session:<sha256>``) that
expires with the session and is listed under its person (``keys-of:<district>:<person>``, with the ids a returning
launch remembers, see ``plugin.lti.provision``) so that erasing the person ends both (``end_sessions_of``);
nothing is written to the database. Without Redis, or when Redis
does not answer, it is a row of ``app_session``. Reading looks in Redis first, then in the database, so sessions
written either way keep working; the rows of ``app_session`` are never copied to Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from plugin.cache import Cache
from plugin.store.models import AppSession

SESSION_KEY = "session:"
_TABLE = AppSession.__table__
_BY_ID = select(AppSession).where(AppSession.id == bindparam("id"))
_COLUMNS_BY_ID = select(*_TABLE.columns).where(_TABLE.c.id == bindparam("id"))
_STORED = ("district_id", "platform_id", "deployment_id", "context_id", "user_sub", "person_id", "class_id", "view",
           "roles", "claims", "csrf_token")


@dataclass(frozen=True, slots=True)
class LaunchSession:
    """A session as a panel request reads it (the fields of ``AppSession``, not attached to any database session)."""

    id: str
    district_id: int
    platform_id: int | None
    deployment_id: str | None
    context_id: str | None
    user_sub: str
    person_id: int | None
    class_id: int | None
    view: str
    roles: list[Any]
    claims: dict[str, Any]
    csrf_token: str
    created_at: datetime
    expires_at: datetime


class NotTaken(Exception):
    """The login a session was to be minted for was gone (``taken`` False) or Redis did not answer (None)."""

    def __init__(self, taken: bool | None):
        super().__init__("taken by another request" if taken is False else "unknown")
        self.taken = taken


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def person_index(district_id: int, person_id: int) -> str:
    """The Redis set listing a person's live sessions and the launch ids remembered for them."""
    return f"keys-of:{district_id}:{person_id}"


def _encode(row: LaunchSession) -> bytes:
    data: dict[str, Any] = {name: getattr(row, name) for name in _STORED}
    data["created_at"] = row.created_at.timestamp()
    data["expires_at"] = row.expires_at.timestamp()
    return json.dumps(data, separators=(",", ":")).encode()


def _decode(digest: str, raw: bytes) -> LaunchSession | None:
    try:
        data = json.loads(raw)
        return LaunchSession(id=digest, **{name: data[name] for name in _STORED},
                             created_at=datetime.fromtimestamp(data["created_at"], UTC),
                             expires_at=datetime.fromtimestamp(data["expires_at"], UTC))
    except (ValueError, KeyError, TypeError):
        return None


def create_session(session: Session, *, district_id: int, user_sub: str, view: str, roles: list[str],
                   platform_id: int | None, deployment_id: str | None, context_id: str | None,
                   person_id: int | None, class_id: int | None, claims: dict[str, Any], minutes: int,
                   now: datetime, cache: Cache | None = None,
                   take: tuple[str, str, int] | None = None) -> tuple[str, LaunchSession]:
    """Mint a session; returns the bearer ticket (shown once) and the session as written.

    With a ``cache`` (Redis) the session is kept there; the database is written only when that fails. ``take``
    = (key, mark key, mark seconds) is a launch's login still to use up: the session is written by the same
    script, only if that script took the key, and ``NotTaken`` is raised otherwise.
    """
    ticket = secrets.token_urlsafe(32)
    row = LaunchSession(
        id=_digest(ticket), district_id=district_id, platform_id=platform_id, deployment_id=deployment_id,
        context_id=context_id, user_sub=user_sub, person_id=person_id, class_id=class_id, view=view,
        roles=list(roles), claims=claims, csrf_token=secrets.token_urlsafe(24), created_at=now,
        expires_at=now + timedelta(minutes=minutes),
    )
    if cache is not None and cache.enabled:
        index = person_index(district_id, person_id) if person_id is not None else None
        if take is not None:
            taken = cache.take_and_set(take[0], mark=(take[1], take[2]), set_key=SESSION_KEY + row.id,
                                       value=_encode(row), ttl=minutes * 60, index=index)
            if not taken:
                raise NotTaken(taken)
            return ticket, row
        if cache.set(SESSION_KEY + row.id, _encode(row), minutes * 60, index=index):
            return ticket, row
    session.execute(_TABLE.insert(), {c.key: getattr(row, c.key) for c in _TABLE.columns  # one INSERT, no flush
                                      if getattr(row, c.key) is not None})
    if secrets.randbelow(50) == 0:
        session.execute(delete(AppSession).where(AppSession.expires_at < now))
    return ticket, row


def _usable(ticket: str | None) -> bool:
    return bool(ticket) and isinstance(ticket, str) and len(ticket) <= 128


def _live(row: Any, now: datetime) -> Any:
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return row if expires > now else None


def load_session(session: Session, ticket: str | None, now: datetime) -> AppSession | None:
    """The live database session for a ticket, attached to ``session`` (so it can be deleted), or None."""
    if not _usable(ticket):
        return None
    return _live(session.scalars(_BY_ID, {"id": _digest(ticket or "")}).first(), now)


def find_session(session: Session, ticket: str | None, now: datetime,
                 cache: Cache | None = None) -> LaunchSession | None:
    """The live session for a ticket, read only: from Redis when there, else from the database."""
    if not _usable(ticket):
        return None
    digest = _digest(ticket or "")
    if cache is not None and cache.enabled:
        raw = cache.get(SESSION_KEY + digest)
        if raw is not None:
            return _live(_decode(digest, raw), now)
    found = session.connection().execute(_COLUMNS_BY_ID, {"id": digest}).first()
    return _live(LaunchSession(**found._asdict()) if found is not None else None, now)


def end_sessions_of(cache: Cache | None, district_id: int, person_id: int) -> int | None:
    """End a person's sessions kept in Redis and forget their remembered launch ids (call it when erasing them;
    their database rows are deleted with the person's other rows)."""
    if cache is None or not cache.enabled:
        return 0
    return cache.delete_indexed(person_index(district_id, person_id))


def check_csrf(row: AppSession | LaunchSession, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(row.csrf_token, str(token))
