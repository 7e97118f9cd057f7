"""LTI Advantage service client: client-credentials tokens with a signed JWT assertion, NRPS and AGS calls.

The tool's private keys live in Trailmark's key store; this module only receives a ``signer`` that
turns a claims dict into a compact JWS (RS256, ``kid`` header). Access tokens are cached per scope
set until shortly before they expire; a 401 from a service fetches a new one once (through the
shared HTTP layer's auth-refresh hook).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import requests.auth

from connectors.base import AuthError, ConfigurationError, RemoteRejected
from connectors.http import HttpClient, parse_link_header
from connectors.lti.schemas import AccessToken, TokenResponseSchema

log = logging.getLogger(__name__)

Signer = Callable[[dict[str, Any]], str]
Clock = Callable[[], datetime]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_LINEITEM_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly"
SCOPE_RESULT_READONLY = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"

MEDIA_MEMBERSHIPS = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
MEDIA_LINEITEM = "application/vnd.ims.lis.v2.lineitem+json"
MEDIA_LINEITEMS = "application/vnd.ims.lis.v2.lineitemcontainer+json"
MEDIA_RESULTS = "application/vnd.ims.lis.v2.resultcontainer+json"
MEDIA_SCORE = "application/vnd.ims.lis.v1.score+json"

ASSERTION_LIFETIME = timedelta(minutes=5)
TOKEN_LEEWAY = timedelta(seconds=60)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """What the tool knows of one platform registration."""

    issuer: str
    client_id: str
    token_url: str
    audience: str | None = None  # the platform's auth_audience, when the token URL is not the audience

    def __post_init__(self) -> None:
        for key in ("issuer", "client_id", "token_url"):
            if not getattr(self, key):
                raise ConfigurationError(f"LTI platform settings need '{key}'")


def service_url(line_item: str, leaf: str) -> str:
    """Return ``{line_item}/{leaf}`` keeping the line item URL's query (Moodle puts ``type_id`` there)."""
    parts = urlsplit(line_item)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/") + "/" + leaf, parts.query, ""))


class TokenCache:
    """Fetch and cache access tokens per scope set; ``now`` is injectable so expiry is testable."""

    def __init__(self, platform: PlatformSettings, signer: Signer, http: HttpClient, *,
                 now: Clock = _utcnow, leeway: timedelta = TOKEN_LEEWAY) -> None:
        self.platform = platform
        self.signer = signer
        self.http = http
        self.now = now
        self.leeway = leeway
        self._tokens: dict[frozenset[str], tuple[str, datetime]] = {}
        self._lock = threading.Lock()

    def assertion_claims(self) -> dict[str, Any]:
        """Return the client assertion's claims: iss = sub = client_id, aud, iat, exp ≤ 5 min, unique jti."""
        issued = self.now()
        return {
            "iss": self.platform.client_id,
            "sub": self.platform.client_id,
            "aud": self.platform.audience or self.platform.token_url,
            "iat": int(issued.timestamp()),
            "exp": int((issued + ASSERTION_LIFETIME).timestamp()),
            "jti": str(uuid.uuid4()),
        }

    def get(self, scopes: Iterable[str]) -> str:
        """Return a token valid for ``scopes``, fetching one when none is cached or it is about to expire."""
        key = frozenset(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and self.now() < cached[1] - self.leeway:
                return cached[0]
            token = self._fetch(key)
            self._tokens[key] = (token.access_token, self.now() + timedelta(seconds=token.expires_in))
            return token.access_token

    def invalidate(self, scopes: Iterable[str], token: str | None = None) -> None:
        """Forget the cached token for ``scopes`` (only if it is still ``token``, when given)."""
        key = frozenset(scopes)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and (token is None or cached[0] == token):
                del self._tokens[key]

    def _fetch(self, scopes: frozenset[str]) -> AccessToken:
        """Ask the platform's token endpoint for a token.

        :calls: POST {token_url}
        """
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.signer(self.assertion_claims()),
            "scope": " ".join(sorted(scopes)),
        }
        try:
            response = self.http.request("POST", self.platform.token_url, data=form, retry=True,
                                         headers={"Accept": "application/json"})
        except RemoteRejected as exc:  # 400 invalid_client / invalid_scope / invalid_grant
            raise AuthError(
                f"{exc} — check the tool's client_id and public key (JWKS URL) on the platform, and that "
                "the services behind these scopes are enabled for the tool: "
                f"{' '.join(sorted(scopes))}",
                source=self.http.source, status=exc.status,
            ) from exc
        body = self.http.decode_json(response)
        try:
            token: AccessToken = TokenResponseSchema().load(body)
        except Exception as exc:  # noqa: BLE001 - any shape error means no usable token
            raise AuthError(f"{self.http.source}: the token endpoint returned no access token",
                            source=self.http.source) from exc
        if token.token_type.lower() != "bearer":
            raise AuthError(f"{self.http.source}: unsupported token type {token.token_type!r}",
                            source=self.http.source)
        log.debug("%s: new access token for %d scope(s), expires in %ss", self.http.source, len(scopes),
                  token.expires_in)
        return token


