"""The sandbox's sample class shows every state the panels know, and seeding it twice changes nothing."""

from __future__ import annotations

from sqlalchemy import func, select

from plugin.sandbox import platform as sb
from plugin.store.db import get_store
from plugin.store.models import (
    AlertRecord,
    GateOverrideRecord,
    GateRecord,
    PaceRecord,
    ProfileEntryRecord,
    ProfileSnapshotRecord,
    Result,
)


def _counts(session) -> dict[str, int]:
    return {model.__name__: session.scalar(select(func.count()).select_from(model)) for model in (
        Result, AlertRecord, ProfileSnapshotRecord, ProfileEntryRecord, GateOverrideRecord, GateRecord, PaceRecord)}


def test_the_sample_class_spans_the_pace_spectrum(app, client, people):
    by_id = {v: k for k, v in people.items()}
    with get_store(app).session() as s:
        pace = {by_id[p.person_id]: (p.state, p.completed, p.modules_behind, p.days_behind)
                for p in s.scalars(select(PaceRecord))}
        alerts = {by_id[a.person_id]: (a.kind, a.level) for a in s.scalars(select(AlertRecord))}
        locked = {(by_id[g.person_id], g.status) for g in s.scalars(select(GateRecord))}
        snapshots = s.scalar(select(func.count()).select_from(ProfileSnapshotRecord).where(
            ProfileSnapshotRecord.person_id == people["leo"]))
    assert pace == {
        "sofia": ("far_ahead", 4, 0, 0), "zara": ("ahead", 3, 0, 0), "maya": ("on_track", 2, 0, 0),
        "leo": ("on_track", 2, 0, 0), "noah": ("behind", 1, 1, 8), "aiden": ("behind", 0, 2, 22),
    }
    assert alerts == {"aiden": ("behind", 3), "noah": ("behind", 2), "sofia": ("far_ahead", 1)}
    assert ("aiden", "locked") in locked
    assert snapshots == len(sb.SNAPSHOT_DAYS) + 1  # weekly history and today's


def test_seeding_again_changes_nothing(app, client):
    client.get("/sandbox")
    with get_store(app).session() as s:
        before = _counts(s)
    with app.app_context(), get_store(app).session() as s:
        sb.ensure_sandbox(s, app)
    with get_store(app).session() as s:
        assert _counts(s) == before
