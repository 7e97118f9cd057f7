"""Trailmark's own session after a launch.

The id_token is never the session. A launch mints a random bearer ticket (only its SHA-256 is stored), bound to
(platform, deployment, context, user, roles) and carried in panel URLs and forms as ``ltik`` — it works inside an
LMS iframe whether or not the browser allows third-party cookies, and any number of launches in one browser keep
working side by side. Pages send ``Referrer-Policy: no-referrer`` so the ticket never leaks to other sites. Every
POST also needs the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from plugin.store.models import AppSession

_BY_ID = select(AppSession).where(AppSession.id == bindparam("id"))


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def create_session(session: Session, *, district_id: int, user_sub: str, view: str, roles: list[str],
                   platform_id: int | None, deployment_id: str | None, context_id: str | None,
                   person_id: int | None, class_id: int | None, claims: dict[str, Any], minutes: int,
                   now: datetime) -> tuple[str, AppSession]:
    """Mint a session; returns the bearer ticket (shown once) and the row (as written, not attached)."""
    ticket = secrets.token_urlsafe(32)
    row = AppSession(
        id=_digest(ticket), district_id=district_id, platform_id=platform_id, deployment_id=deployment_id,
        context_id=context_id, user_sub=user_sub, person_id=person_id, class_id=class_id, view=view,
        roles=list(roles), claims=claims, csrf_token=secrets.token_urlsafe(24), created_at=now,
        expires_at=now + timedelta(minutes=minutes),
    )
    table = AppSession.__table__
    session.execute(table.insert(), {c.key: getattr(row, c.key) for c in table.columns  # one INSERT, no flush
                                     if getattr(row, c.key, None) is not None})
    if secrets.randbelow(50) == 0:
        session.execute(delete(AppSession).where(AppSession.expires_at < now))
    return ticket, row


def load_session(session: Session, ticket: str | None, now: datetime) -> AppSession | None:
    """The live session for a ticket, or None."""
    if not ticket or not isinstance(ticket, str) or len(ticket) > 128:
        return None
    row = session.scalars(_BY_ID, {"id": _digest(ticket)}).first()
    if row is None:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return row if expires > now else None


def check_csrf(row: AppSession, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(row.csrf_token, str(token))
