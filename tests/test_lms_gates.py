"""Mastery gates in the LMS itself: Canvas gate writes through the outbox, the Moodle restrict-access set-up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
import responses
from sqlalchemy import select, update

from connectors import outbox, sync
from connectors.base import Module, RemoteRejected, Scope, UpstreamError
from connectors.canvas import CanvasConnector
from connectors.fake import FakeConnector
from connectors.moodle import MoodleConnector
from plugin import lms_gates
from plugin.lti.sessions import create_session
from plugin.progress import CHECK_CATEGORY, on_sync_applied, recompute
from plugin.store import models as m
from plugin.store.db import Store, get_store
from tests.connectors.canvas.canvas_support import BASE as CANVAS
from tests.connectors.canvas.canvas_support import CanvasMock
from tests.connectors.canvas.canvas_support import fixture as canvas_fixture
from tests.connectors.moodle.moodle_fakes import BASE as MOODLE
from tests.connectors.moodle.moodle_fakes import TOKEN, FakeMoodle
from tests.connectors.moodle.moodle_fakes import fixture as moodle_fixture
from tests.panels.conftest import section, text_of

NOW = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
CANVAS_SOURCE = "riverside-canvas"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# --------------------------------------------------------------------------- a class in the store


def _ref(session: Any, district_id: int, namespace: str, kind: str, external_id: str, entity_id: int) -> None:
    session.add(m.ExternalRef(district_id=district_id, kind=kind, namespace=namespace, external_id=external_id,
                              entity_id=entity_id, status="active"))


def lms_class(store: Store, district_id: int, *, kind: str = "canvas", name: str = CANVAS_SOURCE) -> dict[str, int]:
    """Canvas course 101 as the store holds it after a sync: Unit 1 (201) holds the mastery check (802, 10 points)
    that opens Unit 2 (202). ``kind`` makes the same class come from another kind of source."""
    with store.session() as s:
        source = m.Source(district_id=district_id, name=name, kind=kind, cursor={}, consecutive_failures=0,
                          created_at=NOW)
        klass = m.Class(district_id=district_id, sourced_id=f"{name}:101", title="Algebra I", status="active")
        teacher = m.Person(district_id=district_id, sourced_id=f"{name}:t1", role="teacher", given_name="Rosa",
                           family_name="Diaz", status="active")
        s.add_all([source, klass, teacher])
        s.flush()
        s.add(m.Enrollment(district_id=district_id, sourced_id=f"{name}:e1", class_id=klass.id,
                           person_id=teacher.id, role="teacher", status="active"))
        unit1 = m.Module(district_id=district_id, sourced_id=f"{name}:201", class_id=klass.id,
                         title="Unit 1: Linear Equations", position=1, status="active")
        unit2 = m.Module(district_id=district_id, sourced_id=f"{name}:202", class_id=klass.id,
                         title="Unit 2: Inequalities", position=2, status="active")
        s.add_all([unit1, unit2])
        s.flush()
        check = m.Activity(district_id=district_id, sourced_id=f"{name}:802", class_id=klass.id, module_id=unit1.id,
                           title="Unit 1 mastery check", score_maximum=10.0, category=CHECK_CATEGORY,
                           status="active")
        s.add(check)
        s.flush()
        for kind_, ext, entity in (("class", "101", klass.id), ("module", "201", unit1.id),
                                   ("module", "202", unit2.id), ("activity", "802", check.id),
                                   ("person", "t1", teacher.id)):
            _ref(s, district_id, name, kind_, ext, entity)
        return {"class": klass.id, "unit1": unit1.id, "unit2": unit2.id, "check": check.id,
                "teacher": teacher.id, "source": source.id}


def gate_items(store: Store) -> list[m.OutboxItem]:
    with store.session() as s:
        return list(s.scalars(select(m.OutboxItem).where(m.OutboxItem.kind == "gate").order_by(m.OutboxItem.id)))


def gate_rows(store: Store) -> list[m.LmsGateRecord]:
    with store.session() as s:
        return list(s.scalars(select(m.LmsGateRecord).order_by(m.LmsGateRecord.id)))


def run_recompute(store: Store, district_id: int, class_id: int, now: datetime = NOW) -> int:
    with store.session() as s:
        return recompute(s, district_id, [class_id], now=now).gates_queued


def dispatch(store: Store, connector: Any, now: datetime = NOW) -> outbox.DispatchReport:
    return outbox.dispatch_due(store, lambda _target: connector, now)


def form(request: requests.PreparedRequest) -> list[tuple[str, str]]:
    body = request.body if isinstance(request.body, str) else (request.body or b"").decode()
    return parse_qsl(body, keep_blank_values=True)


# --------------------------------------------------------------------------- Canvas: what is queued


def test_a_canvas_gate_is_queued_once(store: Store, district: m.District) -> None:
    ids = lms_class(store, district.id)

    assert run_recompute(store, district.id, ids["class"]) == 1
    assert run_recompute(store, district.id, ids["class"], NOW + timedelta(days=1)) == 0

    (item,) = gate_items(store)
    assert item.payload == {"type": "gate", "class_sourced_id": "101", "module_sourced_id": "202",
                            "prerequisite_module_sourced_ids": ["201"], "check_activity_sourced_id": "802",
                            "min_score": 10.0}
    assert item.source_id == ids["source"] and item.idempotency_key.startswith(f"gate:source:{ids['source']}:101:")
    (row,) = gate_rows(store)
    assert (row.module_id, row.after_module_id, row.check_activity_id) == (ids["unit2"], ids["unit1"], ids["check"])
    assert (row.lms, row.status, row.outbox_key) == ("canvas", "queued", item.idempotency_key)


def test_a_gate_is_queued_again_only_when_it_changes(store: Store, district: m.District) -> None:
    ids = lms_class(store, district.id)
    run_recompute(store, district.id, ids["class"])

    with store.session() as s:  # the check is worth 12 points now: a new threshold
        s.execute(update(m.Activity).where(m.Activity.id == ids["check"]).values(score_maximum=12.0))
    assert run_recompute(store, district.id, ids["class"]) == 1
    assert gate_items(store)[-1].payload["min_score"] == 12.0

    with store.session() as s:  # a module added at the top moves both units down
        s.execute(update(m.Module).where(m.Module.class_id == ids["class"]).values(position=m.Module.position + 1))
    assert run_recompute(store, district.id, ids["class"]) == 1

    with store.session() as s:  # Unit 2 already needed a module of its own; the gate keeps it
        intro = m.Module(district_id=district.id, sourced_id="intro", class_id=ids["class"], title="Start here",
                         position=1, status="active")
        s.add(intro)
        s.flush()
        _ref(s, district.id, CANVAS_SOURCE, "module", "200", intro.id)
        s.execute(update(m.Module).where(m.Module.id == ids["unit2"]).values(prerequisite_ids=[intro.id]))
    assert run_recompute(store, district.id, ids["class"]) == 1
    assert gate_items(store)[-1].payload["prerequisite_module_sourced_ids"] == ["200", "201"]

    with store.session() as s:  # a new mastery check item replaces the old one
        s.execute(update(m.Activity).where(m.Activity.id == ids["check"]).values(category=None))
        check = m.Activity(district_id=district.id, sourced_id="check-2", class_id=ids["class"],
                           module_id=ids["unit1"], title="Unit 1 mastery check (new)", score_maximum=10.0,
                           category=CHECK_CATEGORY, status="active")
        s.add(check)
        s.flush()
        _ref(s, district.id, CANVAS_SOURCE, "activity", "805", check.id)
    assert run_recompute(store, district.id, ids["class"]) == 1
    assert gate_items(store)[-1].payload["check_activity_sourced_id"] == "805"
    (row,) = gate_rows(store)  # the old check's gate is gone
    assert row.check_activity_id != ids["check"]

    assert run_recompute(store, district.id, ids["class"]) == 0
    assert len(gate_items(store)) == 5


@pytest.mark.parametrize("kind", ["moodle", "oneroster", "lti"])
def test_no_gate_writes_for_targets_other_than_canvas(store: Store, district: m.District, kind: str) -> None:
    ids = lms_class(store, district.id, kind=kind, name=f"north-{kind}")

    assert run_recompute(store, district.id, ids["class"]) == 0

    assert gate_items(store) == []
    rows = gate_rows(store)
    if kind == "moodle":  # shown to the teacher as a one-time set-up instead
        assert [(r.lms, r.status) for r in rows] == [("moodle", "needs_teacher")]
    else:
        assert rows == []


def test_no_gate_writes_for_a_class_launched_from_an_lti_platform(store: Store, district: m.District) -> None:
    ids = lms_class(store, district.id)
    with store.session() as s:
        platform = m.Platform(district_id=district.id, issuer="https://canvas.instructure.com", client_id="1000",
                              auth_login_url="https://sso/login", auth_token_url="https://sso/token",
                              key_set_url="https://sso/jwks", created_at=NOW)
        s.add(platform)
        s.flush()
        s.execute(update(m.ExternalRef).where(m.ExternalRef.namespace == CANVAS_SOURCE)
                  .values(namespace=f"lti:{platform.id}"))

    assert run_recompute(store, district.id, ids["class"]) == 0
    assert gate_items(store) == [] and gate_rows(store) == []


def test_a_module_canvas_does_not_know_yet_is_reported_not_sent(store: Store, district: m.District) -> None:
    ids = lms_class(store, district.id)
    with store.session() as s:
        s.execute(update(m.ExternalRef).where(m.ExternalRef.kind == "activity").values(status="tobedeleted"))

    assert run_recompute(store, district.id, ids["class"]) == 0

    (row,) = gate_rows(store)
    assert row.status == "failed" and "has not seen the mastery check in Canvas yet" in row.detail
    assert gate_items(store) == []


# --------------------------------------------------------------------------- Canvas: through the outbox


def test_outbox_results_are_recorded_on_the_gate(store: Store, district: m.District) -> None:
    ids = lms_class(store, district.id)
    run_recompute(store, district.id, ids["class"])
    flaky = FakeConnector(CANVAS_SOURCE, push_failures=[UpstreamError("canvas is down", status=503)])

    dispatch(store, flaky)
    (row,) = gate_rows(store)
    assert row.status == "queued" and "tries again" in row.detail and "canvas is down" in row.detail

    dispatch(store, flaky, NOW + timedelta(hours=2))
    (row,) = gate_rows(store)
    assert row.status == "applied" and row.updated_at.replace(tzinfo=UTC) == NOW + timedelta(hours=2)
    (write, _remote), = flaky.writes_log
    assert write.module_sourced_id == "202" and write.min_score == 10.0


def test_a_refused_gate_is_failed_with_the_reason_until_it_changes(store: Store, district: m.District) -> None:
    ids = lms_class(store, district.id)
    run_recompute(store, district.id, ids["class"])
    refusing = FakeConnector(CANVAS_SOURCE, push_failures=[RemoteRejected("Canvas ignored the min_score")])

    dispatch(store, refusing)
    (row,) = gate_rows(store)
    assert row.status == "failed" and row.detail == "Reason: Canvas ignored the min_score"

    assert run_recompute(store, district.id, ids["class"]) == 0  # the same gate is not resent by itself
    with store.session() as s:
        s.execute(update(m.Activity).where(m.Activity.id == ids["check"]).values(score_maximum=20.0))
    assert run_recompute(store, district.id, ids["class"]) == 1
    assert gate_rows(store)[0].status == "queued"


def test_wrong_module_order_is_refused_by_canvas_and_shown_failed(store: Store, district: m.District,
                                                                  rsps: responses.RequestsMock) -> None:
    ids = lms_class(store, district.id)
    run_recompute(store, district.id, ids["class"])
    canvas = CanvasMock(rsps)  # the teacher has since dragged Unit 2 above Unit 1 in Canvas
    canvas.pages("/api/v1/courses/101/modules", [canvas_fixture("modules_101_reordered.json")])

    report = dispatch(store, CanvasConnector(CANVAS_SOURCE, CANVAS, account_id=1, token="t0ken",
                                             sleep=lambda _s: None))

    assert report.dead == 1
    assert not [c for c in rsps.calls if c.request.method == "PUT"]
    (row,) = gate_rows(store)
    assert row.status == "failed"
    assert "module 201 (position 2) cannot be a prerequisite of module 202 (position 1)" in row.detail
    assert "Canvas requires prerequisites to come first" in row.detail


def test_a_gate_is_applied_in_canvas_through_the_outbox(store: Store, district: m.District,
                                                        rsps: responses.RequestsMock) -> None:
    ids = lms_class(store, district.id)
    run_recompute(store, district.id, ids["class"])
    canvas = CanvasMock(rsps)
    canvas.pages("/api/v1/courses/101/modules", [canvas_fixture("modules_101.json")])
    canvas.pages("/api/v1/courses/101/modules/202/items", [canvas_fixture("module_items_202.json")])
    canvas.json(responses.GET, "/api/v1/courses/101/assignments/802", canvas_fixture("assignment_802.json"))
    canvas.json(responses.PUT, "/api/v1/courses/101/modules/202", canvas_fixture("module_202_updated.json"))
    canvas.json(responses.PUT, "/api/v1/courses/101/modules/201/items/3003",
                canvas_fixture("module_item_3003_updated.json"))

    dispatch(store, CanvasConnector(CANVAS_SOURCE, CANVAS, account_id=1, token="t0ken", sleep=lambda _s: None))

    puts = {r.url.split("/api/v1")[1]: form(r) for r in canvas.calls("/api/v1/courses/101") if r.method == "PUT"}
    assert puts["/courses/101/modules/202"] == [("module[prerequisite_module_ids][]", "201")]
    assert puts["/courses/101/modules/201/items/3003"] == [
        ("module_item[completion_requirement][type]", "min_score"),
        ("module_item[completion_requirement][min_score]", "10")]
    assert gate_rows(store)[0].status == "applied"


# --------------------------------------------------------------------------- Moodle


def test_moodle_sections_carry_what_each_activity_requires(rsps: responses.RequestsMock) -> None:
    FakeMoodle(rsps).standard_site()
    connector = MoodleConnector.from_config({"name": "north-moodle", "kind": "moodle", "base_url": MOODLE,
                                             "token": TOKEN, "page_size": 2}, sleep=lambda _s: None)

    modules = {x.sourced_id: x for x in connector.pull(Scope.CONTENT) if isinstance(x, Module)}

    # "Systems quiz" opens on the grade OR a group, so no grade is certain; the label needs no restriction
    assert modules["52"].access_conditions == (("Systems practice", (("9001", 80.0),)), ("Systems quiz", ()))
    assert modules["51"].access_conditions == (("Unit 1 mastery check", ()), ("Worked examples", ()))


def _moodle_sync(app: Any, rsps: responses.RequestsMock, contents: str) -> tuple[Store, int]:
    moodle = FakeMoodle(rsps).standard_site()
    moodle.on("core_course_get_contents", lambda p: moodle_fixture(contents if p["courseid"] == "5"
                                                                   else f"contents_{p['courseid']}"))
    store = get_store(app)
    with store.session() as s:
        district_id = s.scalars(select(m.District.id).where(m.District.slug == "north")).one()
    connector = MoodleConnector.from_config({"name": "north-moodle", "kind": "moodle", "base_url": MOODLE,
                                             "token": TOKEN, "page_size": 2}, sleep=lambda _s: None)
    result = sync.run_sync(store, district_id, "north-moodle", connector, now=datetime.now(UTC),
                           on_applied=on_sync_applied)
    assert result.status == "succeeded", result.message
    return store, district_id


def _teacher_page(app: Any, store: Store, district_id: int) -> str:
    """The class view of Moodle course 5 for its teacher (Moodle user 201), as a launch would open it."""
    with store.session() as s:
        def entity(kind: str, ext: str) -> int:
            return s.scalars(select(m.ExternalRef.entity_id).where(
                m.ExternalRef.namespace == "north-moodle", m.ExternalRef.kind == kind,
                m.ExternalRef.external_id == ext)).one()

        ticket, _row = create_session(s, district_id=district_id, user_sub="201", view="teacher", roles=[],
                                      platform_id=None, deployment_id=None, context_id="5",
                                      person_id=entity("person", "201"), class_id=entity("class", "5"), claims={},
                                      minutes=30, now=datetime.now(UTC))
    page = app.test_client().get(f"/p/teacher?ltik={ticket}")
    assert page.status_code == 200
    return page.get_data(as_text=True)


def test_moodle_gate_set_up_is_shown_until_moodle_enforces_it(app: Any, rsps: responses.RequestsMock) -> None:
    store, district_id = _moodle_sync(app, rsps, "contents_5")
    with store.session() as s:  # the Unit 1 mastery check (grade item 9001) is the class's Trailmark check
        check = s.scalars(select(m.ExternalRef.entity_id).where(
            m.ExternalRef.namespace == "north-moodle", m.ExternalRef.kind == "activity",
            m.ExternalRef.external_id == "9001")).one()
        s.execute(update(m.Activity).where(m.Activity.id == check).values(category=CHECK_CATEGORY))
        class_id = s.get(m.Activity, check).class_id
        recompute(s, district_id, [class_id])

    html = _teacher_page(app, store, district_id)
    gates = text_of(section(html, "lms-gates"))
    assert 'href="#lms-gates"' in html
    assert ("Module “Unit 2: Systems” is not actually restricted in Moodle: students can open it before "
            "mastery.") in gates
    assert "Status: Not restricted in Moodle yet" in gates
    assert "Not restricted yet: Systems practice, Systems quiz." in gates  # 80 % is below the 100 % of mastery
    assert "Opens after the mastery check “Unit 1 mastery check” in Unit 1: Linear equations." in gates
    assert "On the section “Unit 2: Systems”, choose Edit → Edit settings." in gates
    assert "Pick the grade item “Unit 1 mastery check”, tick “must be ≥” and enter 100 %." in gates
    assert 'stores: {"op":"&","c":[{"type":"grade","id":9001,"min":100.0}],"showc":[true]}' in gates
    assert "<h3>Unit 2: Systems</h3>" in section(html, "lms-gates") and "<ol><li>" in section(html, "lms-gates")
    assert gate_items(store) == []  # Moodle's web services cannot set it: nothing is sent

    _moodle_sync(app, rsps, "contents_5_restricted")  # the teacher followed the steps

    gates = text_of(section(_teacher_page(app, store, district_id), "lms-gates"))
    assert "Status: Enforced by Moodle" in gates
    assert "not actually restricted" not in gates
    assert "Every activity in “Unit 2: Systems” needs “Unit 1 mastery check” at 100 % or more" in gates
    assert gate_items(store) == []


def test_canvas_gate_status_and_reason_show_in_the_class_view(app: Any) -> None:
    store = get_store(app)
    with store.session() as s:
        district_id = s.scalars(select(m.District.id).where(m.District.slug == "north")).one()
    ids = lms_class(store, district_id)
    run_recompute(store, district_id, ids["class"])
    dispatch(store, FakeConnector(CANVAS_SOURCE, push_failures=[RemoteRejected(
        "riverside-canvas: module 201 (position 2) cannot be a prerequisite of module 202 (position 1)")]))
    with store.session() as s:
        ticket, _row = create_session(s, district_id=district_id, user_sub="t1", view="teacher", roles=[],
                                      platform_id=None, deployment_id=None, context_id="101",
                                      person_id=ids["teacher"], class_id=ids["class"], claims={}, minutes=30,
                                      now=datetime.now(UTC))

    gates = text_of(section(app.test_client().get(f"/p/teacher?ltik={ticket}").get_data(as_text=True),
                            "lms-gates"))

    assert "Unit 2: Inequalities Opens after the mastery check “Unit 1 mastery check” in Unit 1: Linear" in gates
    assert "Status: Not set in Canvas" in gates
    assert "cannot be a prerequisite of module 202 (position 1)" in gates
    assert "Keep the check's grade posting automatic" in gates
    assert "not actually restricted" not in gates


def test_the_gate_key_follows_the_content_only() -> None:
    setup = {"class": "101", "module": "202", "check": "802", "prerequisites": ["201"], "min_score": 10.0,
             "positions": [1, 2]}
    key = lms_gates.gate_key(outbox.Target(source_id=3), setup)
    assert key == lms_gates.gate_key(outbox.Target(source_id=3), dict(reversed(list(setup.items()))))
    assert key != lms_gates.gate_key(outbox.Target(source_id=3), {**setup, "min_score": 8.0})
    assert key.startswith("gate:source:3:101:202:802:") and len(key) <= 255
