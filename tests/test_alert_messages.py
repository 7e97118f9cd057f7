"""Alert messages through the LMS: wording, settings, enqueue-once per level and audience, and delivery through the
outbox to Canvas (Conversations) and Moodle (core_message_send_instant_messages)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import responses
from sqlalchemy import func, select

from connectors import outbox
from connectors.canvas import CanvasConnector
from connectors.moodle import MoodleConnector
from plugin import alert_messages
from plugin.alert_messages import AlertFacts, MessageSettings, compose, message_key, not_sent_reasons
from plugin.config import ConfigError, load_config
from plugin.learning.alerts import AlertKind, Audience
from plugin.progress import recompute
from plugin.store import models as m
from plugin.store.db import Store
from tests.connectors.moodle.moodle_fakes import FakeMoodle
from tests.connectors.moodle.moodle_fakes import fixture as moodle_fixture

FIXTURES = Path(__file__).parent / "fixtures"
CANVAS = "https://riverside.instructure.com"
TERM_START, TERM_END = date(2026, 9, 1), date(2026, 12, 18)
DUE = ("2026-10-01", "2026-10-15", "2026-11-02", "2026-11-20")  # module due dates of the pace plan
OCT_3 = datetime(2026, 10, 3, 8, 0, tzinfo=UTC)  # 1 module, 2 days behind: level 1
OCT_9 = datetime(2026, 10, 9, 8, 0, tzinfo=UTC)  # 8 days behind: level 2
OCT_16 = datetime(2026, 10, 16, 8, 0, tzinfo=UTC)  # 15 days behind: level 3
TEACHERS_ONLY = {"teacher": {"kinds": ["behind", "stalled", "far_ahead"], "min_level": 1},
                 "student": {"kinds": [], "min_level": 1}, "parent": {"kinds": [], "min_level": 1}}
EVERYONE = {"teacher": {"kinds": ["behind"], "min_level": 1}, "student": {"kinds": ["behind"], "min_level": 1},
            "parent": {"kinds": ["behind"], "min_level": 1}, "signin_url": "https://trailmark.north.example/p/signin/north"}


def canvas_fixture(name: str) -> Any:
    return json.loads((FIXTURES / "canvas" / name).read_text())


# --------------------------------------------------------------------------- a class in the store


@dataclass
class World:
    district_id: int
    class_id: int
    source_id: int
    people: dict[str, int] = field(default_factory=dict)  # key → canonical person id


def build(store: Store, *, alert_settings: dict[str, Any] | None = None, source_kind: str = "canvas",
          source_name: str = "north-canvas", lms_ids: dict[str, str] | None = None, platform: bool = False) -> World:
    """One class with a teacher, two students (Ava, Ben) and their parents (Carla, Dan), four modules due in
    October and November, no module completed; every row known to one source (or LTI platform) by ``lms_ids``."""
    now = datetime(2026, 9, 1, tzinfo=UTC)
    lms_ids = {"class": "101", "teacher": "501", "ava": "601", "ben": "602", "carla": "701", "dan": "702"} \
        if lms_ids is None else lms_ids
    with store.session() as s:
        settings = {"match_on": ["sis_id"]}
        if alert_settings is not None:
            settings["alert_messages"] = alert_settings
        district = m.District(slug="north", name="North District", settings=settings, created_at=now)
        s.add(district)
        s.flush()
        did = district.id
        source = m.Source(district_id=did, name=source_name, kind=source_kind, created_at=now)
        s.add(source)
        namespace = source_name
        if platform:
            p = m.Platform(district_id=did, issuer="https://lms.north.example", client_id="tm", name="North LMS",
                           auth_login_url="https://lms.north.example/auth", key_set_url="https://lms.north.example/jwks",
                           auth_token_url="https://lms.north.example/token", created_at=now)
            s.add(p)
            s.flush()
            namespace = f"lti:{p.id}"
        term = m.AcademicSession(district_id=did, sourced_id="term-fall", title="Fall", start_date=TERM_START,
                                 end_date=TERM_END, updated_at=now)
        s.add(term)
        s.flush()
        klass = m.Class(district_id=did, sourced_id="class-alg1", title="Algebra I - Period 2", term_id=term.id,
                        updated_at=now)
        s.add(klass)
        s.flush()
        world = World(did, klass.id, source.id)
        for key, (given, family, role) in {"teacher": ("Maria", "Lopez", "teacher"), "ava": ("Ava", "Chen", "student"),
                                           "ben": ("Ben", "Ortiz", "student"), "carla": ("Carla", "Chen", "parent"),
                                           "dan": ("Dan", "Ortiz", "parent")}.items():
            person = m.Person(district_id=did, sourced_id=f"p-{key}", role=role, given_name=given, family_name=family,
                              updated_at=now)
            s.add(person)
            s.flush()
            world.people[key] = person.id
            if role != "parent":
                s.add(m.Enrollment(district_id=did, sourced_id=f"e-{key}", class_id=klass.id, person_id=person.id,
                                   role=role, updated_at=now))
            if key in lms_ids:
                s.add(m.ExternalRef(district_id=did, kind="person", namespace=namespace, external_id=lms_ids[key],
                                    entity_id=person.id))
        if "class" in lms_ids:
            s.add(m.ExternalRef(district_id=did, kind="class", namespace=namespace, external_id=lms_ids["class"],
                                entity_id=klass.id))
        for guardian, child in (("carla", "ava"), ("dan", "ben")):
            s.add(m.GuardianLink(district_id=did, sourced_id=f"g-{guardian}", guardian_id=world.people[guardian],
                                 student_id=world.people[child], updated_at=now))
        modules = []
        for i in range(4):
            module = m.Module(district_id=did, sourced_id=f"mod-{i + 1}", class_id=klass.id, title=f"Unit {i + 1}",
                              position=i + 1, updated_at=now)
            s.add(module)
            s.flush()
            modules.append(module.id)
        s.add(m.PacePlanRecord(district_id=did, class_id=klass.id, due_edits=dict(zip(map(str, modules), DUE,
                                                                                         strict=True)),
                               skip_weekends=False, updated_at=now))
    return world


def run(store: Store, world: World, now: datetime) -> Any:
    with store.session() as s:
        return recompute(s, world.district_id, [world.class_id], now=now)


def items(store: Store) -> list[m.OutboxItem]:
    with store.session() as s:
        rows = list(s.scalars(select(m.OutboxItem).order_by(m.OutboxItem.id)))
        s.expunge_all()
    return rows


def alerts(store: Store) -> list[m.AlertRecord]:
    with store.session() as s:
        rows = list(s.scalars(select(m.AlertRecord).order_by(m.AlertRecord.person_id)))
        s.expunge_all()
    return rows


def key_audiences(rows: list[m.OutboxItem]) -> list[tuple[int, str]]:
    return sorted((int(r.idempotency_key.split(":")[2]), r.idempotency_key.split(":")[3]) for r in rows)


# --------------------------------------------------------------------------- composing


def facts(**kw: Any) -> AlertFacts:
    base: dict[str, Any] = {"kind": AlertKind.BEHIND, "level": 1, "student_name": "Ava Chen",
                            "student_given_name": "Ava", "class_title": "Algebra I",
                            "detail": "2 modules (9 days) behind the minimum pace", "completed": 3, "total": 10,
                            "modules_behind": 2, "days_behind": 9, "next_due": date(2026, 10, 1)}
    base.update(kw)
    return AlertFacts(**base)


def test_teacher_message_says_who_where_how_far_and_what_next() -> None:
    msg = compose(facts(), Audience.TEACHER)
    assert msg.subject == "Ava Chen is behind the minimum pace in Algebra I"
    assert msg.body.splitlines()[0] == ("Ava Chen is 2 modules (9 days) behind the minimum pace in Algebra I: 3 of 10 "
                                        "modules done, 5 expected by today.")
    assert "The oldest unfinished module was due on Thursday, October 1." in msg.body
    assert "What to do next: check in with Ava" in msg.body and "extra days in the pace plan" in msg.body
    assert "Open Trailmark from the Algebra I course to see the alerts inbox and Ava's path." in msg.body


def test_escalated_levels_read_still_and_far_behind() -> None:
    assert compose(facts(level=2), Audience.TEACHER).subject == "Ava Chen is still behind the minimum pace in Algebra I"
    far = compose(facts(level=3, days_behind=16), Audience.TEACHER)
    assert far.subject == "Ava Chen is far behind the minimum pace in Algebra I"
    assert "Ava has been behind for two weeks or more." in far.body


def test_student_message_speaks_to_the_student() -> None:
    msg = compose(facts(level=2), Audience.STUDENT)
    assert msg.subject == "You are still behind the minimum pace in Algebra I"
    assert msg.body.startswith("You are 2 modules (9 days) behind the minimum pace in Algebra I")
    assert "You have been behind for a week or more." in msg.body
    assert "work on your oldest unfinished module first" in msg.body
    assert "To reach the teacher, write to them directly." in msg.body


def test_parent_message_has_the_sign_in_link_when_one_is_known() -> None:
    with_link = compose(facts(), Audience.PARENT, signin_url="https://tm.example/p/signin/north")
    assert with_link.subject == "Ava Chen is behind the minimum pace in Algebra I"
    assert "ask Ava about the plan to catch up" in with_link.body
    assert "See the details in Trailmark: https://tm.example/p/signin/north" in with_link.body
    assert "https://" not in compose(facts(), Audience.PARENT).body
    assert "\n\n\n" not in compose(facts(), Audience.PARENT).body


def test_far_ahead_and_stalled_messages() -> None:
    ahead = compose(facts(kind=AlertKind.FAR_AHEAD, modules_behind=0, days_behind=0, modules_ahead=3, days_ahead=11,
                          completed=8), Audience.TEACHER)
    assert ahead.subject == "Ava Chen is far ahead of the minimum pace in Algebra I"
    assert "3 modules (11 days) ahead of the minimum pace in Algebra I: 8 of 10 modules done." in ahead.body
    assert "enrichment" in ahead.body
    stalled = compose(facts(kind=AlertKind.STALLED, modules_behind=0, detail="no module completed in 12 days"),
                      Audience.STUDENT)
    assert stalled.subject == "You have not completed a module in Algebra I recently"
    assert ("You are within the minimum pace in Algebra I (3 of 10 modules done), but there has been no module "
            "completed in 12 days.") in stalled.body


@pytest.mark.parametrize("audience", list(Audience))
@pytest.mark.parametrize("kind", list(AlertKind))
def test_every_message_is_complete_and_names_one_student(audience: Audience, kind: AlertKind) -> None:
    msg = compose(facts(kind=kind, modules_ahead=2), audience, signin_url="https://tm.example/p/signin/north")
    assert msg.subject and "{" not in msg.body and "None" not in msg.body
    assert ("You" in msg.subject) == (audience is Audience.STUDENT)
    assert "Ben" not in msg.body and msg.body.endswith(".")


# --------------------------------------------------------------------------- settings


def test_settings_default_to_teachers_only_and_a_bad_value_is_a_clear_config_error(tmp_path: Path) -> None:
    [district] = load_config(env={})["districts"]
    assert district["alert_messages"]["teacher"] == {"kinds": ["behind", "stalled", "far_ahead"], "min_level": 1}
    assert district["alert_messages"]["student"]["kinds"] == [] == district["alert_messages"]["parent"]["kinds"]
    path = tmp_path / "district.toml"
    path.write_text('[[districts]]\nslug = "north"\nname = "North"\n[districts.alert_messages]\n'
                    'parent = { kinds = ["late"], min_level = 4 }\nguardian = { kinds = [] }\n')
    with pytest.raises(ConfigError) as caught:
        load_config(env={"TRAILMARK_CONFIG": str(path)})
    text = str(caught.value)
    assert ("districts[0].alert_messages.parent.kinds[0]: Must be one of: behind, stalled, far_ahead. "
            "(got 'late')") in text
    assert "districts[0].alert_messages.parent.min_level" in text and "(got 4)" in text
    assert "districts[0].alert_messages.guardian: Unknown field." in text


def test_settings_reach_the_district_with_the_parents_sign_in_link(app_config: dict[str, Any]) -> None:
    from plugin.app import create_app
    from plugin.cli import bootstrap
    from plugin.store.db import get_store

    config = {**app_config, "mail": {"enabled": True},
              "districts": [{"slug": "north", "name": "North District",
                             "alert_messages": {"parent": {"kinds": ["behind"], "min_level": 3}}}]}
    app = create_app(config, env={})
    bootstrap(app)
    try:
        with get_store(app).session() as s:
            district = s.scalars(select(m.District).where(m.District.slug == "north")).one()
            settings = MessageSettings.of(district.settings)
    finally:
        get_store(app).dispose()
    assert settings.audiences("behind", 3) == (Audience.TEACHER, Audience.PARENT)
    assert settings.audiences("behind", 2) == (Audience.TEACHER,)
    assert settings.audiences("far_ahead", 3) == (Audience.TEACHER,)
    assert settings.signin_url == "http://localhost/p/signin/north"


# --------------------------------------------------------------------------- queueing


def test_each_alert_is_queued_once_per_level_and_audience(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY)
    first = run(store, world, OCT_3)
    again = run(store, world, OCT_3)
    later_same_level = run(store, world, datetime(2026, 10, 5, 8, 0, tzinfo=UTC))

    rows = items(store)
    assert (first.messages_queued, again.messages_queued, later_same_level.messages_queued) == (2, 0, 0)
    assert [(r.kind, r.source_id, r.status) for r in rows] == [("message", world.source_id, "pending")] * 2
    ava, ben = alerts(store)
    assert {r.idempotency_key for r in rows} == {message_key(ava.id, 1, "teacher"), message_key(ben.id, 1, "teacher")}
    assert (ava.level, ava.notified_level) == (1, 1)
    payload = next(r.payload for r in rows if r.idempotency_key == message_key(ava.id, 1, "teacher"))
    assert payload["recipient_sourced_ids"] == ["501"] and payload["class_sourced_id"] == "101"
    assert payload["subject"] == "Ava Chen is behind the minimum pace in Algebra I - Period 2"
    assert "Ben" not in payload["body"]


def test_escalation_sends_again_at_the_new_level(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY)
    run(store, world, OCT_3)
    escalated = run(store, world, OCT_9)
    run(store, world, OCT_9)
    far = run(store, world, OCT_16)

    assert (escalated.messages_queued, far.messages_queued) == (2, 2)
    assert key_audiences(items(store)) == [(1, "teacher")] * 2 + [(2, "teacher")] * 2 + [(3, "teacher")] * 2
    subjects = [r.payload["subject"] for r in items(store) if r.payload["recipient_sourced_ids"] == ["501"]]
    assert "Ava Chen is far behind the minimum pace in Algebra I - Period 2" in subjects
    assert all((a.level, a.notified_level) == (3, 3) for a in alerts(store))


def test_resolved_alerts_send_nothing(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY)
    run(store, world, OCT_3)
    with store.session() as s:  # the teacher moves every due date to December: both students are on pace again
        plan = s.scalars(select(m.PacePlanRecord)).one()
        plan.due_edits = {k: "2026-12-0" + str(i + 1) for i, k in enumerate(plan.due_edits)}
        s.add(m.AlertRecord(district_id=world.district_id, class_id=world.class_id,
                            person_id=world.people["ava"], kind="behind", level=2, detail="resolved earlier",
                            opened_at=OCT_3, updated_at=OCT_3, resolved_at=OCT_3))
    summary = run(store, world, OCT_16)

    assert summary.alerts_resolved == 2 and summary.messages_queued == 0
    assert len(items(store)) == 2  # only the two sent when the alerts opened


def test_messages_still_waiting_when_an_alert_resolves_are_withdrawn(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY)
    run(store, world, OCT_3)
    with store.session() as s:  # one message went out; the other is still waiting when the students catch up
        first = s.scalars(select(m.OutboxItem).order_by(m.OutboxItem.id)).first()
        first.status = "sent"
        plan = s.scalars(select(m.PacePlanRecord)).one()
        plan.due_edits = {k: "2026-12-0" + str(i + 1) for i, k in enumerate(plan.due_edits)}
    summary = run(store, world, OCT_9)

    assert summary.alerts_resolved == 2
    assert sorted(r.status for r in items(store)) == ["cancelled", "sent"]
    withdrawn = next(r for r in items(store) if r.status == "cancelled")
    assert "resolved" in withdrawn.last_error and withdrawn.payload["recipient_sourced_ids"] == ["501"]


def test_parent_hears_only_about_their_own_child(store: Store) -> None:
    world = build(store, alert_settings=EVERYONE)
    summary = run(store, world, OCT_3)

    assert summary.messages_queued == 6 and summary.messages_skipped == 0
    by_recipient = {tuple(r.payload["recipient_sourced_ids"]): r.payload for r in items(store)}
    carla, dan = by_recipient[("701",)], by_recipient[("702",)]
    assert carla["subject"] == "Ava Chen is behind the minimum pace in Algebra I - Period 2"
    assert "Ava" in carla["body"] and "Ben" not in carla["body"] and "Ortiz" not in carla["body"]
    assert dan["subject"] == "Ben Ortiz is behind the minimum pace in Algebra I - Period 2"
    assert "Ava" not in dan["body"] and "Chen" not in dan["body"]
    assert "https://trailmark.north.example/p/signin/north" in carla["body"]
    assert by_recipient[("601",)]["subject"] == "You are behind the minimum pace in Algebra I - Period 2"
    assert "Ben" not in by_recipient[("601",)]["body"]


def test_settings_off_send_nothing_and_apply_from_the_next_level(store: Store) -> None:
    off = {name: {"kinds": [], "min_level": 1} for name in ("teacher", "student", "parent")}
    world = build(store, alert_settings=off)
    summary = run(store, world, OCT_3)
    assert summary.messages_queued == 0 and items(store) == []
    assert all(a.notified_level == 1 for a in alerts(store))

    with store.session() as s:  # the district turns teacher messages on
        district = s.get(m.District, world.district_id)
        district.settings = {**district.settings, "alert_messages": TEACHERS_ONLY}
    assert run(store, world, OCT_3).messages_queued == 0  # alerts already open at their level are not sent
    assert run(store, world, OCT_9).messages_queued == 2
    assert key_audiences(items(store)) == [(2, "teacher")] * 2


def test_students_below_the_audiences_level_wait_for_it(store: Store) -> None:
    world = build(store, alert_settings={**TEACHERS_ONLY, "student": {"kinds": ["behind"], "min_level": 2}})
    run(store, world, OCT_3)
    run(store, world, OCT_9)
    assert key_audiences(items(store)) == [(1, "teacher")] * 2 + [(2, "student"), (2, "student"),
                                                                  (2, "teacher"), (2, "teacher")]


def test_people_without_an_lms_id_are_skipped_and_counted(store: Store) -> None:
    world = build(store, alert_settings=EVERYONE,
                  lms_ids={"class": "101", "teacher": "501", "ava": "601", "carla": "701"})
    summary = run(store, world, OCT_3)

    assert summary.messages_skipped == 2  # Ben and his father Dan are not in the LMS
    assert summary.messages_queued == 4  # Ava's three, and the teacher's about Ben
    recipients = sorted(tuple(r.payload["recipient_sourced_ids"]) for r in items(store))
    assert recipients == [("501",), ("501",), ("601",), ("701",)]


def test_a_class_without_an_lms_queues_nothing_and_says_so(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY, source_kind="oneroster-rest", source_name="sis")
    summary = run(store, world, OCT_3)

    assert summary.messages_queued == 0 and items(store) == []
    assert summary.messages_held == [f"class {world.class_id} (Algebra I - Period 2): 2 alerts not sent through an "
                                     "LMS: the class has no LMS source or platform to write to"]
    assert run(store, world, OCT_3).messages_held == []  # said once per alert and level
    with store.session() as s:  # and the teacher's inbox says why
        pairs = [(a.id, a.kind, a.level) for a in alerts(store)]
        reasons = not_sent_reasons(s, world.district_id, world.class_id, pairs)
    assert set(reasons.values()) == {"Not sent: the class has no LMS connection to send through"}


def test_an_lti_only_platform_cannot_message(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY, platform=True)
    summary = run(store, world, OCT_3)

    assert summary.messages_queued == 0 and items(store) == []
    assert summary.messages_held == [f"class {world.class_id} (Algebra I - Period 2): 2 alerts not sent through an "
                                     "LMS: LTI platform 'North LMS' cannot send messages"]
    with store.session() as s:
        reasons = not_sent_reasons(s, world.district_id, world.class_id,
                                   [(a.id, a.kind, a.level) for a in alerts(store)])
    assert set(reasons.values()) == {"Not sent: this LMS connection cannot send messages"}


def test_an_lti_source_cannot_message(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY, source_kind="lti", source_name="north-lti")
    summary = run(store, world, OCT_3)
    assert items(store) == [] and "source 'north-lti' (lti) cannot send messages" in summary.messages_held[0]


def test_a_district_without_stored_settings_messages_teachers(store: Store) -> None:
    world = build(store, alert_settings=None)
    assert run(store, world, OCT_3).messages_queued == 2
    assert key_audiences(items(store)) == [(1, "teacher")] * 2



def test_an_invalid_stored_setting_sends_nothing_and_is_reported(store: Store) -> None:
    world = build(store, alert_settings={"teacher": {"kinds": ["late"]}})
    summary = run(store, world, OCT_3)

    assert items(store) == [] and summary.messages_queued == 0
    assert summary.problems == ["alert messages are off: the district's alert_messages setting is invalid "
                                "({'teacher': {'kinds': {0: ['Must be one of: behind, stalled, far_ahead.']}}})"]
    assert all(a.notified_level == 0 for a in alerts(store))  # sent once the setting is fixed


# --------------------------------------------------------------------------- through the outbox to the LMS


def test_canvas_alert_goes_through_the_outbox_as_a_private_conversation(store: Store) -> None:
    world = build(store, alert_settings={**TEACHERS_ONLY, "parent": {"kinds": ["behind"], "min_level": 1}})
    run(store, world, OCT_3)
    connector = CanvasConnector("north-canvas", CANVAS, account_id=1, token="canvas-token-s3cr3t",
                                sleep=lambda _s: None)

    with responses.RequestsMock() as rsps:
        rsps.add(responses.POST, f"{CANVAS}/api/v1/conversations",
                 json=canvas_fixture("conversations_alert_created.json"), status=201)
        report = outbox.dispatch_due(store, lambda target: connector, OCT_3)
        posts = [parse_qsl(c.request.body) for c in rsps.calls]

    assert report.sent == 4 and report.dead == 0
    ava = alerts(store)[0]
    to_teacher = next(p for p in posts if ("recipients[]", "501") in p and "Ava Chen" in dict(p)["subject"])
    assert to_teacher[0] == ("recipients[]", "501")
    fields = dict(to_teacher)
    assert fields["subject"] == "Ava Chen is behind the minimum pace in Algebra I - Period 2"
    assert fields["body"].startswith("Ava Chen is 1 module (2 days) behind the minimum pace in Algebra I - Period 2: "
                                     "0 of 4 modules done, 1 expected by today.")
    assert fields["group_conversation"] == "false" and fields["context_code"] == "course_101"
    to_carla = dict(next(p for p in posts if ("recipients[]", "701") in p))
    assert "Ben" not in to_carla["body"]
    with store.session() as s:
        sent = s.scalars(select(m.OutboxItem).where(
            m.OutboxItem.idempotency_key == message_key(ava.id, 1, "teacher"))).one()
        assert (sent.status, sent.remote_id) == ("sent", "3107")
        shown = alert_messages.delivery(s, world.district_id, {ava.id: ava.level})
    assert [d.label for d in shown[ava.id].deliveries] == ["Teacher: sent", "Parent: sent"]

    run(store, world, OCT_3)  # a later recompute sends nothing again
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(m.OutboxItem)) == 4


def test_moodle_alert_goes_through_the_outbox_as_an_instant_message(store: Store) -> None:
    world = build(store, alert_settings=TEACHERS_ONLY, source_kind="moodle", source_name="north-moodle",
                  lms_ids={"class": "5", "teacher": "31", "ava": "101", "ben": "102"})
    run(store, world, OCT_3)
    answer = moodle_fixture("send_instant_messages_alert")
    blocked = moodle_fixture("send_instant_messages")[1]

    with responses.RequestsMock() as rsps:
        moodle = FakeMoodle(rsps)
        moodle.on("core_webservice_get_site_info", moodle_fixture("site_info"))
        deliveries = iter([answer, [blocked]])

        def send(params: dict[str, str]) -> Any:
            result = next(deliveries)
            return [{**result[0], "clientmsgid": params["messages[0][clientmsgid]"]}]

        moodle.on("core_message_send_instant_messages", send)
        connector = MoodleConnector.from_config({"name": "north-moodle", "kind": "moodle", "base_url": moodle_base(),
                                                 "token": "0123456789abcdef0123456789abcdef"}, sleep=lambda _s: None)
        report = outbox.dispatch_due(store, lambda target: connector, OCT_3)

    assert (report.sent, report.dead) == (1, 1)
    [first, second] = moodle.params_of("core_message_send_instant_messages")
    assert first["messages[0][touserid]"] == "31" and first["messages[0][textformat]"] == "2"
    assert first["messages[0][text]"].startswith("Ava Chen is behind the minimum pace in Algebra I - Period 2\n\n"
                                                 "Ava Chen is 1 module (2 days) behind")
    assert "Ben" not in first["messages[0][text]"]
    assert second["messages[0][text]"].startswith("Ben Ortiz is behind")
    ava, ben = alerts(store)
    with store.session() as s:
        shown = alert_messages.delivery(s, world.district_id, {ava.id: 1, ben.id: 1})
    assert shown[ava.id].deliveries[0].label == "Teacher: sent"
    failed = shown[ben.id].deliveries[0]
    assert failed.status == "failed" and "blocked you" in (failed.reason or "")


def moodle_base() -> str:
    from tests.connectors.moodle.moodle_fakes import BASE

    return BASE


# --------------------------------------------------------------------------- the teacher's alerts inbox


def test_alerts_inbox_shows_what_went_through_the_lms(client: Any) -> None:
    from plugin.store.db import get_store
    from tests.htmlforms import follow_sandbox_launch

    resp = follow_sandbox_launch(client, "teacher")
    assert resp.status_code == 303
    page_url = resp.headers["Location"]
    store = get_store(client.application)
    with store.session() as s:
        open_alerts = list(s.scalars(select(m.AlertRecord).where(m.AlertRecord.resolved_at.is_(None))
                                     .order_by(m.AlertRecord.level.desc(), m.AlertRecord.id)))
        assert len(open_alerts) >= 2
        first, second = open_alerts[0], open_alerts[1]
        platform = s.scalars(select(m.Platform)).first()
        now = datetime.now(UTC)
        for alert, audience, status, error in ((first, "teacher", "sent", None),
                                                (first, "parent", "dead", "RemoteRejected: user 9 blocked messages"),
                                                (second, "teacher", "pending", None)):
            s.add(m.OutboxItem(district_id=alert.district_id, platform_id=platform.id, kind="message",
                               idempotency_key=message_key(alert.id, alert.level, audience), payload={},
                               status=status, attempts=1 if status != "pending" else 0, last_error=error,
                               next_attempt_at=now, created_at=now))
    html = client.get(page_url).get_data(as_text=True)
    section = html[html.index('id="alerts"'):html.index("</section>", html.index('id="alerts"'))]
    assert "Through the LMS" in section
    assert "Teacher: sent" in section
    assert "Parent: failed (RemoteRejected: user 9 blocked messages)" in section
    assert "Teacher: queued" in section
    # the third alert has no message: the sandbox LMS is reached through LTI Advantage, which has no messaging
    assert "Not sent: this LMS connection cannot send messages" in section
    with store.session() as s:
        district = s.get(m.District, first.district_id)
        district.settings = {**(district.settings or {}), "alert_messages": {"teacher": {"kinds": ["behind"]}}}
    html = client.get(page_url).get_data(as_text=True)
    section = html[html.index('id="alerts"'):html.index("</section>", html.index('id="alerts"'))]
    assert "Off for this alert in the district&#39;s settings" in section  # far ahead: teachers hear only of behind
