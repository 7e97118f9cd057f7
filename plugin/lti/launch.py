"""OIDC login initiation and id_token launch validation: every check a tool must make, in named steps.

pylti1p3 contributes its message-type validators; the security checks it leaves out or keeps in the cookie session
(durable single-use nonces, state bound to the browser or to platform storage, RS256 only, aud/azp, clock leeway,
cached key sets with one re-fetch on an unknown kid, timeouts) are made here.

Where login states live. With Redis configured (``cache``), a login's state and nonce are one Redis key that
expires with the login, and a launch uses it up with one server-side script that deletes the key, marks the
nonce as used and writes the launch's session only if its own DEL took the key: whichever worker deletes the key
wins, a replay finds the key gone (and the nonce marked). Without Redis,
or when Redis does not answer at login, the state is a ``login_state`` row and its nonce is used up by a unique
``used_nonce`` insert, in the launch's transaction. A state is kept in exactly one of the two places, and the
launch looks in Redis first, then in the database. A Redis that later loses its keys (restart, eviction) makes
launches in flight fail with ``state_unknown``, never succeed twice; a state restored from an old snapshot is
still tied to the browser's state cookie and dies with its TTL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import jwt
from pylti1p3.exception import LtiException
from pylti1p3.message_validators import get_validators
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from plugin.cache import Cache
from plugin.lti.errors import LtiError
from plugin.lti.platforms import (
    KeySetCache,
    Registration,
    _aware,
    find_registration,
    has_deployment,
    registration_key,
)
from plugin.lti.roles import view_for_roles
from plugin.store.models import LoginState, Platform, UsedNonce

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
DL = "https://purl.imsglobal.org/spec/lti-dl/claim/"
AGS = "https://purl.imsglobal.org/spec/lti-ags/claim/"
NRPS = "https://purl.imsglobal.org/spec/lti-nrps/claim/"

RESOURCE_LINK = "LtiResourceLinkRequest"
DEEP_LINKING = "LtiDeepLinkingRequest"
SUPPORTED_MESSAGES = (RESOURCE_LINK, DEEP_LINKING)
MAX_PARAM = 4096
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "nonce")
MAX_TOKEN = 64 * 1024
CLEANUP_ONE_IN = 64  # one request in this many also deletes expired login states or used nonces
_B64URL = re.compile(r"[A-Za-z0-9_-]*")

# Statements of the launch's hot path, built once (parameters bound at execution).
_LOGIN_TABLE, _NONCE_TABLE = LoginState.__table__, UsedNonce.__table__
_LOGIN_STATE = select(*_LOGIN_TABLE.columns).where(_LOGIN_TABLE.c.state == bindparam("state"))
_DELETE_LOGIN_STATE = delete(_LOGIN_TABLE).where(_LOGIN_TABLE.c.state == bindparam("state"))
_USE_NONCE = {  # the single-use insert: no row inserted means the nonce was used before
    name: insert(_NONCE_TABLE).on_conflict_do_nothing(index_elements=["nonce"])
    .execution_options(preserve_rowcount=True)
    for name, insert in (("sqlite", sqlite_insert), ("postgresql", postgresql_insert))
}


# --------------------------------------------------------------------------- login


@dataclass(frozen=True)
class LoginRequest:
    iss: str
    login_hint: str
    target_link_uri: str
    lti_message_hint: str | None = None
    lti_deployment_id: str | None = None
    client_id: str | None = None
    lti_storage_target: str | None = None


def _param(params: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise LtiError("missing_login_param", f"The login request has no '{name}'. Start the launch from the "
                           "LMS course page; if it keeps failing, the tool's registration is incomplete.")
        return None
    if not isinstance(value, str) or len(value) > MAX_PARAM:
        raise LtiError("bad_login_param", f"The login parameter '{name}' is malformed.")
    return value


def parse_login(params: Mapping[str, Any]) -> LoginRequest:
    """Read the third-party initiated login parameters (GET query or POST form)."""
    return LoginRequest(
        iss=_param(params, "iss", required=True) or "",
        login_hint=_param(params, "login_hint", required=True) or "",
        target_link_uri=_param(params, "target_link_uri", required=True) or "",
        lti_message_hint=_param(params, "lti_message_hint"),
        lti_deployment_id=_param(params, "lti_deployment_id"),
        client_id=_param(params, "client_id"),
        lti_storage_target=_param(params, "lti_storage_target"),
    )


def _same_origin(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _login_key(state: str) -> str:
    return f"login:{hashlib.sha256(state.encode()).hexdigest()[:40]}"


@dataclass(frozen=True, slots=True)
class Login:
    """One OIDC login in flight (a ``login_state`` row, or a Redis key): state and nonce, bound to a platform."""

    state: str
    nonce: str
    platform_id: int
    target_link_uri: str
    storage: str  # cookie | platform
    created_at: datetime
    expires_at: datetime


def _encode_login(login: Login) -> bytes:
    return json.dumps([login.nonce, login.platform_id, login.target_link_uri, login.storage,
                       login.created_at.timestamp(), login.expires_at.timestamp()], separators=(",", ":")).encode()


def _decode_login(state: str, raw: bytes | None) -> Login | None:
    if raw is None:
        return None
    try:
        nonce, platform_id, target, storage, created, expires = json.loads(raw)
        return Login(state, nonce, platform_id, target, storage, datetime.fromtimestamp(created, UTC),
                     datetime.fromtimestamp(expires, UTC))
    except (ValueError, TypeError):
        return None


def begin_login(session: Session, req: LoginRequest, *, base_url: str, launch_url: str, now: datetime,
                state_minutes: int = 10, cache: Cache | None = None) -> tuple[Login, Registration, str]:
    """Check the login against our registrations, issue state and nonce, and build the platform auth URL.

    The state goes to ``cache`` (Redis) when given and answering, otherwise to the database.
    """
    platform, known_deployment = find_registration(session, req.iss, req.client_id, req.lti_deployment_id,
                                                   cache=cache)
    if platform is None:
        detail = f"issuer {req.iss!r}" + (f" and client_id {req.client_id!r}" if req.client_id else "")
        hint = "" if req.client_id else " This issuer has several registrations, so the LMS must send client_id."
        raise LtiError("unknown_platform", f"Trailmark has no registration for {detail}.{hint} District IT can "
                       "register the platform with Dynamic Registration or `trailmark platform add`.", status=400)
    if req.lti_deployment_id and not known_deployment:
        raise LtiError("unknown_deployment", f"Deployment {req.lti_deployment_id!r} is not registered for this "
                       "platform. Add it with `trailmark platform add … --deployment-id`.", status=403)
    if not _same_origin(req.target_link_uri, base_url):
        raise LtiError("bad_target_link_uri", "The target_link_uri does not point at this Trailmark "
                       f"({base_url}). Check the tool's launch URL in the LMS.")
    state = Login(
        state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32), platform_id=platform.id,
        target_link_uri=req.target_link_uri, storage="platform" if req.lti_storage_target else "cookie",
        created_at=now, expires_at=now + timedelta(minutes=state_minutes),
    )
    if cache is None or not cache.set(_login_key(state.state), _encode_login(state), state_minutes * 60):
        if secrets.randbelow(CLEANUP_ONE_IN) == 0:  # expired states are refused anyway; sweep them now and then
            session.execute(delete(LoginState).where(LoginState.expires_at < now))
        session.execute(_LOGIN_TABLE.insert(), {c.key: getattr(state, c.key) for c in _LOGIN_TABLE.columns})
    params = {
        "scope": "openid", "response_type": "id_token", "response_mode": "form_post", "prompt": "none",
        "client_id": platform.client_id, "redirect_uri": launch_url, "login_hint": req.login_hint,
        "state": state.state, "nonce": state.nonce,
    }
    if req.lti_message_hint:
        params["lti_message_hint"] = req.lti_message_hint
    sep = "&" if "?" in platform.auth_login_url else "?"
    return state, platform, f"{platform.auth_login_url}{sep}{urlencode(params)}"


# --------------------------------------------------------------------------- launch


@dataclass(frozen=True)
class LaunchContext:
    """Everything the rest of Trailmark may know about a launch; nobody else sees raw claims."""

    platform_id: int
    district_id: int
    issuer: str
    client_id: str
    deployment_id: str
    message_type: str
    user_sub: str
    roles: tuple[str, ...]
    view: str
    target_link_uri: str
    context_id: str | None = None
    context_title: str | None = None
    context_label: str | None = None
    resource_link_id: str | None = None
    resource_link_title: str | None = None
    name: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    person_sourcedid: str | None = None
    course_sourcedid: str | None = None
    mentee_subs: tuple[str, ...] = ()
    nrps_url: str | None = None
    ags_lineitems_url: str | None = None
    ags_lineitem_url: str | None = None
    ags_scopes: tuple[str, ...] = ()
    deep_link_return_url: str | None = None
    deep_link_data: str | None = None
    deep_link_accept_multiple: bool = True
    deep_link_accept_lineitem: bool = True
    custom: Mapping[str, str] = field(default_factory=dict)
    return_url: str | None = None
    platform_family: str | None = None
    document_target: str | None = None

    @property
    def is_deep_linking(self) -> bool:
        return self.message_type == DEEP_LINKING


class NeedsPlatformStorage(Exception):
    """The login stored its state in LTI platform storage; the browser must read it back before we continue."""

    def __init__(self, state: str, platform: Registration):
        super().__init__(state)
        self.state = state
        self.platform = platform


@dataclass(frozen=True)
class LaunchSettings:
    base_url: str
    leeway: int = 60
    max_token_age: int = 3900


def _str_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and value else None


def _dict_claim(claims: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = claims.get(name)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class PendingUse:
    """A login kept in Redis that passed every check but is not used up yet (``use_login`` or ``create_session``)."""

    state_key: str
    nonce_key: str
    nonce_seconds: int

    def refused(self, taken: bool | None) -> LtiError | None:
        """The error for the outcome of taking the state: None when this launch took it."""
        if taken is None:
            return LtiError("state_unavailable", "Trailmark could not finish this launch because its launch store "
                            "(Redis) stopped answering. Launch again from the LMS.", status=503)
        return None if taken else _replayed()


def validate_launch(session: Session, form: Mapping[str, Any], *, cookies: Mapping[str, str],
                    key_cache: KeySetCache, settings: LaunchSettings, now: datetime,
                    cache: Cache | None = None) -> LaunchContext:
    """Validate a launch POST step by step and use up its login; raise LtiError naming the first failed check."""
    checked = check_launch(session, form, cookies=cookies, key_cache=key_cache, settings=settings, now=now,
                           cache=cache)
    if checked.pending is not None and cache is not None:
        use_login(cache, checked.pending)
    return checked.context


def use_login(cache: Cache, pending: PendingUse) -> None:
    """Use up a login kept in Redis: one worker's DEL wins, a concurrent replay is refused."""
    error = pending.refused(cache.take(pending.state_key, mark=(pending.nonce_key, pending.nonce_seconds)))
    if error is not None:
        raise error


