"""Platform registrations (keyed by issuer + client_id) and their cached key sets."""

from __future__ import annotations

import re
import secrets
import hashlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.lti.errors import LtiError
from plugin.store.models import Deployment, District, Platform, PlatformKeySet, RegistrationInvite

USER_AGENT = "Trailmark/0.1 LTI"


def find_platform(session: Session, issuer: str, client_id: str | None) -> Platform | None:
    """The registration for (issuer, client_id); with no client_id only an issuer with one registration matches."""
    query = select(Platform).where(Platform.issuer == issuer)
    if client_id:
        return session.scalars(query.where(Platform.client_id == client_id)).first()
    rows = list(session.scalars(query.limit(2)))
    return rows[0] if len(rows) == 1 else None


def has_deployment(session: Session, platform: Platform, deployment_id: str) -> bool:
    return session.scalars(
        select(Deployment.id).where(Deployment.platform_id == platform.id, Deployment.deployment_id == deployment_id)
    ).first() is not None


def add_platform(session: Session, district: District, *, issuer: str, client_id: str, deployment_ids: Iterable[str],
                 auth_login_url: str, auth_token_url: str, key_set_url: str, auth_audience: str | None = None,
                 name: str = "", product_family: str = "", registered_via: str = "manual",
                 registration: dict[str, Any] | None = None, now: datetime | None = None) -> Platform:
    """Create or update a registration and add its deployments (existing deployments are kept)."""
    now = now or datetime.now(UTC)
    platform = session.scalars(
        select(Platform).where(Platform.issuer == issuer, Platform.client_id == client_id)
    ).first()
    if platform is not None and platform.district_id != district.id:
        raise ValueError(f"issuer {issuer} with client_id {client_id} is already registered to another district")
    if platform is None:
        platform = Platform(district_id=district.id, issuer=issuer, client_id=client_id, created_at=now,
                            auth_login_url=auth_login_url, auth_token_url=auth_token_url, key_set_url=key_set_url)
        session.add(platform)
    platform.auth_login_url = auth_login_url
    platform.auth_token_url = auth_token_url
    platform.key_set_url = key_set_url
    platform.auth_audience = auth_audience
    platform.name = name or platform.name or issuer
    platform.product_family = product_family or platform.product_family
    platform.registered_via = registered_via
    platform.registration = registration or platform.registration or {}
    session.flush()
    known = set(session.scalars(select(Deployment.deployment_id).where(Deployment.platform_id == platform.id)))
    for dep in deployment_ids:
        if dep and dep not in known:
            session.add(Deployment(platform_id=platform.id, deployment_id=dep, created_at=now))
            known.add(dep)
    session.flush()
    return platform


def _hash_code(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def create_invite(session: Session, district: District, *, hours: int = 72, note: str = "",
                  now: datetime | None = None) -> str:
    """Create a one-time registration code; only its hash is stored."""
    now = now or datetime.now(UTC)
    code = secrets.token_urlsafe(24)
    session.add(RegistrationInvite(district_id=district.id, code_hash=_hash_code(code), note=note, created_at=now,
                                   expires_at=now + timedelta(hours=hours)))
    session.flush()
    return code


def find_invite(session: Session, code: str, now: datetime) -> RegistrationInvite | None:
    invite = session.scalars(
        select(RegistrationInvite).where(RegistrationInvite.code_hash == _hash_code(code))
    ).first()
    if invite is None or invite.used_at is not None or _aware(invite.expires_at) <= now:
        return None
    return invite


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- key sets

_MAX_AGE = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*(\d+)", re.I)


def cache_seconds(headers: Any, default: int, now: datetime) -> int:
    """How long a JWKS response may be cached, from Cache-Control or Expires (no-store → 0)."""
    control = headers.get("Cache-Control", "") or ""
    if "no-store" in control.lower() or "no-cache" in control.lower():
        return 0
    match = _MAX_AGE.search(control)
    if match:
        return min(int(match.group(1)), 86400)
    expires = headers.get("Expires")
    if expires:
        try:
            return max(0, min(int((parsedate_to_datetime(expires) - now).total_seconds()), 86400))
        except (TypeError, ValueError):
            return 0
    return default


def fetch_jwks(url: str, *, timeout: float, http: requests.Session | None = None) -> tuple[dict[str, Any], Any]:
    """GET a platform's JWKS; errors become LtiError with a reason."""
    try:
        resp = (http or requests).get(url, timeout=timeout, headers={"User-Agent": USER_AGENT,
                                                                     "Accept": "application/json"})
    except requests.RequestException as exc:
        raise LtiError("platform_keys_unreachable",
                       f"Could not fetch the platform's public keys from {url} ({type(exc).__name__}).",
                       status=502) from None
    if resp.status_code != 200:
        raise LtiError("platform_keys_unreachable",
                       f"The platform's key set URL {url} answered HTTP {resp.status_code}.", status=502)
    try:
        data = resp.json()
    except ValueError:
        raise LtiError("platform_keys_invalid", f"The platform's key set at {url} is not JSON.", status=502) from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise LtiError("platform_keys_invalid", f"The platform's key set at {url} has no 'keys' list.", status=502)
    return data, resp.headers


KeySetFetcher = Callable[[Platform], tuple[dict[str, Any], Any]]


class KeySetCache:
    """Platform JWKS cached in the database (shared by all workers), honouring HTTP cache headers.

    An unknown ``kid`` triggers one re-fetch (key rotation), at most once per ``refetch_floor`` per platform.
    """

    def __init__(self, fetcher: KeySetFetcher, *, default_seconds: int = 3600, refetch_floor: int = 10):
        self.fetcher = fetcher
        self.default_seconds = default_seconds
        self.refetch_floor = refetch_floor

    def _store(self, session: Session, platform: Platform, now: datetime) -> PlatformKeySet:
        jwks, headers = self.fetcher(platform)
        seconds = cache_seconds(headers, self.default_seconds, now)
        row = session.get(PlatformKeySet, platform.id)
        if row is None:
            row = PlatformKeySet(platform_id=platform.id, jwks=jwks, fetched_at=now, expires_at=now)
            session.add(row)
        row.jwks = jwks
        row.fetched_at = now
        row.expires_at = now + timedelta(seconds=seconds)
        session.flush()
        return row

    def get_key(self, session: Session, platform: Platform, kid: str, now: datetime) -> dict[str, Any]:
        """The JWK with this kid; raises LtiError('unknown_kid') after one re-fetch."""
        row = session.get(PlatformKeySet, platform.id)
        fetched = False
        if row is None or _aware(row.expires_at) <= now:
            row = self._store(session, platform, now)
            fetched = True
        key = _find(row.jwks, kid)
        if key is None and not fetched and (now - _aware(row.fetched_at)).total_seconds() >= self.refetch_floor:
            row = self._store(session, platform, now)
            key = _find(row.jwks, kid)
        if key is None:
            raise LtiError("unknown_kid", f"The id_token was signed with key {kid!r}, which the platform's key set "
                           "does not publish.", status=401)
        return key


def _find(jwks: dict[str, Any], kid: str) -> dict[str, Any] | None:
    for key in jwks.get("keys", []):
        if isinstance(key, dict) and key.get("kid") == kid:
            return key
    return None
