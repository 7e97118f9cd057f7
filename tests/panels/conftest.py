"""Real sandbox launches for panel tests: a launch per role, the ticket, and the page it opens."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from jinja2 import BytecodeCache
from jinja2.bccache import Bucket
from sqlalchemy import select

from plugin.sandbox import platform as sb
from plugin.store.db import get_store
from plugin.store.models import AppSession, Person
from tests.htmlforms import follow_sandbox_launch, parse


@dataclass
class Launched:
    """A launched session: its ticket, the first page, and the CSRF token its forms carry."""

    client: Any
    ltik: str
    url: str
    html: str

    @property
    def csrf(self) -> str:
        """The session's CSRF token (from the page's forms, else from the store for pages without forms)."""
        found = re.search(r'name="csrf_token" value="([^"]+)"', self.html)
        if found:
            return found.group(1)
        with get_store(self.client.application).session() as s:
            return s.get(AppSession, hashlib.sha256(self.ltik.encode()).hexdigest()).csrf_token

    def get(self, path: str, **params: Any) -> Any:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        sep = "&" if "?" in path else "?"
        return self.client.get(f"{path}{sep}ltik={self.ltik}" + (f"&{query}" if query else ""))

    def post(self, path: str, data: dict[str, Any], *, csrf: bool = True) -> Any:
        body = dict(data)
        if csrf:
            body["csrf_token"] = self.csrf
        return self.client.post(f"{path}?ltik={self.ltik}", data=body)

    def links(self) -> list[str]:
        return [a["href"] for a in parse(self.html).links]


class _SharedBytecode(BytecodeCache):
    """Compiled templates kept for the whole test run: every test builds a new app, the templates stay the same."""

    def __init__(self) -> None:
        self.store: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self.store.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)

    def dump_bytecode(self, bucket: Bucket) -> None:
        self.store[bucket.key] = bucket.bytecode_to_string()


_COMPILED = _SharedBytecode()


@pytest.fixture
def app(app):
    """The app of tests/conftest.py, sharing compiled templates with the other tests of this run."""
    app.jinja_env.bytecode_cache = _COMPILED
    return app


@pytest.fixture
def launch(client):
    """Launch Trailmark from the sandbox as one of its users (teacher, maya, leo, …, parent, admin)."""

    def _launch(user_key: str) -> Launched:
        resp = follow_sandbox_launch(client, user_key)
        assert resp.status_code == 303, resp.get_data(as_text=True)[:400]
        url = resp.headers["Location"]  # the launch opens the view's panel directly
        ltik = parse_qs(urlsplit(url).query)["ltik"][0]
        page = client.get(url)
        assert page.status_code == 200, page.get_data(as_text=True)[:600]
        return Launched(client, ltik, url, page.get_data(as_text=True))

    return _launch


@pytest.fixture
def people(app, client) -> dict[str, int]:
    """Sandbox user key → person id (the sandbox is seeded on first use)."""
    client.get("/sandbox")
    with get_store(app).session() as s:
        by_sis = {p.sis_id: p.id for p in s.scalars(select(Person))}
    return {u.key: by_sis[u.sis_id] for u in sb.USERS}


def text_of(html: str) -> str:
    """The page's text with tags removed and whitespace collapsed."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()


def section(html: str, section_id: str) -> str:
    """The HTML of one <section id=…> (up to its closing tag)."""
    start = html.index(">", html.index(f'id="{section_id}"')) + 1
    return html[start:html.index("</section>", start)]
