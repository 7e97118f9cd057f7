"""Scheduler wiring and the sync commands, with the fake connector against a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select

from connectors import outbox, sync
from connectors.base import ScoreWrite
from connectors.fake import FakeConnector, sample_district
from plugin import jobs
from plugin.store import models
from plugin.store.db import get_store
from tests.connectors.sync_support import top_up_schema

NOW = datetime(2026, 9, 7, 6, 0, tzinfo=UTC)

SOURCES = [
    {"name": "sis", "kind": "fake", "district": "north", "schedule": "*/15 * * * *", "classes": 2,
     "students_per_class": 3},
    {"name": "lms", "kind": "fake", "district": "north", "schedule": "1h"},
    {"name": "off", "kind": "fake", "district": "north", "schedule": "5m", "enabled": False},
    {"name": "manual", "kind": "fake", "district": "north"},
    {"name": "down", "kind": "fake", "district": "north", "fail_after": 0},
    {"name": "broken", "kind": "canvas", "district": "north", "base_url": "https://canvas.example.edu"},
]


@pytest.fixture
def app_config(app_config: dict[str, Any], database_url: str, tmp_path: Path) -> dict[str, Any]:
    top_up_schema(database_url)
    return {**app_config, "sources": [dict(s) for s in SOURCES],
            "districts": [{"slug": "north", "name": "North District", "match_on": ["sis_id", "email"]}]}


def rows(app: Any, model: type) -> list[Any]:
    """Rows of ``model`` in the north district (the sandbox seeds a district of its own)."""
    with get_store(app).session() as session:
        stmt = select(model)
        if model is not models.District:
            north = select(models.District.id).where(models.District.slug == "north").scalar_subquery()
            stmt = stmt.where(model.district_id == north)  # type: ignore[attr-defined]
        return list(session.scalars(stmt))


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("1h", 3600), ("30s", 30), ("2d", 172800),
                                               ("10 min", 600)])
def test_interval_schedules(text: str, seconds: int) -> None:
    trigger = jobs.parse_schedule(text)
    assert isinstance(trigger, IntervalTrigger)
    assert trigger.interval == timedelta(seconds=seconds)


def test_cron_schedules() -> None:
    trigger = jobs.parse_schedule("*/15 6-18 * * mon-fri")
    assert isinstance(trigger, CronTrigger)
    fire = trigger.get_next_fire_time(None, datetime(2026, 9, 7, 6, 1, tzinfo=UTC))  # a Monday
    assert fire == datetime(2026, 9, 7, 6, 15, tzinfo=UTC)


@pytest.mark.parametrize("text", ["every hour", "0m", "* * *", "61 * * * *"])
def test_bad_schedules_say_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match="cron|interval"):
        jobs.parse_schedule(text)


def test_scheduler_registers_one_job_per_scheduled_source_and_the_outbox(app: Any) -> None:
    scheduler = jobs.build_scheduler(app)
    found = {job.id: job for job in scheduler.get_jobs()}

    assert {"sync:sis", "sync:lms", "outbox"} <= set(found)  # other features add jobs of their own
    assert not {"sync:off", "sync:manual", "sync:down", "sync:broken"} & set(found)
    assert isinstance(found["sync:sis"].trigger, CronTrigger)
    assert str(found["sync:sis"].trigger.fields[6]) == "*/15"  # the minute field
    assert isinstance(found["sync:lms"].trigger, IntervalTrigger)
    assert found["sync:lms"].trigger.interval == timedelta(hours=1)
    assert found["outbox"].trigger.interval == timedelta(seconds=30)
    assert found["sync-requests"].trigger.interval == timedelta(seconds=jobs.REQUESTS_SECONDS)
    assert found["sync-requests"].func is jobs.run_requested_syncs
    for job in found.values():
        assert job.max_instances == 1 and job.coalesce is True
    assert found["sync:sis"].args == (app, "sis") and found["sync:sis"].func is jobs.run_source_job


def test_scheduler_is_off_unless_enabled(app: Any) -> None:
    assert app.config["SCHEDULER_ENABLED"] is False
    assert jobs.init_app(app) is None
    assert jobs.EXTENSION not in app.extensions


def test_a_bad_schedule_names_the_source(app: Any) -> None:
    app.config["SOURCES"] = [{"name": "x", "kind": "fake", "district": "north", "schedule": "hourly"}]
    with pytest.raises(Exception, match="sources.x.schedule"):
        jobs.build_scheduler(app)


# --------------------------------------------------------------------------- the job


def test_source_job_creates_rows_and_syncs(app: Any) -> None:
    result = jobs.run_source_job(app, "sis")

    assert result is not None and result.status == "succeeded", result and result.message
    assert result.counts["person"]["added"] == 2 + 2 * 3 * 2
    [district] = [d for d in rows(app, models.District) if d.slug == "north"]
    assert district.settings["match_on"] == ["sis_id", "email"]
    [source] = rows(app, models.Source)
    assert (source.name, source.kind, source.schedule) == ("sis", "fake", "*/15 * * * *")
    [run] = rows(app, models.SyncRun)
    assert run.status == "succeeded" and run.full  # the first run is a full one
    assert len(rows(app, models.Person)) == 14

    again = jobs.run_source_job(app, "sis")
    assert again is not None and again.total("unchanged") == result.total("added")


def test_a_failing_source_is_recorded_and_paused(app: Any) -> None:
    result = jobs.run_source(app, "down", now=NOW)
    assert result.status == "failed" and "went away" in result.message
    [source] = rows(app, models.Source)
    assert source.consecutive_failures == 1
    assert sync._aware(source.paused_until) == NOW + timedelta(minutes=1)

    skipped = jobs.run_source(app, "down", now=NOW + timedelta(seconds=20))
    assert skipped.status == "skipped" and "paused" in skipped.message
    assert len(rows(app, models.SyncRun)) == 1  # a paused source is not even tried


def test_an_unbuildable_connector_is_a_failed_run(app: Any) -> None:
    result = jobs.run_source(app, "broken", now=NOW)
    assert result.status == "failed" and "ConfigurationError" in result.message
    [run] = rows(app, models.SyncRun)
    assert run.status == "failed" and run.errors[0]["reason"] == result.message
    [source] = rows(app, models.Source)
    assert source.consecutive_failures == 1 and source.last_error


def test_jobs_for_unknown_or_disabled_sources_do_nothing(app: Any) -> None:
    assert jobs.run_source_job(app, "nope") is None
    assert jobs.run_source_job(app, "off") is None
    assert rows(app, models.SyncRun) == []


def test_periodic_full_reconciliation(app: Any) -> None:
    fake = FakeConnector("lms", sample_district(classes=1, students_per_class=1))
    jobs.run_source(app, "lms", now=NOW, connector=fake)
    jobs.run_source(app, "lms", now=NOW + timedelta(hours=1), connector=fake)
    jobs.run_source(app, "lms", now=NOW + timedelta(hours=25), connector=fake)
    assert [since for _scope, since in fake.pulls] == [None, NOW, None]


def test_the_outbox_job_pushes_through_the_sources_connector(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs.run_source(app, "manual", now=NOW)
    [source] = rows(app, models.Source)
    lms = FakeConnector("manual")
    monkeypatch.setattr(jobs, "connector_for", lambda _app, cfg, _source=None: lms)
    write = ScoreWrite("class-1", "activity-1", "student-1-1", 7.0, 10.0, NOW)
    with get_store(app).session() as session:
        outbox.enqueue(session, source.district_id, source, write, "k-1", now=NOW)

    report = jobs.run_outbox_job(app, now=NOW)

    assert report is not None and report.sent == 1
    assert lms.writes_log == [(write, "manual-1")]


# --------------------------------------------------------------------------- the commands


def test_sync_run_prints_a_summary(app: Any, runner: Any) -> None:
    result = runner.invoke(args=["sync", "run", "sis"])

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # logs go to stderr
    assert lines[0].split() == ["record", "added", "updated", "unchanged", "tombstoned", "rejected"]
    person = next(line for line in lines if line.startswith("person"))
    assert person.split() == ["person", "14", "0", "0", "0", "0"]
    assert "sis: 49 added" in result.output

    again = runner.invoke(args=["sync", "run", "sis", "--scope", "roster"])
    assert again.exit_code == 0
    assert next(line for line in again.stdout.splitlines() if line.startswith("total")).split()[3] == "35"


def test_sync_run_dry_run_writes_nothing(app: Any, runner: Any) -> None:
    result = runner.invoke(args=["sync", "run", "sis", "--dry-run"])
    assert result.exit_code == 0 and "dry run" in result.output
    assert rows(app, models.Person) == []


def test_sync_run_unknown_source_lists_the_configured_ones(app: Any, runner: Any) -> None:
    result = runner.invoke(args=["sync", "run", "nope"])
    assert result.exit_code != 0
    assert "unknown source 'nope'" in result.output and "sis, lms, off, manual, down, broken" in result.output


def test_sync_run_failure_exits_non_zero(app: Any, runner: Any) -> None:
    result = runner.invoke(args=["sync", "run", "down"])
    assert result.exit_code == 1
    assert "failed, nothing was applied" in result.output and "went away" in result.output


def test_sync_run_asks_for_confirm_on_mass_removal(app: Any, runner: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConnector("manual", sample_district(classes=1, students_per_class=20, with_content=False,
                                                   with_progress=False))
    monkeypatch.setattr(jobs, "connector_for", lambda _app, cfg, _source=None: fake)
    assert runner.invoke(args=["sync", "run", "manual"]).exit_code == 0
    fake.records = [i for i in fake.records if "student" not in getattr(i, "sourced_id", "")
                    and "student" not in getattr(i, "student_sourced_id", "")]

    result = runner.invoke(args=["sync", "run", "manual"])

    assert result.exit_code == 2
    assert "nothing was applied" in result.output and "rerun with --confirm" in result.output
    assert "check the export" in result.output
    confirmed = runner.invoke(args=["sync", "run", "manual", "--confirm"])
    assert confirmed.exit_code == 0, confirmed.output
    assert next(line for line in confirmed.output.splitlines() if line.startswith("person")).split()[4] == "20"


def test_sync_status_lists_last_runs_and_pauses(app: Any, runner: Any) -> None:
    runner.invoke(args=["sync", "run", "sis"])
    runner.invoke(args=["sync", "run", "down"])

    result = runner.invoke(args=["sync", "status"])

    assert result.exit_code == 0, result.output
    by_source = {line.split()[0]: line for line in result.output.splitlines()[2:] if line.strip()}
    assert "succeeded" in by_source["sis"] and " 49 " in by_source["sis"]
    assert "failed" in by_source["down"] and "until" in by_source["down"] and "went away" in by_source["down"]
    assert "never" in by_source["lms"]
