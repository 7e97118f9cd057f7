"""A live Trailmark (real HTTP server, real SQLite) and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

CHROMIUM = os.environ.get("TRAILMARK_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-results"


def pytest_collection_modifyitems(config, items):
    required = "browser" in os.environ.get("TRAILMARK_REQUIRE", "").split(",")
    missing = not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists()
    for item in items:
        if "browser" in item.keywords and missing:
            if required:
                raise pytest.UsageError(f"Chromium is required (TRAILMARK_REQUIRE) but {CHROMIUM} is missing")
            item.add_marker(pytest.mark.skip(reason=f"{CHROMIUM} not installed"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_config():
    """Settings a test module adds to the live server's configuration (override to add sources, say)."""
    return {}


@pytest.fixture
def live_server(database_url, tmp_path, live_config):
    from plugin.app import create_app
    from plugin.cli import bootstrap

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app({
        "mode": "local",
        "server": {"public_url": base, "secret_key": f"file:{tmp_path}/secret_key"},
        "database": {"url": database_url},
        "sandbox": {"enabled": True, "key_path": str(tmp_path / "sandbox.pem")},
        "scheduler": {"enabled": False},
        **live_config,
    }, env={})
    bootstrap(app)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base
    server.shutdown()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    yield pg
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
