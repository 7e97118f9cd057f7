"""Canvas REST calls: one method per endpoint, raw JSON out, paging and rate-limit pacing built in.

Translation to canonical records lives in ``connector.py``; validation in ``schemas.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import requests
from marshmallow import ValidationError

from connectors.base import AuthError, ConfigurationError, RemoteRejected, UpstreamError
from connectors.canvas import schemas
from connectors.http import BearerAuth, HttpClient, parse_link_header

log = logging.getLogger(__name__)

MAX_PER_PAGE = 100  # Canvas's Api::MAX_PER_PAGE; larger values are silently capped
Form = Sequence[tuple[str, str]]


class Throttle:
    """Pace requests by ``X-Rate-Limit-Remaining``: pause every worker while the bucket runs low.

    Canvas refills its leaky bucket at about 10 units a second and refuses requests (403 "Rate Limit
    Exceeded") when it is empty; below ``low_water`` each request waits in proportion to how far below.
    """

    def __init__(self, *, low_water: float = 100.0, max_pause: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.low_water = low_water
        self.max_pause = max_pause
        self.sleep = sleep
        self.remaining: float | None = None
        self.paused = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Sleep before a request if the last response said the bucket is low."""
        remaining = self.remaining
        if remaining is None or remaining >= self.low_water:
            return
        pause = self.max_pause * (self.low_water - max(remaining, 0.0)) / self.low_water
        with self._lock:
            self.paused += pause
        log.debug("canvas rate limit low (%.1f left); pausing %.2fs", remaining, pause)
        self.sleep(pause)

    def observe(self, response: requests.Response) -> None:
        """Remember the bucket level a response reported."""
        value = response.headers.get("X-Rate-Limit-Remaining")
        if value is None:
            return
        try:
            self.remaining = float(value)
        except ValueError:
            return


class CanvasClient:
    """Thin, thread-safe wrapper over the Canvas REST API for one instance and one credential."""

    def __init__(
        self,
        base_url: str,
        *,
        source: str,
        token: str | None = None,
        oauth: Mapping[str, str] | None = None,
        per_page: int = MAX_PER_PAGE,
        pool_size: int = 10,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        max_retries: int = 5,
        throttle: Throttle | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        if not token and not oauth:
            raise ConfigurationError(f"{source}: give either token or oauth (client_id, client_secret, "
                                     "refresh_token)", source=source)
        self.source = source
        self.per_page = max(1, min(int(per_page), MAX_PER_PAGE))
        self.throttle = throttle or Throttle(sleep=sleep)
        self._oauth = dict(oauth) if oauth else None
        self.http = HttpClient(base_url, source=source, timeout=timeout, max_retries=max_retries, sleep=sleep,
                               session=session, pool_size=pool_size, max_in_flight=max_in_flight)
        if self._oauth:
            missing = [k for k in ("client_id", "client_secret", "refresh_token") if not self._oauth.get(k)]
            if missing:
                raise ConfigurationError(f"{source}: oauth needs {', '.join(missing)}", source=source)
            self._token_http = HttpClient(base_url, source=source, timeout=timeout, max_retries=max_retries,
                                          sleep=sleep, session=self.http.session)
            self.http.auth = BearerAuth(token or None, fetch=self.fetch_token)
        else:
            self.http.auth = BearerAuth(token)

    @property
    def requests_made(self) -> int:
        return self.http.requests_made

    def close(self) -> None:
        """Release pooled connections."""
        self.http.close()

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, **kw: Any) -> requests.Response:
        self.throttle.wait()
        response = self.http.request(method, path, **kw)
        self.throttle.observe(response)
        return response

    def _pages(self, path: str, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None
               ) -> Iterator[Any]:
        """Yield each page's decoded JSON, following ``Link: rel="next"`` verbatim."""
        query: list[tuple[str, Any]] = list(params.items() if isinstance(params, Mapping) else params or [])
        query.append(("per_page", self.per_page))
        url: str | None = path
        first = True
        while url:
            response = self._request("GET", url, params=query if first else None)
            first = False
            yield self.http.decode_json(response)
            nxt = parse_link_header(response.headers.get("Link")).get("next")
            url = nxt if nxt and nxt != response.url else None

    def _list(self, path: str, params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
              *, key: str | None = None) -> Iterator[Any]:
        for page in self._pages(path, params):
            rows = page.get(key) if key and isinstance(page, dict) else page
            if not isinstance(rows, list):
                raise UpstreamError(f"{self.source}: GET {path}: expected a list"
                                    f"{f' under {key!r}' if key else ''}, got {type(rows).__name__}",
                                    source=self.source)
            yield from rows

    # ------------------------------------------------------------------ auth

    def fetch_token(self) -> tuple[str, float | None]:
        """Exchange the refresh token for a new access token.

        :calls: POST /login/oauth2/token
        """
        assert self._oauth is not None
        form = {
            "grant_type": "refresh_token",
            "client_id": self._oauth["client_id"],
            "client_secret": self._oauth["client_secret"],
            "refresh_token": self._oauth["refresh_token"],
        }
        try:
            response = self._token_http.request("POST", "/login/oauth2/token", data=form, retry=True)
        except RemoteRejected as exc:  # 400 invalid_grant / invalid_client
            raise AuthError(f"{self.source}: OAuth refresh refused: {exc}", source=self.source,
                            status=exc.status) from exc
        try:
            token = schemas.load(schemas.TOKEN, self._token_http.decode_json(response))
        except ValidationError as exc:
            raise AuthError(f"{self.source}: OAuth token response without an access_token",
                            source=self.source) from exc
        log.info("%s: obtained a new Canvas access token", self.source)
        return token["access_token"], token["expires_in"]

    # ------------------------------------------------------------------ roster

    def get_account(self, account_id: str) -> Any:
        """Return one account.

        :calls: GET /api/v1/accounts/:id
        """
        return self.http.decode_json(self._request("GET", f"/api/v1/accounts/{account_id}"))

    def iter_courses(self, account_id: str) -> Iterator[Any]:
        """List the account's courses (all states but deleted) with their terms.

        :calls: GET /api/v1/accounts/:account_id/courses
        """
        return self._list(f"/api/v1/accounts/{account_id}/courses", [("include[]", "term")])

    def iter_enrollments(self, course_id: str, *, types: Sequence[str], states: Sequence[str]
                         ) -> Iterator[Any]:
        """List a course's enrollments of the given types and states (each with its user).

        :calls: GET /api/v1/courses/:course_id/enrollments
        """
        params = [("type[]", t) for t in types] + [("state[]", s) for s in states]
        return self._list(f"/api/v1/courses/{course_id}/enrollments", params)

    # ------------------------------------------------------------------ content

    def iter_modules(self, course_id: str) -> Iterator[Any]:
        """List a course's modules with their items (Canvas omits items when a module has too many).

        :calls: GET /api/v1/courses/:course_id/modules
        """
        return self._list(f"/api/v1/courses/{course_id}/modules", [("include[]", "items")])

    def iter_module_items(self, course_id: str, module_id: str) -> Iterator[Any]:
        """List one module's items.

        :calls: GET /api/v1/courses/:course_id/modules/:module_id/items
        """
        return self._list(f"/api/v1/courses/{course_id}/modules/{module_id}/items")

    def iter_assignments(self, course_id: str) -> Iterator[Any]:
        """List a course's assignments (rubric criteria carry their aligned ``outcome_id``).

        :calls: GET /api/v1/courses/:course_id/assignments
        """
        return self._list(f"/api/v1/courses/{course_id}/assignments")

    def get_assignment(self, course_id: str, assignment_id: str) -> Any:
        """Return one assignment.

        :calls: GET /api/v1/courses/:course_id/assignments/:id
        """
        path = f"/api/v1/courses/{course_id}/assignments/{assignment_id}"
        return self.http.decode_json(self._request("GET", path))

    def iter_outcome_links(self, course_id: str) -> Iterator[Any]:
        """List every outcome linked into a course, with the full outcome (ratings, calculation).

        :calls: GET /api/v1/courses/:course_id/outcome_group_links
        """
        return self._list(f"/api/v1/courses/{course_id}/outcome_group_links", [("outcome_style", "full")])

    # ------------------------------------------------------------------ progress

    def iter_submissions(self, course_id: str) -> Iterator[Any]:
        """List every student's submissions for every assignment of a course.

        :calls: GET /api/v1/courses/:course_id/students/submissions
        """
        return self._list(f"/api/v1/courses/{course_id}/students/submissions", [("student_ids[]", "all")])

    def iter_outcome_results(self, course_id: str) -> Iterator[Any]:
        """List a course's outcome results.

        :calls: GET /api/v1/courses/:course_id/outcome_results
        """
        return self._list(f"/api/v1/courses/{course_id}/outcome_results", key="outcome_results")

    def get_submission(self, course_id: str, assignment_id: str, user_id: str) -> Any:
        """Return one submission with its comments.

        :calls: GET /api/v1/courses/:course_id/assignments/:assignment_id/submissions/:user_id
        """
        return self.http.decode_json(self._request(
            "GET", f"/api/v1/courses/{course_id}/assignments/{assignment_id}/submissions/{user_id}",
            params=[("include[]", "submission_comments")]))

    # ------------------------------------------------------------------ writes

    def update_module(self, course_id: str, module_id: str, form: Form) -> Any:
        """Update a module (prerequisites, sequential progress, publishing).

        :calls: PUT /api/v1/courses/:course_id/modules/:id
        """
        return self.http.decode_json(self._request("PUT", f"/api/v1/courses/{course_id}/modules/{module_id}",
                                                   data=list(form)))

    def update_module_item(self, course_id: str, module_id: str, item_id: str, form: Form) -> Any:
        """Update a module item (its completion requirement).

        :calls: PUT /api/v1/courses/:course_id/modules/:module_id/items/:id
        """
        return self.http.decode_json(self._request(
            "PUT", f"/api/v1/courses/{course_id}/modules/{module_id}/items/{item_id}", data=list(form)))

    def grade_submission(self, course_id: str, assignment_id: str, user_id: str, form: Form, *,
                         retry: bool | None = None) -> Any:
        """Grade (or comment on) one student's submission.

        :calls: PUT /api/v1/courses/:course_id/assignments/:assignment_id/submissions/:user_id
        """
        return self.http.decode_json(self._request(
            "PUT", f"/api/v1/courses/{course_id}/assignments/{assignment_id}/submissions/{user_id}",
            data=list(form), retry=retry))

    def create_conversation(self, form: Form) -> Any:
        """Send a message (one private conversation per recipient, or a bulk message).

        :calls: POST /api/v1/conversations
        """
        return self.http.decode_json(self._request("POST", "/api/v1/conversations", data=list(form)))
