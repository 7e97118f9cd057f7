"""Canvas test fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses

from connectors.canvas import CanvasConnector
from tests.connectors.canvas.canvas_support import BASE, CanvasMock, Sleeps


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def canvas(rsps: responses.RequestsMock) -> CanvasMock:
    return CanvasMock(rsps)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make_connector(sleeps: Sleeps) -> Callable[..., CanvasConnector]:
    def make(**kw: Any) -> CanvasConnector:
        options: dict[str, Any] = {"account_id": 1, "token": "admin-token-s3cr3t", "concurrency": 2,
                                   "sleep": sleeps}
        options.update(kw)
        return CanvasConnector("riverside-canvas", BASE, **options)

    return make
