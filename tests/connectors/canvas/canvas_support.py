"""Canvas test support: named JSON fixtures served by ``responses`` with Canvas-style Link paging."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
import responses

BASE = "https://riverside.instructure.com"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "canvas"


def fixture(name: str) -> Any:
    """Load a named Canvas payload."""
    path = FIXTURES / name
    return path.read_text() if path.suffix == ".txt" else json.loads(path.read_text())


def bookmark(n: int) -> str:
    """An opaque Canvas bookmark value (base64 with '=' escaped as Canvas does)."""
    return "bookmark:" + base64.b64encode(json.dumps([n, "course"]).encode()).decode().replace("=", "%3D")


Answer = tuple[int, dict[str, str], str]


def _under(path: str) -> re.Pattern[str]:
    return re.compile(re.escape(BASE + path) + r"(\?.*)?$")


class Sleeps(list[float]):
    """An injected sleep that records delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class CanvasMock:
    """Registers Canvas list endpoints on a ``responses`` mock and records what was asked."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.rsps = rsps
        self.next_urls: dict[str, list[str]] = {}

    def pages(self, path: str, pages: Sequence[Any], *, link_header: str = "Link",
              before: Callable[[requests.PreparedRequest], Answer | None] | None = None) -> list[str]:
        """Serve ``pages`` at ``path``: the first without ``page``, later ones at opaque bookmark URLs."""
        urls = [f"{BASE}{path}?page={bookmark(i)}&per_page=100" for i in range(len(pages))]
        first = f"{BASE}{path}?page=first&per_page=100"

        def callback(request: requests.PreparedRequest) -> Answer:
            if before is not None and (answer := before(request)) is not None:
                return answer
            query = parse_qs(urlsplit(request.url).query)
            page = query.get("page", [None])[0]
            index = 0 if page is None else next(i for i, u in enumerate(urls) if u == request.url)
            links = [f'<{urls[index]}>; rel="current"', f'<{first}>; rel="first"']
            if index + 1 < len(pages):
                links.insert(0, f'<{urls[index + 1]}>; rel="next"')
            headers = {link_header: ",".join(links), "X-Request-Cost": "0.05"}
            return 200, headers, json.dumps(pages[index])

        self.rsps.add_callback(responses.GET, _under(path), callback=callback,
                               content_type="application/json")
        self.next_urls[path] = urls[1:]
        return urls[1:]

    def json(self, method: str, path: str, payload: Any, status: int = 200, **kw: Any) -> None:
        """Serve one JSON payload."""
        self.rsps.add(method, _under(path), json=payload, status=status, **kw)

    def roster(self) -> None:
        """Serve the two-course account: account, courses (two pages), enrollments (101 on two pages)."""
        self.json(responses.GET, "/api/v1/accounts/1", fixture("account.json"))
        self.pages("/api/v1/accounts/1/courses",
                   [fixture("courses_page1.json"), fixture("courses_page2.json")])
        self.pages("/api/v1/courses/101/enrollments",
                   [fixture("enrollments_101_page1.json"), fixture("enrollments_101_page2.json")],
                   link_header="link")
        self.pages("/api/v1/courses/102/enrollments", [fixture("enrollments_102.json")])

    def content_101(self) -> None:
        """Serve course 101's modules, items, assignments and outcome links."""
        self.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])
        self.pages("/api/v1/courses/101/modules/202/items", [fixture("module_items_202.json")])
        self.pages("/api/v1/courses/101/assignments", [fixture("assignments_101.json")])
        self.pages("/api/v1/courses/101/outcome_group_links", [fixture("outcome_group_links_101.json")])

    def calls(self, path_prefix: str) -> list[requests.PreparedRequest]:
        """Requests sent to URLs under ``path_prefix``."""
        return [c.request for c in self.rsps.calls if urlsplit(c.request.url).path.startswith(path_prefix)]
