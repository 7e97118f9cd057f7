"""The outbox under injected faults: an LMS down for an hour, dead letters, idempotent enqueue."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from connectors import outbox
from connectors.base import (
    AuthError,
    Capability,
    ConfigurationError,
    GateWrite,
    MessageWrite,
    RateLimited,
    RemoteRejected,
    ScoreWrite,
    UpstreamError,
)
from connectors.fake import FakeConnector
from plugin.store import models
from plugin.store.db import Store

NOW = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def target(db: Store) -> tuple[int, outbox.Target]:
    with db.session() as session:
        d = models.District(slug="north", name="North", settings={}, created_at=NOW)
        session.add(d)
        session.flush()
        s = models.Source(district_id=d.id, name="canvas", kind="canvas", cursor={}, consecutive_failures=0,
                          created_at=NOW)
        session.add(s)
        session.flush()
        return d.id, outbox.Target(source_id=s.id)


def score(n: int, when: datetime = NOW) -> ScoreWrite:
    return ScoreWrite("class-1", "quiz-1", f"student-{n}", float(n % 10), 10.0, when, comment=None)


def items(db: Store) -> list[models.OutboxItem]:
    with db.session() as session:
        return list(session.scalars(select(models.OutboxItem).order_by(models.OutboxItem.id)))


def enqueue_scores(db: Store, district_id: int, tgt: outbox.Target, n: int) -> list[ScoreWrite]:
    writes = [score(i) for i in range(n)]
    with db.session() as session:
        for w in writes:
            assert outbox.enqueue(session, district_id, tgt, w, outbox.score_key(tgt, w), now=NOW)
    return writes


def test_payloads_round_trip() -> None:
    writes = [
        score(3),
        GateWrite("class-1", "mod-2", ("mod-1",), check_activity_sourced_id="quiz-1", min_score=8.0),
        MessageWrite(("t-1", "p-9"), "Alert", "Below pace", class_sourced_id="class-1"),
    ]
    for w in writes:
        assert outbox.from_payload(outbox.to_payload(w)) == w
    assert outbox.to_payload(writes[0])["timestamp"] == NOW.isoformat()
    with pytest.raises(ValueError):
        outbox.from_payload({"type": "telegram"})


def test_enqueue_is_idempotent(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    w = score(1)
    with db.session() as session:
        assert outbox.enqueue(session, district_id, tgt, w, "key-1", now=NOW) is True
        assert outbox.enqueue(session, district_id, tgt, w, "key-1", now=NOW) is False
    with db.session() as session:
        assert outbox.enqueue(session, district_id, tgt, score(2), "key-1", now=NOW) is False
    [item] = items(db)
    assert item.kind == "score" and item.status == "pending" and item.payload["person_sourced_id"] == "student-1"


def test_an_lms_down_for_an_hour_gets_everything_exactly_once(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    writes = enqueue_scores(db, district_id, tgt, 30)
    down_until = NOW + timedelta(hours=1)
    clock = {"now": NOW}

    def failing_while_down(write: object, call: int) -> Exception | None:
        return UpstreamError("503 Service Unavailable") if clock["now"] < down_until else None

    lms = FakeConnector("canvas", push_failures=failing_while_down)
    rng = random.Random(4)
    t = NOW
    while t < NOW + timedelta(hours=4):
        clock["now"] = t
        outbox.dispatch_due(db, lambda _t: lms, t, limit=7, rng=rng)
        t += timedelta(seconds=30)

    arrived = [w for w, _ in lms.writes_log]
    assert len(arrived) == len(writes) and set(arrived) == set(writes)  # every write arrived, none twice
    assert lms.push_calls > len(writes)  # and the outage was real
    rows = items(db)
    assert {r.status for r in rows} == {"sent"}
    assert all(r.remote_id and r.remote_id.startswith("canvas-") for r in rows)
    assert max(r.attempts for r in rows) >= 5  # 1, 2, 4, 8, 16, 32 minutes …
    assert all(r.sent_at is not None and r.sent_at.replace(tzinfo=UTC) >= down_until for r in rows)


def test_failure_for_the_first_attempts_then_delivery(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    writes = enqueue_scores(db, district_id, tgt, 3)
    lms = FakeConnector("canvas", push_failures=5)  # the first five pushes fail
    t = NOW
    for _ in range(200):
        outbox.dispatch_due(db, lambda _t: lms, t, rng=random.Random(1))
        t += timedelta(minutes=1)
    assert len(lms.writes_log) == 3 and {w for w, _ in lms.writes_log} == set(writes)


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(0)
    delays = [outbox.backoff(n, rng).total_seconds() for n in range(1, 9)]
    for n, d in enumerate(delays, start=1):
        base = min(60 * 2 ** (n - 1), 3600)
        assert base * 0.8 <= d <= base * 1.2
    assert outbox.backoff(1, rng, retry_after=900).total_seconds() >= 900


def test_rate_limited_waits_for_retry_after(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 1)
    lms = FakeConnector("canvas", push_failures=[RateLimited("slow down", retry_after=600)])
    report = outbox.dispatch_due(db, lambda _t: lms, NOW, rng=random.Random(2))
    assert report.retried == 1
    [item] = items(db)
    assert item.status == "pending" and item.attempts == 1 and "RateLimited" in (item.last_error or "")
    assert item.next_attempt_at.replace(tzinfo=UTC) >= NOW + timedelta(seconds=600)
    assert outbox.dispatch_due(db, lambda _t: lms, NOW + timedelta(seconds=300)).claimed == 0
    assert outbox.dispatch_due(db, lambda _t: lms, NOW + timedelta(seconds=800)).sent == 1


@pytest.mark.parametrize("error", [RemoteRejected("grade out of range"), AuthError("token revoked"),
                                   ConfigurationError("no course")])
def test_refusals_are_dead_lettered_with_the_reason(db: Store, target: tuple[int, outbox.Target],
                                                    error: Exception) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 1)
    lms = FakeConnector("canvas", push_failures=[error])
    report = outbox.dispatch_due(db, lambda _t: lms, NOW)
    assert report.dead == 1
    [item] = items(db)
    assert item.status == "dead" and item.attempts == 1
    assert type(error).__name__ in (item.last_error or "") and str(error) in (item.last_error or "")
    assert outbox.dispatch_due(db, lambda _t: lms, NOW + timedelta(days=1)).claimed == 0

    with db.session() as session:
        assert outbox.retry_dead(session, item.id, now=NOW + timedelta(days=1))
        assert not outbox.retry_dead(session, item.id)  # no longer dead
    assert outbox.dispatch_due(db, lambda _t: lms, NOW + timedelta(days=1)).sent == 1
    [item] = items(db)
    assert item.status == "sent" and len(lms.writes_log) == 1


def test_gives_up_after_max_attempts(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 1)
    lms = FakeConnector("canvas", push_failures=1000)
    t = NOW
    for _ in range(12):
        outbox.dispatch_due(db, lambda _t: lms, t, max_attempts=4, rng=random.Random(3))
        t += timedelta(hours=2)
    [item] = items(db)
    assert item.status == "dead" and item.attempts == 4
    assert (item.last_error or "").startswith("gave up after 4 attempts")
    assert lms.push_calls == 4
    with db.session() as session:
        assert outbox.summary(session, district_id) == {"dead": 1}


def test_a_connector_without_the_capability_dead_letters(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    with db.session() as session:
        outbox.enqueue(session, district_id, tgt, MessageWrite(("t-1",), "Hi", "Body"), "msg-1", now=NOW)
    roster_only = FakeConnector("sis", capabilities={Capability.READ_ROSTER})
    assert outbox.dispatch_due(db, lambda _t: roster_only, NOW).dead == 1
    [item] = items(db)
    assert "cannot write messages" in (item.last_error or "")


def test_an_unbuildable_connector_dead_letters_its_items(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 2)

    def broken(_t: outbox.Target) -> FakeConnector:
        raise ConfigurationError("source 'canvas' is no longer configured")

    assert outbox.dispatch_due(db, broken, NOW).dead == 2


def test_a_claimed_item_is_not_pushed_twice_by_another_dispatcher(db: Store,
                                                                  target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 1)
    lms = FakeConnector("canvas")
    claimed = outbox._claim(db, NOW, 10)
    assert len(claimed) == 1
    assert outbox._claim(db, NOW, 10) == []  # leased
    # the first dispatcher died mid-push: after the lease the item is due again
    assert outbox.dispatch_due(db, lambda _t: lms, NOW + outbox.CLAIM_LEASE).sent == 1


def test_targets_are_one_of_source_or_platform() -> None:
    with pytest.raises(ValueError):
        outbox.Target()
    with pytest.raises(ValueError):
        outbox.Target(source_id=1, platform_id=2)
    assert str(outbox.Target(platform_id=3)) == "platform:3"


def test_cancelled_items_are_never_pushed_nor_retried(db: Store, target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 3)
    ids = [r.id for r in items(db)]
    with db.session() as session:
        session.execute(update(models.OutboxItem).where(models.OutboxItem.id == ids[1]).values(status=outbox.DEAD))
        assert outbox.cancel(session, ids[:1], "cancelled: no longer wanted") == 1
        assert outbox.cancel(session, ids[1:2], "cancelled: the person was erased", forget=True) == 1  # a dead letter
    lms = FakeConnector("canvas")
    report = outbox.dispatch_due(db, lambda _t: lms, NOW)
    assert report.sent == 1 and [w.person_sourced_id for w, _ in lms.writes_log] == ["student-2"]
    with db.session() as session:
        assert not outbox.retry_dead(session, ids[1])
        assert outbox.cancel(session, ids, "too late") == 0  # sent stays sent, cancelled stays as it was
        assert outbox.summary(session, district_id) == {"cancelled": 2, "sent": 1}
    kept, forgotten, sent = items(db)
    assert (kept.status, kept.last_error, kept.payload["person_sourced_id"]) == (
        "cancelled", "cancelled: no longer wanted", "student-0")
    assert (forgotten.status, forgotten.payload, forgotten.idempotency_key) == ("cancelled", {}, f"cancelled:{ids[1]}")
    assert sent.status == "sent"


def test_a_push_in_flight_when_its_item_is_cancelled_leaves_it_cancelled(db: Store,
                                                                          target: tuple[int, outbox.Target]) -> None:
    district_id, tgt = target
    enqueue_scores(db, district_id, tgt, 1)
    (item,) = items(db)

    def cancelled_meanwhile(write: object, call: int) -> Exception | None:
        with db.session() as session:
            outbox.cancel(session, [item.id], "cancelled: the person was erased on request", forget=True)
        return None  # the LMS acknowledges the push that was already on its way

    outbox.dispatch_due(db, lambda _t: FakeConnector("canvas", push_failures=cancelled_meanwhile), NOW)
    (after,) = items(db)
    assert (after.status, after.payload, after.sent_at, after.remote_id) == ("cancelled", {}, None, None)
