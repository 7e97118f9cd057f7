"""``trailmark privacy …``: one person's export, erasure (and lifting it), retention purge, encryption keys."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import click
from flask import current_app
from flask.cli import AppGroup

from plugin import privacy
from plugin.cache import get_cache
from plugin.lti.sessions import end_sessions_of
from plugin.store.db import get_store
from plugin.store.models import AuditEvent

privacy_cli = AppGroup("privacy", help="Privacy requests, retention and encryption at rest.")


def _person(session, district_slug: str | None, ref: str):  # type: ignore[no-untyped-def]
    from plugin.cli import _district

    district = _district(session, district_slug)
    person = privacy.find_person(session, district.id, ref)
    if person is None:
        raise click.ClickException(f"no person {ref!r} in district {district.slug} (give a Trailmark id, an SIS id "
                                   "or a sourced id)")
    return district, person


@privacy_cli.command("export")
@click.argument("student")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file (readable by its owner only) instead of standard output.")
def export_command(student: str, district_slug: str | None, output: str | None) -> None:
    """Export everything Trailmark holds about STUDENT (id, SIS id or sourced id) as JSON."""
    now = datetime.now(UTC)
    with get_store().session() as session:
        district, person = _person(session, district_slug, student)
        data = privacy.export_person(session, district.id, person.id, now=now)
        session.add(AuditEvent(district_id=district.id, at=now, actor="cli", action="privacy.export",
                               subject=f"person:{person.id}", detail={"via": "cli"}))
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        click.echo(f"Exported person {person.id} to {output}.", err=True)
    else:
        click.echo(text)


@privacy_cli.command("erase")
@click.argument("student")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase_command(student: str, district_slug: str | None, yes: bool) -> None:
    """Erase STUDENT's data: learning state, profile, results and enrollments go; a tombstone stays."""
    now = datetime.now(UTC)
    with get_store().session() as session:
        district, person = _person(session, district_slug, student)
        if person.status == privacy.ERASED:
            click.echo(f"Person {person.id} was already erased.")
            return
        if not yes:
            click.confirm(f"Erase person {person.id} ({person.role}) of {district.slug}? This cannot be undone.",
                          abort=True)
        report = privacy.erase_person(session, district.id, person.id, actor="cli", now=now)
    end_sessions_of(get_cache(), district.id, person.id)  # signed-in pages and remembered launch ids end now
    removed = ", ".join(f"{n} {table}" for table, n in sorted(report.deleted.items())) or "no rows"
    click.echo(f"Erased person {report.person_id}: removed {removed}; cancelled {report.outbox_cancelled} queued "
               f"LMS write(s); {report.refs_marked} references kept as tombstones and the person's identifiers "
               "put on the erasure list (hashed), so no sync or launch brings them back. Lift it with "
               f"`trailmark privacy unerase {report.person_id}` if the family asks.")


@privacy_cli.command("unerase")
@click.argument("person")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
@click.option("--reason", default="", help="Why (kept in the audit log), e.g. the family's request reference.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def unerase_command(person: str, district_slug: str | None, reason: str, yes: bool) -> None:
    """Lift the erasure of PERSON (Trailmark id, SIS id or e-mail) so syncs and launches may bring them back."""
    from plugin.cli import _district

    now = datetime.now(UTC)
    with get_store().session() as session:
        district = _district(session, district_slug)
        erasure = privacy.find_erasure(session, district.id, person)
        if erasure is None or erasure.person_id is None:
            raise click.ClickException(f"no erasure of {person!r} in district {district.slug} to lift (give the "
                                       "erased person's Trailmark id, their SIS id or e-mail)")
        if not yes:
            click.confirm(f"Lift the erasure of person {erasure.person_id} (erased {erasure.erased_at:%Y-%m-%d}) "
                          f"in {district.slug}? The next full sync or launch creates them again.", abort=True)
        report = privacy.lift_erasure(session, district.id, erasure.person_id, actor="cli", now=now,
                                      reason=reason)
    click.echo(f"Lifted the erasure of person {report.person_id}: {report.refs_freed} reference(s) freed. Nothing "
               "erased comes back by itself; run a full sync (`trailmark sync run SOURCE --full`) or let them launch.")


@privacy_cli.command("erasures")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
@click.option("--all", "include_lifted", is_flag=True, help="Include erasures that were lifted.")
def erasures_command(district_slug: str | None, include_lifted: bool) -> None:
    """List the district's erasures (who erased whom and when; no identifiers are kept to show)."""
    from plugin.cli import _district

    with get_store().session() as session:
        district = _district(session, district_slug)
        rows = privacy.list_erasures(session, district.id, include_lifted=include_lifted)
        key_id = privacy.erasure_list().key_id
        click.echo(f"{'person':>8}  {'erased':<16}  {'by':<20}  lifted")
        for e in rows:
            lifted = f"{e.lifted_at:%Y-%m-%d %H:%M} by {e.lifted_by}" if e.lifted_at else "-"
            stale = "" if e.key_id == key_id else "  (hashed with another server.secret_key: no longer matches)"
            click.echo(f"{e.person_id or '-':>8}  {e.erased_at:%Y-%m-%d %H:%M}  {e.erased_by[:20]:<20}  {lifted}"
                       f"{stale}")
    click.echo(f"{len(rows)} erasure(s).")


@privacy_cli.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def purge_command(dry_run: bool) -> None:
    """Delete records past their retention (also run daily by the scheduler)."""
    counts = privacy.purge(get_store(), current_app.config["TRAILMARK"]["privacy"], now=datetime.now(UTC),
                           dry_run=dry_run)
    for table, n in counts.items():
        click.echo(f"{table:<18} {n:>10,}")
    click.echo("Nothing was deleted (dry run)." if dry_run else f"Deleted {sum(counts.values()):,} rows.")


@privacy_cli.command("new-key")
def new_key_command() -> None:
    """Print a new encryption key (for privacy.encryption_key)."""
    click.echo(privacy.new_key())


@privacy_cli.command("reencrypt")
def reencrypt_command() -> None:
    """Encrypt stored private keys with the first configured key (after adding a new key in front)."""
    with get_store().session() as session:
        n = privacy.reencrypt_keys(session)
        session.add(AuditEvent(district_id=None, at=datetime.now(UTC), actor="cli", action="privacy.reencrypt",
                               subject=None, detail={"keys": n}))
    click.echo(f"Re-encrypted {n} stored key(s) with the first configured encryption key.")
