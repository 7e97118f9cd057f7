"""The one HTTP layer every connector uses: session, timeouts, typed errors, retries, Link paging, redaction.

Retries run on tenacity (stop/wait/retry predicates, injectable sleep) rather than urllib3's ``Retry``,
which cannot read a 403 body to tell Canvas's throttle from a permission error nor raise our typed errors.

A district pull is thousands of small requests from a few threads sharing one interpreter lock, so the
per-request work is kept lean: while the session carries nothing per request (no cookies, parameters,
session auth or hooks) a request is prepared directly (an opaque next-page URL is not parsed at all) and
handed to the mounted adapter, with the session's cookie, redirect and body handling repeated only where
a response needs it; otherwise the session's own ``prepare_request``/``send`` are used. ``max_in_flight``
caps the requests one client has on the wire at once, whatever the number of threads using it.
"""

from __future__ import annotations

import email.utils
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import requests.auth
import tenacity
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar
from requests.sessions import merge_setting, preferred_clock
from requests.structures import CaseInsensitiveDict
from requests.utils import get_netrc_auth, requote_uri

from connectors.base import (
    AuthError,
    ConfigurationError,
    ConnectorError,
    NotFound,
    RateLimited,
    RemoteRejected,
    UpstreamError,
)

log = logging.getLogger(__name__)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
DEFAULT_USER_AGENT = "Trailmark/0.1 (+https://trailmark.invalid)"
REDACTED = "[REDACTED]"