class ScopedBearerAuth(requests.auth.AuthBase):
    """Send the cached token for one scope set; on 401 drop it and fetch a fresh one."""

    def __init__(self, tokens: TokenCache, scopes: Iterable[str]) -> None:
        self.tokens = tokens
        self.scopes = frozenset(scopes)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.tokens.get(self.scopes)}"
        return r

    def refresh(self, failed: requests.PreparedRequest | None) -> bool:
        """Invalidate the refused token; the HTTP layer then resends once with a new one."""
        sent = str(failed.headers.get("Authorization", "")) if failed is not None else ""
        self.tokens.invalidate(self.scopes, sent.removeprefix("Bearer ") or None)
        return True


class LtiServiceClient:
    """NRPS and AGS requests for one platform, each carrying a token for exactly the scopes it needs."""

    def __init__(
        self,
        name: str,
        platform: PlatformSettings,
        signer: Signer,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 5,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        now: Clock = _utcnow,
    ) -> None:
        self.source = name
        self.session = session or requests.Session()
        self._options: dict[str, Any] = {"source": name, "session": self.session, "sleep": sleep,
                                         "max_retries": max_retries, "timeout": timeout}
        self.tokens = TokenCache(platform, signer, HttpClient("", **self._options), now=now)
        self._clients: dict[frozenset[str], HttpClient] = {}

    @property
    def requests_made(self) -> int:
        """Requests sent so far, token requests included."""
        return self.tokens.http.requests_made + sum(c.requests_made for c in self._clients.values())

    def http(self, *scopes: str) -> HttpClient:
        """Return the HTTP client that authenticates with a token for ``scopes``."""
        key = frozenset(scopes)
        if key not in self._clients:
            self._clients[key] = HttpClient("", auth=ScopedBearerAuth(self.tokens, key), **self._options)
        return self._clients[key]

    def iter_pages(self, http: HttpClient, url: str, *, accept: str,
                   params: Mapping[str, Any] | None = None) -> Iterator[requests.Response]:
        """Yield each page, following ``Link: rel="next"`` URLs verbatim; only the first carries params."""
        response = http.request("GET", url, params=dict(params) if params else None,
                                headers={"Accept": accept})
        while True:
            yield response
            nxt = parse_link_header(response.headers.get("Link")).get("next")
            if not nxt or nxt == response.url:
                return
            response = http.request("GET", nxt, headers={"Accept": accept})

    # ------------------------------------------------------------------ NRPS

    def iter_memberships(self, url: str, *, role: str | None = None,
                         limit: int | None = None) -> Iterator[requests.Response]:
        """Yield membership container pages.

        :calls: GET {context_memberships_url}
        """
        params = {k: v for k, v in (("role", role), ("limit", limit)) if v is not None}
        return self.iter_pages(self.http(SCOPE_NRPS), url, accept=MEDIA_MEMBERSHIPS, params=params)

    def iter_membership_differences(self, url: str) -> Iterator[requests.Response]:
        """Yield pages of membership changes since the poll that returned ``url``.

        :calls: GET {differences link}
        """
        return self.iter_pages(self.http(SCOPE_NRPS), url, accept=MEDIA_MEMBERSHIPS)

    # ------------------------------------------------------------------ AGS

    def iter_line_items(self, url: str, *, resource_id: str | None = None, tag: str | None = None,
                        resource_link_id: str | None = None,
                        limit: int | None = None) -> Iterator[requests.Response]:
        """Yield line item container pages, optionally filtered.

        :calls: GET {lineitems}
        """
        pairs = (("resource_id", resource_id), ("tag", tag), ("resource_link_id", resource_link_id),
                 ("limit", limit))
        params = {k: v for k, v in pairs if v is not None}
        return self.iter_pages(self.http(SCOPE_LINEITEM), url, accept=MEDIA_LINEITEMS, params=params)

    def create_line_item(self, url: str, line_item: Mapping[str, Any]) -> Any:
        """Create a line item and return the platform's copy (with its ``id``).

        Not retried: a repeat could create a second column. Callers find before they create.

        :calls: POST {lineitems}
        """
        http = self.http(SCOPE_LINEITEM)
        response = http.request("POST", url, json=dict(line_item), retry=False,
                                headers={"Content-Type": MEDIA_LINEITEM, "Accept": MEDIA_LINEITEM})
        return http.decode_json(response)

    def post_score(self, line_item: str, score: Mapping[str, Any]) -> requests.Response:
        """Publish a score; safe to repeat since the platform keeps only the latest timestamp.

        :calls: POST {lineitem}/scores
        """
        http = self.http(SCOPE_SCORE)
        return http.request("POST", service_url(line_item, "scores"), json=dict(score), retry=True,
                            headers={"Content-Type": MEDIA_SCORE})

    def iter_results(self, line_item: str, *, user_id: str | None = None,
                     limit: int | None = None) -> Iterator[requests.Response]:
        """Yield result container pages of one line item.

        :calls: GET {lineitem}/results
        """
        params = {k: v for k, v in (("user_id", user_id), ("limit", limit)) if v is not None}
        return self.iter_pages(self.http(SCOPE_RESULT_READONLY), service_url(line_item, "results"),
                               accept=MEDIA_RESULTS, params=params)
