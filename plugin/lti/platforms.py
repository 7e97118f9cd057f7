"""Platform registrations (keyed by issuer + client_id) and their cached key sets."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from jwt import PyJWTError
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
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


@dataclass(frozen=True, slots=True)
class Registration:
    """A platform registration as a login or launch reads it: a plain row, not an ORM object."""

    id: int
    district_id: int
    issuer: str
    client_id: str
    auth_login_url: str
    key_set_url: str
    product_family: str
    registered_via: str


_KNOWN_DEPLOYMENT = (select(Deployment.id).where(Deployment.platform_id == Platform.id,
                                                 Deployment.deployment_id == bindparam("deployment_id"))
                     .exists().label("known_deployment"))
_REGISTRATION_COLUMNS = (Platform.id, Platform.district_id, Platform.issuer, Platform.client_id,
                         Platform.auth_login_url, Platform.key_set_url, Platform.product_family,
                         Platform.registered_via, _KNOWN_DEPLOYMENT)
_REGISTRATION_BY_CLIENT = select(*_REGISTRATION_COLUMNS).where(
    Platform.issuer == bindparam("issuer"), Platform.client_id == bindparam("client_id"))
_REGISTRATION_BY_ISSUER = select(*_REGISTRATION_COLUMNS).where(Platform.issuer == bindparam("issuer")).limit(2)
_HAS_DEPLOYMENT = select(Deployment.id).where(Deployment.platform_id == bindparam("platform_id"),
                                              Deployment.deployment_id == bindparam("deployment_id")).limit(1)


REGISTRATION_SECONDS = 60  # a change to a registration reaches launches within this time when Redis is used
_NOT_READ: Any = object()


def registration_key(issuer: str, client_id: str | None, deployment_id: str | None) -> str:
    """The shared-cache key of one registration look-up."""
    ident = json.dumps([issuer, client_id, deployment_id]).encode()
    return f"registration:{hashlib.sha256(ident).hexdigest()[:40]}"


def _decode_registration(raw: bytes | None) -> tuple[Registration, bool] | None:
    if raw is None:
        return None
    try:
        *fields, known = json.loads(raw)
        return Registration(*fields), bool(known)
    except (ValueError, TypeError):
        return None


def find_registration(session: Session, issuer: str, client_id: str | None, deployment_id: str | None, *,
                      cache: Any = None, cached: Any = _NOT_READ) -> tuple[Registration | None, bool]:
    """Like ``find_platform``, and whether that platform has ``deployment_id``, in one prepared column query.

    With a shared ``cache`` (Redis) a registration found, with its deployment, is kept there for
    ``REGISTRATION_SECONDS``; ``cached`` is its value when the caller already read it. Unknown issuers, client ids
    and deployments are never cached, so a new registration or deployment works at once.
    """
    key = registration_key(issuer, client_id, deployment_id) if cache is not None else ""
    if cache is not None:
        hit = _decode_registration(cache.get(key) if cached is _NOT_READ else cached)
        if hit is not None:
            return hit
    params = {"issuer": issuer, "client_id": client_id, "deployment_id": deployment_id}
    rows = session.connection().execute(_REGISTRATION_BY_CLIENT if client_id else _REGISTRATION_BY_ISSUER,
                                        params).all()
    if len(rows) != 1:
        return None, False
    *fields, known_deployment = rows[0]
    known = bool(known_deployment) and deployment_id is not None
    if cache is not None and (known or deployment_id is None):
        cache.set(key, json.dumps([*fields, known]), REGISTRATION_SECONDS)
    return Registration(*fields), known


def has_deployment(session: Session, platform: Platform | Registration, deployment_id: str) -> bool:
    params = {"platform_id": platform.id, "deployment_id": deployment_id}
    return session.connection().execute(_HAS_DEPLOYMENT, params).first() is not None


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


AnyPlatform = Platform | Registration  # the ORM row, or the plain row a launch reads
KeySetFetcher = Callable[[AnyPlatform], tuple[dict[str, Any], Any]]

MEMORY_SECONDS = 60  # a worker re-reads a platform's key set from Redis or the database at least this often
MEMORY_LIMIT = 2048


@dataclass
class _Remembered:
    """A platform's key set as this process last read it, with the keys it has parsed so far."""

    key_set_url: str
    jwks: dict[str, Any]
    fetched_at: datetime
    expires_at: datetime  # the cache lifetime the platform allowed, capped at MEMORY_SECONDS from reading
    parsed: dict[str, Any] = field(default_factory=dict)


