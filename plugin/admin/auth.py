"""Who may use the admin console: local administrators (password), API tokens, and shared rate limits.

District IT signs in at ``/admin/login`` with an account made by ``trailmark admin create-user`` (password
hashed with werkzeug's scrypt), or arrives through an LTI launch with an Administrator role. Scripts use
bearer API tokens made by ``trailmark admin token create``; only a token's SHA-256 is stored, which is enough for
a random 256-bit secret. Failed sign-ins are counted per account and per address in the database, so every
worker on every host sees the same count.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from plugin.store.models import AdminUser, ApiToken, RateLimit

TOKEN_PREFIX = "tmk_"
MIN_PASSWORD = 12
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{1,254}$")
_dummy_hash: list[str] = []  # made on first use: compared against when a username is unknown (same timing)


def _dummy() -> str:
    if not _dummy_hash:
        _dummy_hash.append(generate_password_hash(secrets.token_hex(16), method="scrypt"))
    return _dummy_hash[0]


@dataclass(frozen=True)
class Principal:
    """An administrator acting on one district: who (for the audit log), and how they signed in."""

    district_id: int
    actor: str  # person:12 (LTI launch) | admin:3 (local sign-in) | token:5 (API) | cli
    via: str  # lti | password | token | cli
    label: str = ""


class LoginRefused(Exception):
    """A sign-in was refused: wrong credentials, or too many failures (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- local administrators


def check_password_rules(password: str) -> str | None:
    """Why a password is not acceptable, or None."""
    if len(password) < MIN_PASSWORD:
        return f"use at least {MIN_PASSWORD} characters"
    if len(password) > 1024:
        return "use at most 1024 characters"
    return None


def create_user(session: Session, district_id: int, username: str, password: str, now: datetime) -> AdminUser:
    """Make a local administrator of one district; raise ValueError on a bad name, password or duplicate."""
    if not USERNAME.match(username):
        raise ValueError("usernames are 2–255 letters, digits and . _ @ + -")
    problem = check_password_rules(password)
    if problem:
        raise ValueError(f"password: {problem}")
    if session.scalars(select(AdminUser.id).where(AdminUser.username == username)).first() is not None:
        raise ValueError(f"there is already an administrator called {username!r}")
    user = AdminUser(district_id=district_id, username=username, created_at=now,
                     password_hash=generate_password_hash(password, method="scrypt"))
    session.add(user)
    session.flush()
    return user


def set_password(user: AdminUser, password: str) -> None:
    """Replace a local administrator's password."""
    problem = check_password_rules(password)
    if problem:
        raise ValueError(f"password: {problem}")
    user.password_hash = generate_password_hash(password, method="scrypt")


def _limit_keys(username: str, address: str) -> tuple[str, str]:
    return f"login:user:{_digest(username.lower())[:40]}", f"login:addr:{_digest(address)[:40]}"


def _window(session: Session, key: str, window: timedelta, now: datetime) -> tuple[int, datetime | None]:
    row = session.get(RateLimit, key)
    if row is None or _aware(row.window_start) + window <= now:
        return 0, None
    return row.count, _aware(row.window_start)


def _count_failure(session: Session, key: str, window: timedelta, now: datetime) -> None:
    row = session.get(RateLimit, key)
    if row is None:
        try:
            with session.begin_nested():
                session.add(RateLimit(key=key, window_start=now, count=1))
            return
        except IntegrityError:  # another worker counted the first failure at the same moment
            row = session.get(RateLimit, key)
            if row is None:
                return
    if _aware(row.window_start) + window <= now:
        session.execute(update(RateLimit).where(RateLimit.key == key).values(window_start=now, count=1))
    else:
        session.execute(update(RateLimit).where(RateLimit.key == key).values(count=RateLimit.count + 1))
    session.expire(row)


def sign_in(session: Session, username: str, password: str, *, address: str, now: datetime, max_failures: int,
            lockout: timedelta) -> AdminUser:
    """Check a sign-in; raise LoginRefused (wrong credentials or locked out). The caller commits either way."""
    user_key, addr_key = _limit_keys(username, address)
    for key, limit in ((user_key, max_failures), (addr_key, max_failures * 4)):
        count, started = _window(session, key, lockout, now)
        if count >= limit and started is not None:
            wait = int((started + lockout - now).total_seconds()) + 1
            raise LoginRefused("Too many failed sign-ins. Wait a few minutes and try again.", retry_after=wait)
    user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
    valid = check_password_hash(user.password_hash if user else _dummy(), password)
    if user is None or not valid or user.disabled_at is not None:
        _count_failure(session, user_key, lockout, now)
        _count_failure(session, addr_key, lockout, now)
        raise LoginRefused("The username or password is not right.")
    session.execute(delete(RateLimit).where(RateLimit.key == user_key))
    user.last_login_at = now
    return user


# --------------------------------------------------------------------------- API tokens


def create_token(session: Session, district_id: int, name: str, now: datetime,
                 days: int | None = None) -> tuple[str, ApiToken]:
    """Make an API token; return the secret (shown once) and the stored row."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(district_id=district_id, name=name[:255] or "API token", token_hash=_digest(secret),
                   prefix=secret[:12], created_at=now,
                   expires_at=now + timedelta(days=days) if days else None)
    session.add(row)
    session.flush()
    return secret, row


def find_token(session: Session, secret: str | None, now: datetime) -> ApiToken | None:
    """The live token row for a bearer secret, or None (unknown, revoked or expired)."""
    if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
        return None
    row = session.scalars(select(ApiToken).where(ApiToken.token_hash == _digest(secret))).first()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        return None
    last = row.last_used_at
    if last is None or _aware(last) + timedelta(minutes=5) < now:  # keep writes rare on busy tokens
        row.last_used_at = now
    return row