@dataclass(frozen=True, slots=True)
class CheckedLaunch:
    """A launch that passed every check: what it says, its login still to use up, and what Redis knew of its user."""

    context: LaunchContext
    pending: PendingUse | None
    launcher: tuple[str, bytes | None] | None = None  # (launcher_key, what Redis held under it), for provision()


def launcher_key(issuer: str, client_id: str, sub: str, context_id: str | None, view: str) -> str:
    """The shared-cache key of a returning launcher's person and class ids (see ``provision``)."""
    ident = json.dumps([issuer, client_id, sub, context_id, view]).encode()
    return f"launcher:{hashlib.sha256(ident).hexdigest()[:40]}"


def check_launch(session: Session, form: Mapping[str, Any], *, cookies: Mapping[str, str],
                 key_cache: KeySetCache, settings: LaunchSettings, now: datetime,
                 cache: Cache | None = None) -> CheckedLaunch:
    """Make every check of a launch POST; raise LtiError naming the first check that failed.

    ``cache`` (Redis) holds the login states issued while it answered and marks used nonces. A login kept in the
    database is used up here, in the request's transaction; one kept in Redis comes back as a ``PendingUse`` that
    the caller must use up before it answers (``use_login``, or ``create_session`` in the same round trip).
    Everything Redis may know about the launch (registration, login state, nonce mark, the launcher's ids) is
    read in one round trip, with keys taken from the unverified token; each value is used only by the check that
    would otherwise read the database, after the signature is verified.
    """
    id_token = form.get("id_token")
    state = form.get("state")
    if isinstance(form.get("error"), str):
        description = str(form.get("error_description") or "")[:300]
        raise LtiError("platform_error", f"The LMS refused the login: {form['error'][:100]} {description}".strip(),
                       status=400)
    if not isinstance(id_token, str) or not id_token:
        raise LtiError("missing_id_token", "The launch has no id_token. Start Trailmark from the LMS course page.")
    if len(id_token) > MAX_TOKEN:
        raise LtiError("malformed_id_token", "The id_token is too large to be a launch.")
    if not isinstance(state, str) or not state or len(state) > MAX_PARAM:
        raise LtiError("missing_state", "The launch has no state. Start Trailmark again from the LMS.")

    header, unverified = _read_unverified(id_token)
    iss, client_id, token_deployment = _audience(unverified)
    prefetched: dict[str, bytes | None] = {}
    keys: dict[str, str] = {}
    if cache is not None:
        keys = {"registration": registration_key(iss, client_id, token_deployment), "login": _login_key(state)}
        nonce, sub, roles = unverified.get("nonce"), unverified.get("sub"), unverified.get(LTI + "roles")
        if isinstance(nonce, str) and nonce:
            keys["nonce"] = _nonce_key(nonce)
        if isinstance(sub, str) and isinstance(roles, list) and all(isinstance(r, str) for r in roles):
            context_id = _str_claim(_dict_claim(unverified, LTI + "context"), "id")
            keys["launcher"] = launcher_key(iss, client_id, sub, context_id, view_for_roles(roles))
        prefetched = dict(zip(keys, cache.get_many(list(keys.values())), strict=True))
    platform, known_deployment = _registration(session, iss, client_id, token_deployment, cache, prefetched)
    claims = _verify(session, id_token, header, unverified, platform, key_cache, settings, now)
    login, in_cache = _check_nonce_and_state(session, claims, state, platform, now, settings, cache, prefetched)
    _check_browser_binding(login, state, form, cookies, platform)
    deployment_id = _check_deployment(session, claims, platform, known_deployment)
    context = _check_message(claims, platform, deployment_id, settings)
    pending = _consume(session, login, claims, platform, now, settings, cache, in_cache=in_cache)
    launcher = (keys["launcher"], prefetched["launcher"]) if "launcher" in prefetched else None
    return CheckedLaunch(context, pending, launcher)


