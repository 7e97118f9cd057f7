"""One contract, every connector: the fake and each real connector, each against a small local setup.

Every kind in ``connectors.registry`` must have a case here; a connector that fails to import fails the
test rather than being skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses

from connectors import registry, sync
from connectors.base import (
    RECORD_KINDS,
    Capability,
    Complete,
    ConfigurationError,
    Connector,
    ConnectorError,
    GateWrite,
    MessageWrite,
    Rejected,
    Scope,
    ScoreWrite,
    Tombstone,
    Write,
    kind_of,
)
from connectors.fake import FakeConnector, sample_district

KINDS = set(RECORD_KINDS.values())


@dataclass
class Case:
    connector: Connector
    scope: Scope


def _fake(_rsps: responses.RequestsMock, _tmp: Path) -> Case:
    return Case(FakeConnector("fake", sample_district(classes=2, students_per_class=3)), Scope.ALL)


def _canvas(rsps: responses.RequestsMock, _tmp: Path) -> Case:
    from connectors.canvas import CanvasConnector
    from tests.connectors.canvas.canvas_support import BASE, CanvasMock

    CanvasMock(rsps).roster()
    connector = CanvasConnector.from_config({"name": "riverside-canvas", "kind": "canvas", "base_url": BASE,
                                             "account_id": 1, "token": "admin-token"}, sleep=lambda _s: None)
    return Case(connector, Scope.ROSTER)


def _moodle(rsps: responses.RequestsMock, _tmp: Path) -> Case:
    from connectors.moodle import MoodleConnector
    from tests.connectors.moodle.moodle_fakes import BASE, TOKEN, FakeMoodle

    FakeMoodle(rsps).standard_site()
    connector = MoodleConnector.from_config({"name": "north-moodle", "kind": "moodle", "base_url": BASE,
                                             "token": TOKEN, "page_size": 2}, sleep=lambda _s: None)
    return Case(connector, Scope.ALL)


def _lti(rsps: responses.RequestsMock, _tmp: Path) -> Case:
    from connectors.lti import LtiAdvantageConnector, PlatformSettings
    from tests.connectors.lti import lti_fakes as f

    def issue(request: Any) -> tuple[int, dict[str, str], str]:
        form = parse_qs(request.body)
        body = {**f.fixture("token"), "access_token": "token-1", "scope": form["scope"][0]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    rsps.add_callback(responses.POST, f.TOKEN_URL, callback=issue)
    rsps.get(f.MEMBERSHIPS_URL, json=f.fixture("memberships_page1"), headers=f.link(next=f.MEMBERSHIPS_PAGE2))
    rsps.get(f.MEMBERSHIPS_PAGE2, json=f.fixture("memberships_page2"), headers=f.link(differences=f.DIFFERENCES_URL))
    platform = PlatformSettings(issuer=f.ISSUER, client_id=f.CLIENT_ID, token_url=f.TOKEN_URL)
    connector = LtiAdvantageConnector.from_config(
        {"name": "north-lti", "kind": "lti", "context_memberships_url": f.MEMBERSHIPS_URL,
         "lineitems_url": f.LINEITEMS_URL, "page_size": 2}, platform=platform, signer=f.signer,
        sleep=lambda _s: None, now=f.Clock())
    return Case(connector, Scope.ROSTER)


def _oneroster_rest(rsps: responses.RequestsMock, _tmp: Path) -> Case:
    from connectors.oneroster import OneRosterConnector
    from tests.connectors.oneroster.test_oneroster_rest import add_roster_1_1

    add_roster_1_1(rsps)
    connector = OneRosterConnector.from_config({
        "name": "sis", "kind": "oneroster-rest", "base_url": "https://sis.example.org", "version": "1.1",
        "client_id": "consumer-key", "client_secret": "s3cret", "page_size": 3}, sleep=lambda _s: None)
    return Case(connector, Scope.ALL)


def _oneroster_csv(_rsps: responses.RequestsMock, tmp: Path) -> Case:
    from bench.district_gen import generate
    from connectors.oneroster import OneRosterConnector

    generate(tmp / "package", scale=0.002, seed=3)
    connector = OneRosterConnector.from_config({"name": "sis-csv", "kind": "oneroster-csv",
                                                "path": str(tmp / "package")})
    return Case(connector, Scope.ALL)


CASES: dict[str, Callable[[responses.RequestsMock, Path], Case]] = {
    "fake": _fake,
    "canvas": _canvas,
    "moodle": _moodle,
    "lti": _lti,
    "oneroster-rest": _oneroster_rest,
    "oneroster-csv": _oneroster_csv,
}

WRITES: dict[Capability, Write] = {
    Capability.WRITE_SCORES: ScoreWrite("c-1", "a-1", "p-1", 7.0, 10.0, datetime(2026, 9, 1, tzinfo=UTC)),
    Capability.WRITE_GATES: GateWrite("c-1", "m-2", ("m-1",), check_activity_sourced_id="a-1", min_score=8.0),
    Capability.WRITE_MESSAGES: MessageWrite(("p-1",), "Subject", "Body", class_sourced_id="c-1"),
}


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest, rsps: responses.RequestsMock, tmp_path: Path) -> Case:
    return CASES[request.param](rsps, tmp_path)


def test_every_registered_kind_has_a_case_and_loads() -> None:
    assert set(CASES) == set(registry.KINDS)
    for kind in registry.KINDS:
        cls = registry.connector_class(kind)  # an import failure fails here, it is never skipped
        assert hasattr(cls, "from_config") and hasattr(cls, "pull") and hasattr(cls, "push")


def test_protocol_conformance(case: Case) -> None:
    c = case.connector
    assert isinstance(c, Connector)
    assert isinstance(c.name, str) and c.name
    assert c.kind in registry.KINDS
    assert isinstance(c.capabilities, frozenset) and c.capabilities
    assert all(isinstance(cap, Capability) for cap in c.capabilities)


def test_pull_yields_items_with_parents_first(case: Case) -> None:
    items = list(case.connector.pull(case.scope))

    assert any(kind_of(i) for i in items if type(i) in RECORD_KINDS), "the setup should produce records"
    listed = {(kind_of(i), i.sourced_id) for i in items if type(i) in RECORD_KINDS}
    seen: set[tuple[str, str]] = set()
    for item in items:
        if isinstance(item, Complete):
            assert item.kind in KINDS and (item.within_kind is None or item.within_kind in KINDS)
            continue
        if isinstance(item, Rejected):
            assert item.kind in KINDS and item.reason
            continue
        if isinstance(item, Tombstone):
            assert item.kind in KINDS and item.sourced_id
            continue
        assert type(item) in RECORD_KINDS, f"{type(item).__name__} is not an Item"
        kind = kind_of(item)
        for parent in sync.SPECS[kind].parents:
            value = getattr(item, parent.attr)
            refs = [] if not value else [value] if parent.many == "one" else list(value)
            for ref in refs:
                if (parent.kind, ref) in listed and (parent.kind, ref) != (kind, item.sourced_id):
                    assert (parent.kind, ref) in seen, f"{kind} {item.sourced_id} came before its {parent.kind} {ref}"
        seen.add((kind, item.sourced_id))


def test_push_refuses_undeclared_writes_with_a_connector_error(case: Case) -> None:
    c = case.connector
    for capability, write in WRITES.items():
        if capability in c.capabilities:
            continue
        with pytest.raises(ConnectorError):
            c.push(write)


def test_registry_builds_by_kind_and_names_the_valid_kinds() -> None:
    built = registry.build_connector({"name": "demo", "kind": "fake", "classes": 1, "students_per_class": 2})
    assert isinstance(built, FakeConnector) and built.name == "demo"
    with pytest.raises(ConfigurationError) as err:
        registry.build_connector({"name": "x", "kind": "blackboard"})
    message = str(err.value)
    assert "'blackboard'" in message and all(kind in message for kind in registry.KINDS)


def test_registry_reports_a_connector_that_cannot_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.CONNECTORS, "canvas", ("connectors.canvas_missing", "CanvasConnector"))  # type: ignore[index]
    with pytest.raises(ConfigurationError, match="canvas connector could not be loaded"):
        registry.build_connector({"name": "c", "kind": "canvas"})
    assert isinstance(registry.build_connector({"name": "f", "kind": "fake"}), FakeConnector)  # others still load