class KeySetCache:
    """Platform JWKS cached in the database (shared by all workers), honouring HTTP cache headers.

    An unknown ``kid`` triggers one re-fetch (key rotation), at most once per ``refetch_floor`` per platform.
    In front of the database sit two optional layers that only ever answer hits: ``memory`` (a dict kept by
    the app, holding parsed public keys per (platform, kid), each entry living no longer than the platform
    allowed nor ``MEMORY_SECONDS``) and ``shared`` (Redis). Misses, expiry and unknown kids go to the
    database.
    """

    def __init__(self, fetcher: KeySetFetcher, *, default_seconds: int = 3600, refetch_floor: int = 10,
                 memory: dict[int, _Remembered] | None = None, shared: Any = None):
        self.fetcher = fetcher
        self.default_seconds = default_seconds
        self.refetch_floor = refetch_floor
        self.memory = memory
        self.shared = shared if shared is not None and getattr(shared, "enabled", False) else None

    def _store(self, session: Session, platform: AnyPlatform, now: datetime) -> PlatformKeySet:
        jwks, headers = self.fetcher(platform)
        seconds = cache_seconds(headers, self.default_seconds, now)
        row = session.get(PlatformKeySet, platform.id)
        if row is None:
            try:
                with session.begin_nested():  # another worker may be storing the same platform's first fetch
                    row = PlatformKeySet(platform_id=platform.id, jwks=jwks, fetched_at=now,
                                         expires_at=now + timedelta(seconds=seconds))
                    session.add(row)
                    session.flush()
                return row
            except IntegrityError:
                row = session.get(PlatformKeySet, platform.id)
                if row is None:
                    raise
        row.jwks = jwks
        row.fetched_at = now
        row.expires_at = now + timedelta(seconds=seconds)
        session.flush()
        return row

    def _from_database(self, session: Session, platform: AnyPlatform, kid: str, now: datetime) -> PlatformKeySet:
        row = session.get(PlatformKeySet, platform.id)
        fetched = False
        if row is None or _aware(row.expires_at) <= now:
            row = self._store(session, platform, now)
            fetched = True
        key = _find(row.jwks, kid)
        age = (now - _aware(row.fetched_at)).total_seconds()
        if key is None and not fetched and age >= self.refetch_floor:
            row = self._store(session, platform, now)
        return row

    def get_key(self, session: Session, platform: AnyPlatform, kid: str, now: datetime) -> dict[str, Any]:
        """The JWK with this kid; raises LtiError('unknown_kid') after one re-fetch."""
        return self._lookup(session, platform, kid, now)[0]

    def get_public_key(self, session: Session, platform: AnyPlatform, kid: str, now: datetime) -> Any:
        """The parsed RS256 public key for this kid (parsed once per process and key set)."""
        jwk, remembered = self._lookup(session, platform, kid, now)
        if remembered is not None and kid in remembered.parsed:
            return remembered.parsed[kid]
        if jwk.get("alg") not in (None, "RS256") or jwk.get("kty") != "RSA":
            raise LtiError("bad_alg", "The platform key for this kid is not an RS256 RSA key.", status=401)
        try:
            public_key = RSAAlgorithm.from_jwk(jwk)
        except (ValueError, TypeError, KeyError, PyJWTError):
            raise LtiError("platform_keys_invalid", "The platform published a key Trailmark cannot read.",
                           status=502) from None
        if remembered is not None:
            remembered.parsed[kid] = public_key
        return public_key

    def _lookup(self, session: Session, platform: AnyPlatform, kid: str,
                now: datetime) -> tuple[dict[str, Any], _Remembered | None]:
        remembered = self.memory.get(platform.id) if self.memory is not None else None
        if (remembered is not None and remembered.key_set_url == platform.key_set_url
                and remembered.expires_at > now):
            key = _find(remembered.jwks, kid)
            if key is not None:
                return key, remembered
        shared_key = f"jwks:{platform.id}:{hashlib.sha256(platform.key_set_url.encode()).hexdigest()[:16]}"
        if self.shared is not None:
            cached = _decode_shared(self.shared.get(shared_key))
            if cached is not None and cached[2] > now and _find(cached[0], kid) is not None:
                remembered = self._remember(platform, *cached, now)
                return _find(cached[0], kid) or {}, remembered
        row = self._from_database(session, platform, kid, now)
        jwks, fetched_at, expires_at = row.jwks, _aware(row.fetched_at), _aware(row.expires_at)
        key = _find(jwks, kid)
        if key is None:
            raise LtiError("unknown_kid", f"The id_token was signed with key {kid!r}, which the platform's "
                           "key set does not publish.", status=401)
        if self.shared is not None and expires_at > now:
            entry = {"jwks": jwks, "fetched_at": fetched_at.isoformat(),
                     "expires_at": expires_at.isoformat()}
            self.shared.set(shared_key, json.dumps(entry), int((expires_at - now).total_seconds()))
        return key, self._remember(platform, jwks, fetched_at, expires_at, now)

    def _remember(self, platform: AnyPlatform, jwks: dict[str, Any], fetched_at: datetime, expires_at: datetime,
                  now: datetime) -> _Remembered | None:
        if self.memory is None or expires_at <= now:
            return None
        if len(self.memory) >= MEMORY_LIMIT:
            self.memory.clear()
        old = self.memory.get(platform.id)
        entry = _Remembered(platform.key_set_url, jwks, fetched_at,
                            min(expires_at, now + timedelta(seconds=MEMORY_SECONDS)))
        if old is not None and old.jwks == jwks and old.key_set_url == platform.key_set_url:
            entry.parsed = old.parsed
        self.memory[platform.id] = entry
        return entry


def _decode_shared(raw: bytes | None) -> tuple[dict[str, Any], datetime, datetime] | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        jwks = data["jwks"]
        if not isinstance(jwks, dict):
            return None
        return jwks, datetime.fromisoformat(data["fetched_at"]), datetime.fromisoformat(data["expires_at"])
    except (ValueError, KeyError, TypeError):
        return None


def _find(jwks: dict[str, Any], kid: str) -> dict[str, Any] | None:
    for key in jwks.get("keys", []):
        if isinstance(key, dict) and key.get("kid") == kid:
            return key
    return None