def _b64(segment: str) -> bytes:
    """Decode one base64url segment (alphabet already checked); refuse non-canonical encodings."""
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("non-canonical base64url")
    return raw


def _b64json(segment: str) -> Any:
    return json.loads(_b64(segment))


def _read_unverified(id_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read header and claims before the signature is checked, only to find the registration and key."""
    parts = id_token.split(".")
    if len(parts) != 3 or not all(_B64URL.fullmatch(part) and len(part) % 4 != 1 for part in parts):
        raise LtiError("malformed_id_token", "The id_token is not a well-formed JWT.")
    try:
        header, unverified = _b64json(parts[0]), _b64json(parts[1])
    except (ValueError, binascii.Error):
        raise LtiError("malformed_id_token", "The id_token is not a well-formed JWT.") from None
    if not isinstance(header, dict):
        raise LtiError("malformed_id_token", "The id_token is not a well-formed JWT.")
    if not isinstance(unverified, dict):
        raise LtiError("malformed_id_token", "The id_token payload is not a JSON object.")
    alg = header.get("alg")
    if alg != "RS256":
        raise LtiError("bad_alg", f"The id_token is signed with {alg!r}; LTI requires RS256.", status=401)
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise LtiError("missing_kid", "The id_token header has no 'kid', so its signing key cannot be found.",
                       status=401)
    return header, unverified


def _audience(unverified: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """The issuer, the client id (``aud``, or ``azp`` among several) and the deployment the token names."""
    iss = unverified.get("iss")
    aud = unverified.get("aud")
    if not isinstance(iss, str) or not iss:
        raise LtiError("missing_claim", "The id_token has no 'iss' claim.", status=401)
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
    if not auds or not all(isinstance(a, str) for a in auds):
        raise LtiError("wrong_aud", "The id_token's 'aud' claim is missing or malformed.", status=401)
    azp = unverified.get("azp")
    if len(auds) > 1:
        if not isinstance(azp, str) or azp not in auds:
            raise LtiError("wrong_aud", "The id_token names several audiences but no matching 'azp'.", status=401)
        candidates = [azp]
    else:
        if isinstance(azp, str) and azp != auds[0]:
            raise LtiError("wrong_aud", "The id_token's 'azp' does not match its audience.", status=401)
        candidates = auds
    deployment_id = unverified.get(LTI + "deployment_id")
    deployment_id = deployment_id if isinstance(deployment_id, str) and len(deployment_id) <= MAX_PARAM else None
    return iss, candidates[0], deployment_id


def _registration(session: Session, iss: str, client_id: str, deployment_id: str | None, cache: Cache | None,
                  prefetched: Mapping[str, bytes | None]) -> tuple[Registration, tuple[str, bool] | None]:
    """The registration the token names, and whether it has the (unverified) deployment the token names."""
    platform, known = find_registration(session, iss, client_id, deployment_id, cache=cache,
                                        cached=prefetched.get("registration"))
    if platform is None:
        raise LtiError("unknown_platform", f"Trailmark has no registration for issuer {iss!r} with client_id "
                       f"{client_id!r}. District IT must register this LMS first.", status=401)
    return platform, (deployment_id, known) if deployment_id is not None else None


def _verify(session: Session, id_token: str, header: Mapping[str, Any], claims: dict[str, Any],
            platform: Registration, key_cache: KeySetCache, settings: LaunchSettings, now: datetime) -> dict[str, Any]:
    """Check the RS256 signature and the registered claims with PyJWT; return the verified claims.

    ``claims`` (read before the signature was checked, to find the registration) is never trusted: the claims
    returned are the ones PyJWT decoded from the signed token.
    """
    public_key = key_cache.get_public_key(session, platform, header["kid"], now)  # RS256 RSA keys only
    if "crit" in header or "b64" in header:
        raise LtiError("invalid_id_token", "The id_token uses a JWS extension ('crit', 'b64') that LTI does not "
                       "allow.", status=401)
    try:  # the same signature bytes spelt with spare bits set are not the token the platform signed
        _b64(id_token.rpartition(".")[2])
    except ValueError:
        raise LtiError("bad_signature", "The id_token signature is not in canonical base64url, so it is not the "
                       "token the platform signed.", status=401) from None
    try:
        verified: dict[str, Any] = jwt.decode(
            id_token, key=public_key, algorithms=["RS256"], audience=platform.client_id, issuer=platform.issuer,
            leeway=settings.leeway, options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError:
        raise LtiError("expired", "The id_token has expired. Launch again from the LMS; if it keeps happening, "
                       "check the server clock.", status=401) from None
    except jwt.ImmatureSignatureError:
        raise LtiError("issued_in_future", "The id_token was issued in the future; the LMS's clock or ours is "
                       "off by more than the allowed leeway.", status=401) from None
    except jwt.InvalidSignatureError:
        raise LtiError("bad_signature", "The id_token signature does not verify with the platform's key.",
                       status=401) from None
    except jwt.InvalidAudienceError:
        raise LtiError("wrong_aud", "The id_token is not addressed to this tool's client_id.", status=401) from None
    except jwt.InvalidIssuerError:
        raise LtiError("wrong_iss", "The id_token issuer does not match the registration.", status=401) from None
    except jwt.MissingRequiredClaimError as exc:
        raise LtiError("missing_claim", f"The id_token has no '{exc.claim}' claim.", status=401) from None
    except jwt.PyJWTError as exc:
        raise LtiError("invalid_id_token", f"The id_token is not valid: {exc}.", status=401) from None
    for name in ("iat", "exp", "nbf"):  # PyJWT accepts numeric strings and booleans here; LTI wants numbers
        value = verified.get(name, 0)
        if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
            raise LtiError("invalid_id_token", f"The id_token's '{name}' claim must be a number of seconds.",
                           status=401)
    iat = verified["iat"]
    if now.timestamp() - iat > settings.max_token_age + settings.leeway:
        raise LtiError("expired", "The id_token was issued too long ago. Launch again from the LMS.", status=401)
    return verified


def _nonce_kept_until(claims: Mapping[str, Any], now: datetime, settings: LaunchSettings) -> datetime:
    """How long a used nonce must be remembered: as long as its token could still be accepted."""
    exp = claims.get("exp")
    keep_until = datetime.fromtimestamp(float(exp), UTC) if isinstance(exp, int | float) else now
    return max(keep_until, now) + timedelta(seconds=settings.leeway + settings.max_token_age)


def _nonce_key(nonce: str) -> str:
    return f"nonce:{hashlib.sha256(nonce.encode()).hexdigest()[:40]}"


def _replayed() -> LtiError:
    return LtiError("nonce_replayed", "This launch was already used (its nonce was seen before). Launch again "
                    "from the LMS.", status=401)


def _check_nonce_and_state(session: Session, claims: Mapping[str, Any], state: str, platform: Registration,
                           now: datetime, settings: LaunchSettings, cache: Cache | None = None,
                           prefetched: Mapping[str, bytes | None] | None = None) -> tuple[Login, bool]:
    """The login this launch answers, and whether it is kept in the cache (else in the database)."""
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not nonce or len(nonce) > 128:
        raise LtiError("missing_claim", "The id_token has no usable 'nonce' claim.", status=401)
    login: Login | None = None
    if cache is not None:
        if prefetched is None or "nonce" not in prefetched:
            prefetched = dict(zip(("nonce", "login"), cache.get_many([_nonce_key(nonce), _login_key(state)]),
                                  strict=True))
        if prefetched["nonce"] is not None:
            raise _replayed()
        login = _decode_login(state, prefetched["login"])
    in_cache = login is not None
    if login is None:
        found = session.connection().execute(_LOGIN_STATE, {"state": state}).first()
        login = Login(**found._mapping) if found is not None else None
    if (login is None or _aware(login.expires_at) <= now or login.platform_id != platform.id
            or login.nonce != nonce):
        # Only a login state that is live, ours and issued with this very nonce passes. Its nonce is unique and
        # is used up in the same transaction that deletes the state, so on this path the nonce was never used
        # (a concurrent replay loses the insert in _consume); off it, say whether the nonce was seen before.
        if session.get(UsedNonce, nonce) is not None:
            raise _replayed()
    if login is None or _aware(login.expires_at) <= now:
        raise LtiError("state_unknown", "This launch does not belong to a login Trailmark started, or the login "
                       "took too long. Launch again from the LMS.", status=401)
    if login.platform_id != platform.id:
        raise LtiError("state_mismatch", "The launch's state belongs to a different platform.", status=401)
    if login.nonce != nonce:
        raise LtiError("nonce_mismatch", "The id_token's nonce is not the one Trailmark issued for this login.",
                       status=401)
    return login, in_cache


def _check_browser_binding(login: Login, state: str, form: Mapping[str, Any], cookies: Mapping[str, str],
                           platform: Registration) -> None:
    if login.storage == "platform":
        stored = form.get("lti_storage_state")
        if stored is None:
            if cookies.get(state_cookie_name(state)) == state:
                return
            raise NeedsPlatformStorage(state, platform)
        if stored != state:
            raise LtiError("state_mismatch", "The state kept in the LMS's platform storage does not match this "
                           "launch.", status=401)
        return
    if cookies.get(state_cookie_name(state)) != state:
        raise LtiError("state_mismatch", "Your browser did not send back the cookie that ties this launch to the "
                       "login (third-party cookies are probably blocked inside the LMS frame).", status=401,
                       hint="new_window")


def state_cookie_name(state: str) -> str:
    """One short-lived cookie per login, so many launches in one browser never collide."""
    return f"tm_state_{state[:16]}"


def _check_deployment(session: Session, claims: Mapping[str, Any], platform: Registration,
                      known: tuple[str, bool] | None = None) -> str:
    deployment_id = _str_claim(claims, LTI + "deployment_id")
    if deployment_id is None:
        raise LtiError("missing_claim", "The launch has no deployment_id claim.", status=400)
    exists = known[1] if known is not None and known[0] == deployment_id else has_deployment(
        session, platform, deployment_id)
    if not exists:
        raise LtiError("unknown_deployment", f"Deployment {deployment_id!r} of this LMS is not registered with "
                       "Trailmark. District IT can add it with `trailmark platform add … --deployment-id`.",
                       status=403)
    return deployment_id


def _check_message(claims: Mapping[str, Any], platform: Registration, deployment_id: str,
                   settings: LaunchSettings) -> LaunchContext:
    message_type = _str_claim(claims, LTI + "message_type")
    if message_type is None:
        raise LtiError("missing_claim", "The launch has no message_type claim.")
    if message_type not in SUPPORTED_MESSAGES:
        raise LtiError("unsupported_message_type", f"Trailmark does not handle {message_type!r} messages.")
    if claims.get(LTI + "version") != "1.3.0":
        raise LtiError("missing_claim", "The launch's LTI version claim must be 1.3.0.")
    target = _str_claim(claims, LTI + "target_link_uri")
    if target is None:
        raise LtiError("missing_claim", "The launch has no target_link_uri claim.")
    if not _same_origin(target, settings.base_url):
        raise LtiError("bad_target_link_uri", "The launch's target_link_uri does not point at this Trailmark.")
    sub = _str_claim(claims, "sub")
    if sub is None:
        raise LtiError("missing_claim", "The launch has no 'sub' (user) claim; anonymous launches are not "
                       "supported.")
    roles = claims.get(LTI + "roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise LtiError("missing_claim", "The launch has no roles claim.")
    resource_link = _dict_claim(claims, LTI + "resource_link")
    if message_type == RESOURCE_LINK and not _str_claim(resource_link, "id"):
        raise LtiError("missing_claim", "A resource link launch needs resource_link.id.")
    dl_settings = _dict_claim(claims, DL + "deep_linking_settings")
    if message_type == DEEP_LINKING and not _str_claim(dl_settings, "deep_link_return_url"):
        raise LtiError("missing_claim", "A deep linking launch needs deep_linking_settings.deep_link_return_url.")
    try:
        for validator in get_validators():
            if validator.can_validate(claims):
                validator.validate(claims)
    except LtiException as exc:
        raise LtiError("invalid_message", f"The launch message is invalid: {exc}.") from None

    context = _dict_claim(claims, LTI + "context")
    lis = _dict_claim(claims, LTI + "lis")
    ags = _dict_claim(claims, AGS + "endpoint")
    nrps = _dict_claim(claims, NRPS + "namesroleservice")
    custom = {str(k): str(v)[:1024] for k, v in _dict_claim(claims, LTI + "custom").items()}
    presentation = _dict_claim(claims, LTI + "launch_presentation")
    platform_info = _dict_claim(claims, LTI + "tool_platform")
    mentees = claims.get(LTI + "role_scope_mentor")
    mentee_subs = tuple(m for m in mentees if isinstance(m, str)) if isinstance(mentees, list) else ()
    scopes = ags.get("scope")
    return LaunchContext(
        platform_id=platform.id, district_id=platform.district_id, issuer=platform.issuer,
        client_id=platform.client_id, deployment_id=deployment_id, message_type=message_type, user_sub=sub,
        roles=tuple(roles), view=view_for_roles(roles), target_link_uri=target,
        context_id=_str_claim(context, "id"), context_title=_str_claim(context, "title"),
        context_label=_str_claim(context, "label"), resource_link_id=_str_claim(resource_link, "id"),
        resource_link_title=_str_claim(resource_link, "title"), name=_str_claim(claims, "name"),
        given_name=_str_claim(claims, "given_name"), family_name=_str_claim(claims, "family_name"),
        email=_str_claim(claims, "email"), person_sourcedid=_str_claim(lis, "person_sourcedid"),
        course_sourcedid=_str_claim(lis, "course_offering_sourcedid"), mentee_subs=mentee_subs,
        nrps_url=_str_claim(nrps, "context_memberships_url"), ags_lineitems_url=_str_claim(ags, "lineitems"),
        ags_lineitem_url=_str_claim(ags, "lineitem"),
        ags_scopes=tuple(s for s in scopes if isinstance(s, str)) if isinstance(scopes, list) else (),
        deep_link_return_url=_str_claim(dl_settings, "deep_link_return_url"),
        deep_link_data=_str_claim(dl_settings, "data"),
        deep_link_accept_multiple=dl_settings.get("accept_multiple") is not False,
        deep_link_accept_lineitem=dl_settings.get("accept_lineitem") is not False,
        custom=custom, return_url=_str_claim(presentation, "return_url"),
        platform_family=_str_claim(platform_info, "product_family_code") or platform.product_family or None,
        document_target=_str_claim(presentation, "document_target"),
    )


def _consume(session: Session, login: Login, claims: Mapping[str, Any], platform: Registration, now: datetime,
             settings: LaunchSettings, cache: Cache | None = None, *, in_cache: bool = False) -> PendingUse | None:
    """Use up the nonce and the state kept in the database; a concurrent replay loses the insert race.

    A login kept in Redis is returned as a ``PendingUse`` instead: its DEL decides the race.
    """
    keep_until = _nonce_kept_until(claims, now, settings)
    if in_cache and cache is not None:
        return PendingUse(_login_key(login.state), _nonce_key(login.nonce),
                          int((keep_until - now).total_seconds()) + 1)
    use_nonce = _USE_NONCE.get(session.get_bind().dialect.name)
    if use_nonce is not None:
        params = {"nonce": login.nonce, "platform_id": platform.id, "expires_at": keep_until}
        if session.execute(use_nonce, params).rowcount != 1:  # type: ignore[attr-defined]
            raise _replayed()
    else:
        try:
            with session.begin_nested():
                session.add(UsedNonce(nonce=login.nonce, platform_id=platform.id, expires_at=keep_until))
                session.flush()
        except IntegrityError:
            raise _replayed() from None
    if cache is not None:
        cache.set(_nonce_key(login.nonce), b"1", int((keep_until - now).total_seconds()) + 1)
    session.execute(_DELETE_LOGIN_STATE, {"state": login.state})
    if secrets.randbelow(CLEANUP_ONE_IN) == 0:
        session.execute(delete(UsedNonce).where(UsedNonce.expires_at < now - timedelta(days=1)))
    return None


def select_platform(session: Session, platform_id: int) -> Platform:
    platform = session.scalars(select(Platform).where(Platform.id == platform_id)).first()
    if platform is None:
        raise LtiError("unknown_platform", "The platform of this session no longer exists.", status=403)
    return platform