_SECRET_PARAM = re.compile(
    r"\b((?:access_|refresh_|ws)?token|client_secret|client_assertion|password)=([^&\s#'\"]+)",
    re.IGNORECASE,
)
_SECRET_JSON = re.compile(
    r"(\"(?:access_token|refresh_token|id_token|client_secret|client_assertion|wstoken|token|password)\"\s*:\s*)"
    r"\"[^\"]*\"",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(r"(authorization\s*[:=]\s*)([^\r\n,}]+)", re.IGNORECASE)
_BEARER = re.compile(r"\b(bearer|basic|oauth)\s+[A-Za-z0-9\-._~+/=]{4,}", re.IGNORECASE)
_LINK_PART = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_LINK_REL = re.compile(r"""rel\s*=\s*(?:"([^"]*)"|([^\s;,]+))""", re.IGNORECASE)


def redact(text: str) -> str:
    """Return ``text`` with tokens, secrets and Authorization values replaced by ``[REDACTED]``."""
    if not text:
        return text
    text = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    text = _SECRET_JSON.sub(lambda m: f'{m.group(1)}"{REDACTED}"', text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``headers`` safe to log."""
    secret = {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
    return {k: (REDACTED if k.lower() in secret else redact(str(v))) for k, v in headers.items()}


def parse_link_header(value: str | None) -> dict[str, str]:
    """Parse an RFC 8288 ``Link`` header into ``{rel: url}``; URLs are returned verbatim (opaque)."""
    links: dict[str, str] = {}
    if not value:
        return links
    for match in _LINK_PART.finditer(value):
        url, params = match.group(1).strip(), match.group(2)
        rel = _LINK_REL.search(params)
        if rel is None:
            continue
        for name in (rel.group(1) or rel.group(2) or "").split():
            links.setdefault(name.lower(), url)
    return links


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` header (delta-seconds or HTTP-date) asks us to wait."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _pairs(params: Any) -> Any:
    """The (key, value) pairs of query parameters given as a mapping or a list of pairs; ``None`` otherwise."""
    if isinstance(params, Mapping):
        return params.items()
    if isinstance(params, (list, tuple)):
        return params
    return None


def encode_params(params: Any) -> str | None:
    """Return ``params`` (a mapping or a list of pairs) as a query string, as requests encodes them.

    ``None`` for any other shape, which is then left to requests. Equal to requests' own encoding (list
    values repeat the key, ``None`` values are dropped, text is UTF-8) without its per-call type probing.
    """
    pairs = _pairs(params)
    if pairs is None:
        return None
    result: list[tuple[Any, Any]] = []
    for key, values in pairs:
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        for value in values:
            if value is not None:
                result.append((key.encode("utf-8") if isinstance(key, str) else key,
                               value.encode("utf-8") if isinstance(value, str) else value))
    return urlencode(result, doseq=True)


_PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def _params_key(params: Any) -> tuple[Any, ...] | None:
    """Return a key equal only for parameters that encode alike (types included), or ``None``."""
    pairs = _pairs(params)
    if pairs is None:
        return None
    key: list[Any] = []
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2 or type(pair[0]) not in _PLAIN:
            return None
        name, value = pair
        if type(value) in (list, tuple):
            if any(type(v) not in _PLAIN for v in value):
                return None
            value = (type(value), tuple((type(v), v) for v in value))
        elif type(value) not in _PLAIN:
            return None
        key.append((type(name), name, type(value), value))
    return tuple(key)


def error_message(response: requests.Response) -> str:
    """Extract the human message from an error body (Canvas, Moodle, OAuth and OneRoster shapes)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300]
    messages: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            messages.append(node)
        elif isinstance(node, list):
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            for key in ("message", "error_description", "description", "imsx_description", "error", "errors"):
                if key in node:
                    walk(node[key])
                    if messages:
                        return

    walk(body)
    text = "; ".join(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return (text or response.text.strip())[:300]


class BearerAuth(requests.auth.AuthBase):
    """Send ``Authorization: Bearer <token>``; fetch a fresh token through ``fetch`` when one is refused.

    ``fetch`` returns the token, or ``(token, expires_in_seconds)`` so the token is renewed ``leeway``
    seconds before it expires instead of waiting for a 401.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        fetch: Callable[[], str | tuple[str, float | None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        leeway: float = 60.0,
    ) -> None:
        self._token = token
        self._fetch = fetch
        self._clock = clock
        self._leeway = leeway
        self._expires_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if self._token is None or (
            self._expires_at is not None and self._clock() >= self._expires_at - self._leeway
        ):
            self._renew(stale=self._token)
        r.headers["Authorization"] = f"Bearer {self._token}"
        return r

    def refresh(self, failed: requests.PreparedRequest | None) -> bool:
        """Replace the token the failed request carried; return whether a retry may succeed."""
        if self._fetch is None:
            return False
        sent = failed.headers.get("Authorization") if failed is not None else None
        stale = sent.removeprefix("Bearer ") if sent else self._token
        self._renew(stale=stale)
        return True

    def _renew(self, *, stale: str | None) -> None:
        if self._fetch is None:
            if self._token is None:
                raise ConfigurationError("no access token configured and no way to obtain one")
            return
        with self._lock:
            if self._token is not None and self._token != stale:
                return  # another thread already renewed it
            got = self._fetch()
            token, expires_in = got if isinstance(got, tuple) else (got, None)
            self._token = token
            self._expires_at = self._clock() + expires_in if expires_in else None


class HttpClient:
    """A shared ``requests.Session`` with timeouts, status → typed errors, safe retries and Link paging."""

    def __init__(
        self,
        base_url: str,
        *,
        source: str,
        auth: requests.auth.AuthBase | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        pool_size: int = 10,
        rng: random.Random | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if base_url and not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"{source}: base_url must be an http(s) URL, got {base_url!r}",
                                     source=source)
        self.base_url = base_url.rstrip("/")
        self.source = source
        self.auth = auth
        self.timeout = timeout
        self.max_retries = max(0, max_retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.requests_made = 0
        self._count_lock = threading.Lock()
        self._env_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._own_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self.session = session
        self.headers: dict[str, str] = {"User-Agent": user_agent, **(headers or {})}
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._queries: dict[Any, str] = {}
        self._header_sets: dict[Any, CaseInsensitiveDict[Any]] = {}

    # ------------------------------------------------------------------ public

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        data: Any = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool | None = None,
        expected: tuple[int, ...] = (),
    ) -> requests.Response:
        """Send one request (retrying where safe) and return the response or raise a ConnectorError."""
        method = method.upper()
        should_retry = method in IDEMPOTENT_METHODS if retry is None else retry

        def attempt() -> requests.Response:
            return self._send(method, url, params=params, data=data, json=json, headers=headers,
                              expected=expected)

        if not should_retry or self.max_retries == 0:
            return attempt()
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type((RateLimited, UpstreamError)),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(attempt)

    def get_json(self, url: str, params: Any = None) -> Any:
        """GET ``url`` and return its decoded JSON body."""
        response = self.request("GET", url, params=params)
        return self.decode_json(response)

    def decode_json(self, response: requests.Response) -> Any:
        """Return the JSON body of ``response`` or raise UpstreamError if it is not JSON."""
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(
                f"{self.source}: {response.request.method} {redact(response.url)} -> {response.status_code}: "
                "response is not JSON",
                source=self.source,
                status=response.status_code,
            ) from exc

    def iter_link_pages(self, url: str, params: Any = None) -> Iterator[requests.Response]:
        """Yield each page of a list, following ``Link: rel="next"`` URLs verbatim until there is none."""
        response = self.request("GET", url, params=params)
        yield response
        current = response.url
        while True:
            nxt = parse_link_header(response.headers.get("Link")).get("next")
            if not nxt or nxt == current:
                return
            response = self.request("GET", nxt)
            current = nxt
            yield response

    def close(self) -> None:
        """Release pooled connections (only the session this client created)."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def url_for(self, url: str) -> str:
        """Return ``url`` unchanged if absolute, else joined to ``base_url``."""
        if url.startswith(("http://", "https://")):
            return url
        if not self.base_url:
            raise ConfigurationError(f"{self.source}: relative URL {url!r} without a base_url",
                                     source=self.source)
        return f"{self.base_url}/{url.lstrip('/')}"

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: Any,
        data: Any,
        json: Any,
        headers: Mapping[str, str] | None,
        expected: tuple[int, ...],
    ) -> requests.Response:
        full = self.url_for(url)
        opaque = params is None and url.startswith(("http://", "https://"))
        request_headers = {**self.headers, **headers} if headers else self.headers
        refreshed = False
        while True:
            lean = self._lean()
            prepared = self._prepare(method, full, params=params, data=data, json=json,
                                     headers=request_headers, opaque=opaque, lean=lean)
            with self._count_lock:
                self.requests_made += 1
            started = time.monotonic()
            try:
                if self._slots is None:
                    response = self._transmit(prepared, self._environment(full), lean=lean)
                else:
                    with self._slots:
                        response = self._transmit(prepared, self._environment(full), lean=lean)
            except (requests.Timeout, requests.ConnectionError) as exc:
                log.debug("%s %s %s failed: %s", self.source, method, redact(full), type(exc).__name__)
                reason = f"{type(exc).__name__}: {redact(str(exc))}"
                raise UpstreamError(f"{self.source}: {method} {redact(full)} failed: {reason}",
                                    source=self.source) from exc
            except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                    requests.exceptions.InvalidSchema) as exc:
                raise ConfigurationError(
                    f"{self.source}: {method} {redact(full)}: {redact(str(exc))}", source=self.source
                ) from exc
            except requests.RequestException as exc:
                raise UpstreamError(
                    f"{self.source}: {method} {redact(full)} failed: {redact(str(exc))}", source=self.source
                ) from exc
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %s -> %d (%.0f ms)", self.source, method, redact(full),
                          response.status_code, (time.monotonic() - started) * 1000)
            if response.status_code == 401 and not refreshed and self._refresh(prepared):
                refreshed = True
                continue
            if response.status_code < 400 or response.status_code in expected:
                return response
            raise self._error(method, full, response)

    def _lean(self) -> bool:
        """Whether the session adds nothing per request, so requests may skip its merging steps."""
        session = self.session
        return (not session.cookies and not session.params and session.auth is None
                and not any(session.hooks.values()))

    def _prepare(self, method: str, full: str, *, params: Any, data: Any, json: Any,
                 headers: Mapping[str, str], opaque: bool, lean: bool) -> requests.PreparedRequest:
        """Return the request to send, authenticated after its URL is final (so signatures match)."""
        if not lean:
            prepared = self.session.prepare_request(
                requests.Request(method, full, params=params, data=data, json=json, headers=dict(headers)))
            if opaque:
                prepared.url = full  # opaque next-page URL: sent exactly as the server wrote it
        else:
            prepared = requests.PreparedRequest()
            prepared.prepare_method(method)
            query = self._query(params) if params is not None and "#" not in full else None
            if opaque:
                prepared.url = full
            elif query is None:
                prepared.prepare_url(full, params)
            else:  # what prepare_url(full, params) gives, with the encoded parameters reused
                prepared.prepare_url(full, None)
                if query:
                    prepared.url = f"{prepared.url}{'&' if '?' in (prepared.url or '') else '?'}{query}"
            prepared.headers = self._headers(headers)
            prepared.prepare_body(data, None, json)
            auth = self.auth
            if auth is None and self.session.trust_env:
                auth = get_netrc_auth(full)
            prepared.prepare_auth(auth, full)  # None: credentials in the URL, as the session does
            return prepared
        if self.auth is not None:
            prepared.prepare_auth(self.auth, full)
        return prepared

    def _headers(self, headers: Mapping[str, str]) -> CaseInsensitiveDict[Any]:
        """Return the session's headers merged with ``headers`` and checked, as prepare_request would."""
        key = (tuple(self.session.headers.items()), tuple(headers.items()))
        template = self._header_sets.get(key)
        if template is None:
            probe = requests.PreparedRequest()
            probe.prepare_headers(merge_setting(headers, self.session.headers, dict_class=CaseInsensitiveDict))
            template = probe.headers
            if len(self._header_sets) >= 64:
                self._header_sets.clear()
            self._header_sets[key] = template
        return template.copy()

    def _query(self, params: Any) -> str | None:
        """Return ``params`` encoded and requoted as requests would append them (memoised per value)."""
        key = _params_key(params)
        if key is not None and (cached := self._queries.get(key)) is not None:
            return cached
        encoded = encode_params(params)
        if encoded is None:
            return None
        query = requote_uri(encoded)
        if key is not None:
            if len(self._queries) >= 256:
                self._queries.clear()
            self._queries[key] = query
        return query

    def _transmit(self, prepared: requests.PreparedRequest, settings: dict[str, Any], *, lean: bool
                  ) -> requests.Response:
        """Send ``prepared`` as ``Session.send`` would (cookies kept, redirects followed, body read)."""
        session = self.session
        kwargs = {**settings, "timeout": self.timeout}
        if not lean:
            return session.send(prepared, allow_redirects=True, **kwargs)
        adapter = session.get_adapter(url=prepared.url or "")
        start = preferred_clock()
        response = adapter.send(prepared, **kwargs)
        response.elapsed = timedelta(seconds=preferred_clock() - start)
        if "set-cookie" in response.headers or "set-cookie2" in response.headers:
            extract_cookies_to_jar(session.cookies, prepared, response.raw)
        if response.is_redirect:
            prepared._cookies = RequestsCookieJar()
            history = list(session.resolve_redirects(response, prepared, **kwargs))
            if history:
                history.insert(0, response)
                response = history.pop()
                response.history = history
        if not kwargs.get("stream"):
            response.content  # noqa: B018 - read the body while holding the slot
        return response

    def _environment(self, url: str) -> dict[str, Any]:
        """Proxies and CA bundle from the environment for ``url``'s origin, resolved once per origin."""
        origin = urlsplit(url)[:2]
        settings = self._env_cache.get(origin)
        if settings is None:
            settings = self.session.merge_environment_settings(url, {}, None, None, None)
            self._env_cache[origin] = settings
        return settings

    def _refresh(self, prepared: requests.PreparedRequest) -> bool:
        refresh = getattr(self.auth, "refresh", None)
        if not callable(refresh):
            return False
        log.debug("%s: credentials refused, refreshing the access token", self.source)
        return bool(refresh(prepared))

    def _error(self, method: str, url: str, response: requests.Response) -> ConnectorError:
        status = response.status_code
        message = redact(error_message(response))
        where = f"{self.source}: {method} {redact(url)} -> {status}"
        kw: dict[str, Any] = {"source": self.source, "status": status}
        if status == 401:
            return AuthError(f"{where}: credentials refused: {message}", **kw)
        if status == 403:
            if "rate limit exceeded" in response.text.lower():
                return RateLimited(f"{where}: throttled: {message}",
                                   retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw)
            return AuthError(f"{where}: permission denied: {message}", **kw)
        if status == 404:
            return NotFound(f"{where}: not found: {message}", **kw)
        if status == 429:
            return RateLimited(f"{where}: throttled: {message}",
                               retry_after=parse_retry_after(response.headers.get("Retry-After")), **kw)
        if status >= 500:
            err = UpstreamError(f"{where}: server error: {message}", **kw)
            err.retry_after = parse_retry_after(response.headers.get("Retry-After"))  # type: ignore[attr-defined]
            return err
        return RemoteRejected(f"{where}: rejected: {message}", **kw)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Return the delay before the next attempt: Retry-After if given, else full-jitter backoff."""
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self.max_backoff))
        ceiling = min(self.max_backoff, self.backoff * (2 ** (state.attempt_number - 1)))
        return self.rng.uniform(0.0, ceiling)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.debug("%s: attempt %d failed (%s); retrying in %.2fs", self.source, state.attempt_number,
                  redact(str(exc)), delay)
