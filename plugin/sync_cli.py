"""``trailmark sync run SOURCE`` and ``trailmark sync status``: thin wrappers around plugin.jobs."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select
from tqdm import tqdm

from connectors import outbox, sync
from plugin import jobs
from plugin.store import models
from plugin.store.db import get_store

sync_cli = AppGroup("sync", help="Sync rosters, content and progress from the sources in the district file.")

EXIT_FAILED = 1
EXIT_NEEDS_CONFIRM = 2
EXIT_SKIPPED = 3


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a plain text table; columns of numbers are right-aligned."""
    numeric = [bool(rows) and all(isinstance(r[i], int) or r[i] == "" for r in rows) for i in range(len(headers))]
    cells = [[str(h) for h in headers]] + [["" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
                                            for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(v.rjust(w) if numeric[i] else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(counts: Mapping[str, Mapping[str, int]]) -> str:
    """The per-kind summary of a run: added, updated, unchanged, tombstoned, rejected."""
    order = {k: i for i, k in enumerate(sync.KIND_ORDER)}
    kinds = sorted((k for k in counts if not k.startswith("_")), key=lambda k: order.get(k, 99))
    rows = [[k, *(counts[k].get(f, 0) for f in sync.COUNT_FIELDS)] for k in kinds]
    rows.append(["total", *(sum(counts[k].get(f, 0) for k in kinds) for f in sync.COUNT_FIELDS)])
    return format_table(["record", *sync.COUNT_FIELDS], rows)


def _unknown_source(name: str) -> click.ClickException:
    names = [s.get("name") for s in jobs.source_configs(current_app)]
    if not names:
        return click.ClickException(f"unknown source {name!r}: no sources are configured (add [[sources]] "
                                    "entries to the district file)")
    return click.ClickException(f"unknown source {name!r}; configured sources: {', '.join(map(str, names))}")


@sync_cli.command("run")
@click.argument("source")
@click.option("--scope", type=click.Choice([s.value for s in sync.Scope]), default=None,
              help="What to pull (default: the source's scope, or all).")
@click.option("--full", is_flag=True, help="Ignore the delta watermark and pull everything.")
@click.option("--dry-run", is_flag=True, help="Compute the counts, write nothing.")
@click.option("--confirm", is_flag=True, help="Apply even if the run tombstones more than the allowed share.")
def run_command(source: str, scope: str | None, full: bool, dry_run: bool, confirm: bool) -> None:
    """Sync SOURCE now and print what changed per record type."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if jobs.source_config(app, source) is None:
        raise _unknown_source(source)
    with tqdm(desc=source, unit=" records", file=sys.stderr, disable=None, dynamic_ncols=True) as bar:
        result = jobs.run_source(app, source, scope=scope, full=full or None, dry_run=dry_run, confirm=confirm,
                                 progress=bar.update, ignore_pause=True)
    if result.counts:
        click.echo(summary_table(result.counts))
    for err in result.errors[:10]:
        click.echo(f"  {err.get('type')}: {err.get('kind')} {err.get('record_id')} {err.get('field') or ''}"
                   f" {err.get('reason')}".replace("  ", " "), err=True)
    if result.error_total > 10:
        click.echo(f"  … and {result.error_total - 10:,} more (trailmark sync status)", err=True)
    if result.status == sync.NEEDS_CONFIRM:
        click.echo(f"Stopped, nothing was applied: {result.message}", err=True)
        sys.exit(EXIT_NEEDS_CONFIRM)
    if result.status == sync.FAILED:
        click.echo(f"Sync of {source} failed, nothing was applied: {result.message}", err=True)
        sys.exit(EXIT_FAILED)
    if result.status == sync.SKIPPED:
        click.echo(f"Sync of {source} skipped: {result.message}", err=True)
        sys.exit(EXIT_SKIPPED)
    done = "would be applied (dry run)" if dry_run else "applied"
    click.echo(f"{source}: {result.total('added'):,} added, {result.total('updated'):,} updated, "
               f"{result.total('tombstoned'):,} tombstoned, {result.total('rejected'):,} rejected — {done}."
               + (f" {result.message}" if result.message and not dry_run else ""))


def status_rows(now: datetime) -> list[list[Any]]:
    """One row per source: its last run and whether it is paused."""
    app = current_app
    configured = {s.get("name"): s for s in jobs.source_configs(app)}
    rows = []
    with get_store().session() as session:
        sources = list(session.scalars(select(models.Source).order_by(models.Source.name)))
        known = {s.name for s in sources}
        for source in sources:
            run = session.scalars(select(models.SyncRun).where(models.SyncRun.source_id == source.id)
                                  .order_by(models.SyncRun.id.desc()).limit(1)).first()
            rows.append([source, run])
        for name, cfg in configured.items():
            if name not in known:
                rows.append([cfg, None])
        out = []
        for source, run in rows:
            if isinstance(source, models.Source):
                name, kind = source.name, source.kind
                paused_until = sync._aware(source.paused_until)
                paused = (f"until {paused_until:%Y-%m-%d %H:%M} ({source.consecutive_failures} failures)"
                          if paused_until and paused_until > now else "")
                enabled = configured.get(name, {}).get("enabled", name in configured)
            else:
                name, kind, paused, enabled = source.get("name"), source.get("kind"), "", source.get("enabled", True)
            counts = run.counts if run else {}
            totals = {f: sum(c.get(f, 0) for k, c in counts.items() if not k.startswith("_"))
                      for f in sync.COUNT_FIELDS}
            out.append([
                name, kind, "yes" if enabled else "no",
                f"{sync._aware(run.started_at):%Y-%m-%d %H:%M:%S}" if run else "never",
                f"{sync._aware(run.finished_at):%H:%M:%S}" if run and run.finished_at else "",
                (run.status + (" (dry run)" if run.dry_run else "")) if run else "",
                totals["added"] if run else "", totals["updated"] if run else "",
                totals["tombstoned"] if run else "", totals["rejected"] if run else "",
                paused, (run.errors[0].get("reason", "") if run and run.errors else "")[:120],
            ])
    return out


@sync_cli.command("status")
def status_command() -> None:
    """List each source's last run (start, end, status, counts, errors) and whether it is paused."""
    now = datetime.now(UTC)
    rows = status_rows(now)
    if not rows:
        click.echo("No sources configured or synced yet.")
        return
    click.echo(format_table(["source", "kind", "enabled", "last start", "end", "status", "added", "updated",
                             "tombstoned", "rejected", "paused", "first error"], rows))
    with get_store().session() as session:
        counts = outbox.summary(session)
        oldest = session.scalar(select(func.min(models.OutboxItem.created_at))
                                .where(models.OutboxItem.status == outbox.PENDING))
    if counts:
        parts = ", ".join(f"{n:,} {status}" for status, n in sorted(counts.items()))
        click.echo(f"\noutbox: {parts}" + (f" (oldest pending since {sync._aware(oldest):%Y-%m-%d %H:%M})"
                                           if oldest else ""))
