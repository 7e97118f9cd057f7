"""OneRoster REST over the shared HTTP layer: 1.1 (OAuth 1.0a signing) and 1.2 (OAuth 2.0 client credentials).

Collections are read with ``limit``/``offset`` paging. A ``Link: rel="next"`` URL is followed verbatim;
without one, ``X-Total-Count`` says when to stop; a provider that sends neither is read until a short or
empty page. Deltas ask for ``filter=dateLastModified>'<since>'``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests
import requests.auth
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_AUTH_HEADER
from requests_oauthlib import OAuth1

from connectors.base import AuthError, RemoteRejected, UpstreamError
from connectors.http import HttpClient, parse_link_header
from connectors.oneroster.schemas import format_datetime

SCOPE_ROOT = "https://purl.imsglobal.org/spec/or/v1p2/scope/"
SCOPE_ROSTER_CORE = SCOPE_ROOT + "roster-core.readonly"
SCOPE_ROSTER = SCOPE_ROOT + "roster.readonly"  # core plus demographics
SCOPE_GRADEBOOK_READ = SCOPE_ROOT + "gradebook.readonly"
SCOPE_GRADEBOOK_WRITE = SCOPE_ROOT + "gradebook.createput"

SIGNATURE_METHODS = {"HMAC-SHA256": SIGNATURE_HMAC_SHA256, "HMAC-SHA1": SIGNATURE_HMAC_SHA1}

ENVELOPES = {
    "orgs": "orgs",
    "academicSessions": "academicSessions",
    "courses": "courses",
    "classes": "classes",
    "users": "users",
    "enrollments": "enrollments",
    "demographics": "demographics",
    "categories": "categories",
    "lineItems": "lineItems",
    "results": "results",
}


def scopes_for(*, demographics: bool, write_results: bool) -> str:
    """Return the space-separated 1.2 scopes a source needs (demographics only when granted)."""
    scopes = [SCOPE_ROSTER if demographics else SCOPE_ROSTER_CORE, SCOPE_GRADEBOOK_READ]
    if write_results:
        scopes.append(SCOPE_GRADEBOOK_WRITE)
    return " ".join(scopes)


def oauth1_signer(client_id: str, client_secret: str, method: str = "HMAC-SHA256") -> OAuth1:
    """Return a two-legged OAuth 1.0a signer (consumer key and secret, no token) for OneRoster 1.1."""
    return OAuth1(
        client_id,
        client_secret=client_secret,
        signature_method=SIGNATURE_METHODS[method],
        signature_type=SIGNATURE_TYPE_AUTH_HEADER,
    )


def delta_filter(since: datetime) -> str:
    """Return the OneRoster filter for objects changed after ``since``."""
    return f"dateLastModified>'{format_datetime(since)}'"


class ClientCredentials(requests.auth.AuthBase):
    """OAuth 2.0 client credentials (RFC 6749 §4.4): one bearer token, reused until it expires."""

    def __init__(
        self,
        http: HttpClient,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        leeway: float = 60.0,
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.scope = scope
        self.clock = clock
        self.leeway = leeway
        basic = base64.b64encode(f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode())
        self._basic = f"Basic {basic.decode()}"
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_fetched = 0

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        return r

    def token(self) -> str:
        """Return a valid access token, fetching a new one when none is cached or it is about to expire."""
        with self._lock:
            if self._token is None or self.clock() >= self._expires_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def refresh(self, failed: requests.PreparedRequest | None) -> bool:
        """Drop the token a refused request carried so the retry fetches a new one."""
        with self._lock:
            sent = failed.headers.get("Authorization") if failed is not None else None
            if self._token is not None and sent == f"Bearer {self._token}":
                self._token = None
        return True

    def _fetch(self) -> None:
        """:calls: POST {token_url} (grant_type=client_credentials)"""
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        try:
            response = self.http.request(
                "POST",
                self.token_url,
                data=data,
                retry=True,
                headers={"Authorization": self._basic, "Accept": "application/json"},
            )
        except (AuthError, RemoteRejected) as exc:
            raise AuthError(
                f"{self.http.source}: the token endpoint refused the client credentials: {exc}",
                source=self.http.source,
                status=exc.status,
            ) from None
        body = self.http.decode_json(response)
        token = body.get("access_token") if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise AuthError(
                f"{self.http.source}: the token endpoint answered without an access_token",
                source=self.http.source,
                status=response.status_code,
            )
        try:
            lifetime = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            lifetime = 3600.0
        self._token = token
        self._expires_at = self.clock() + max(0.0, lifetime - self.leeway)
        self.tokens_fetched += 1


class OneRosterClient:
    """Read OneRoster collections page by page and write gradebook results."""

    def __init__(
        self, http: HttpClient, *, version: str, rostering_url: str, gradebook_url: str, page_size: int = 100
    ) -> None:
        self.http = http
        self.version = version
        self.rostering_url = rostering_url.rstrip("/")
        self.gradebook_url = gradebook_url.rstrip("/")
        self.page_size = page_size

    # ------------------------------------------------------------------ paging

    def iter_pages(
        self, url: str, envelope: str, params: Mapping[str, str] | None = None
    ) -> Iterator[list[Any]]:
        """Yield each page of a collection as a list of raw objects."""
        limit = self.page_size
        offset = 0
        next_url: str | None = None
        while True:
            if next_url is None:
                response = self.http.request(
                    "GET", url, params={**(params or {}), "limit": limit, "offset": offset}
                )
            else:
                response = self.http.request("GET", next_url)
            items = self._envelope(response, envelope)
            yield items
            offset += len(items)
            if not items:
                return
            links = parse_link_header(response.headers.get("Link"))
            if links:
                nxt = links.get("next")
                if not nxt or nxt in (next_url, response.url):
                    return
                next_url = nxt
                continue
            total = _int(response.headers.get("X-Total-Count"))
            if total is not None:
                if offset >= total:
                    return
            elif len(items) < limit:
                return
            next_url = None

    def _envelope(self, response: requests.Response, envelope: str) -> list[Any]:
        body = self.http.decode_json(response)
        items = body.get(envelope) if isinstance(body, Mapping) else None
        if isinstance(items, list):
            return items
        if isinstance(body, Mapping):
            status = body.get("imsx_codeMajor") or _nested(body, "imsx_StatusInfo", "imsx_codeMajor")
            if status == "failure":
                raise UpstreamError(
                    f"{self.http.source}: {response.url}: the provider reported a failure: "
                    f"{_ims_description(body)}",
                    source=self.http.source,
                    status=response.status_code,
                )
        raise UpstreamError(
            f"{self.http.source}: {response.url}: expected a {envelope!r} list in the response",
            source=self.http.source,
            status=response.status_code,
        )

    def iter_collection(self, service: str, collection: str, since: datetime | None = None) -> Iterator[Any]:
        """Yield every object of a collection, or only those changed after ``since``."""
        root = self.gradebook_url if service == "gradebook" else self.rostering_url
        params = {"filter": delta_filter(since)} if since is not None else None
        for page in self.iter_pages(f"{root}/{collection}", ENVELOPES[collection], params):
            yield from page

    # ------------------------------------------------------------------ rostering

    def iter_orgs(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /orgs"""
        return self.iter_collection("rostering", "orgs", since)

    def iter_academic_sessions(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /academicSessions"""
        return self.iter_collection("rostering", "academicSessions", since)

    def iter_courses(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /courses"""
        return self.iter_collection("rostering", "courses", since)

    def iter_classes(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /classes"""
        return self.iter_collection("rostering", "classes", since)

    def iter_users(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /users"""
        return self.iter_collection("rostering", "users", since)

    def iter_enrollments(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /enrollments"""
        return self.iter_collection("rostering", "enrollments", since)

    def iter_demographics(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /demographics"""
        return self.iter_collection("rostering", "demographics", since)

    # ------------------------------------------------------------------ gradebook

    def iter_categories(self) -> Iterator[Any]:
        """:calls: GET /categories"""
        return self.iter_collection("gradebook", "categories")

    def iter_line_items(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /lineItems"""
        return self.iter_collection("gradebook", "lineItems", since)

    def iter_results(self, since: datetime | None = None) -> Iterator[Any]:
        """:calls: GET /results"""
        return self.iter_collection("gradebook", "results", since)

    def iter_student_results(self, class_id: str, student_id: str) -> Iterator[Any]:
        """:calls: GET /classes/{classSourcedId}/students/{studentSourcedId}/results"""
        cid, sid = quote(class_id, safe=""), quote(student_id, safe="")
        url = f"{self.gradebook_url}/classes/{cid}/students/{sid}/results"
        for page in self.iter_pages(url, "results"):
            yield from page

    def put_result(self, sourced_id: str, result: Mapping[str, Any]) -> requests.Response:
        """:calls: PUT /results/{sourcedId}"""
        return self.http.request(
            "PUT", f"{self.gradebook_url}/results/{quote(sourced_id, safe='')}", json={"result": dict(result)}
        )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None and value.strip() else None
    except ValueError:
        return None


def _nested(body: Mapping[str, Any], *keys: str) -> Any:
    node: Any = body
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _ims_description(body: Mapping[str, Any]) -> str:
    for path in (("imsx_description",), ("imsx_StatusInfo", "imsx_description"), ("imsx_CodeMinor",)):
        found = _nested(body, *path)
        if found:
            return str(found)[:300]
    return "no description"
