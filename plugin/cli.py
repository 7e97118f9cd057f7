"""The ``trailmark`` command for district IT. Commands are thin wrappers around plain functions."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext
from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.config import ConfigError, public_url, resolve_secrets
from plugin.store.db import get_store, upgrade
from plugin.store.models import District, Platform

db_cli = AppGroup("db", help="Database migrations.")
keys_cli = AppGroup("keys", help="Trailmark's LTI signing keys.")
platform_cli = AppGroup("platform", help="LMS registrations (LTI platforms).")
config_cli = AppGroup("config", help="Configuration.")


# --------------------------------------------------------------------------- bootstrap


def ensure_districts(session: Session, cfg: dict[str, Any], now: datetime) -> dict[str, District]:
    """Create or update the districts the configuration lists."""
    out = {}
    for entry in cfg["districts"]:
        district = session.scalars(select(District).where(District.slug == entry["slug"])).first()
        if district is None:
            district = District(slug=entry["slug"], name=entry["name"], settings={}, created_at=now)
            session.add(district)
        district.name = entry["name"]
        district.settings = {**(district.settings or {}), "match_on": entry["match_on"],
                             "issuer_allowlist": entry["issuer_allowlist"],
                             "mastery_threshold": entry["mastery_threshold"],
                             "alert_messages": entry["alert_messages"]}
        out[entry["slug"]] = district
    session.flush()
    return out


def bootstrap(app: Flask) -> None:
    """Migrate, create the signing key, load configured districts and platforms, seed the sandbox."""
    from plugin import privacy
    from plugin.lti import keys
    from plugin.lti.platforms import add_platform

    cfg = app.config["TRAILMARK"]
    upgrade(app.config["DATABASE_URL"])
    now = datetime.now(UTC)
    with get_store(app).session() as session:
        keys.ensure_key(session, now)
        privacy.reencrypt_keys(session)  # keys stored before encryption, or under an older encryption key
        districts = ensure_districts(session, cfg, now)
        for p in cfg["platforms"]:
            add_platform(session, districts[p["district"]], issuer=p["issuer"], client_id=p["client_id"],
                         deployment_ids=p["deployment_ids"], auth_login_url=p["auth_login_url"],
                         auth_token_url=p["auth_token_url"], key_set_url=p["key_set_url"],
                         auth_audience=p["auth_audience"], name=p["name"], product_family=p["product_family"],
                         registered_via="config", now=now)
        if app.config["SANDBOX_ENABLED"]:
            from plugin.sandbox.platform import ensure_sandbox

            ensure_sandbox(session, app)


# --------------------------------------------------------------------------- db


@db_cli.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations and load configured districts and platforms."""
    bootstrap(current_app)
    click.echo(f"Database is up to date: {_safe_url(current_app.config['DATABASE_URL'])}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# --------------------------------------------------------------------------- keys


@keys_cli.command("rotate")
def keys_rotate() -> None:
    """Create a new signing key; the old one stays published until retired."""
    from plugin.lti import keys

    with get_store().session() as session:
        new, old = keys.rotate(session)
    click.echo(f"New active key: {new.kid}")
    for kid in old:
        click.echo(f"Still published (retiring): {kid} — retire it with `trailmark keys retire {kid}` once "
                   "platforms have refreshed their copy of the key set (a day is plenty).")


@keys_cli.command("list")
def keys_list() -> None:
    """List signing keys and their state."""
    from plugin.store.queries import list_keys

    with get_store().session() as session:
        for key in list_keys(session):
            click.echo(f"{key.kid}  {key.status:<9}  created {key.created_at:%Y-%m-%d %H:%M}")


@keys_cli.command("retire")
@click.argument("kid")
def keys_retire(kid: str) -> None:
    """Stop publishing a retiring key."""
    from plugin.lti import keys

    try:
        with get_store().session() as session:
            keys.retire(session, kid)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Retired {kid}.")


# --------------------------------------------------------------------------- platforms


def _district(session: Session, slug: str | None) -> District:
    if slug:
        district = session.scalars(select(District).where(District.slug == slug)).first()
        if district is None:
            known = ", ".join(session.scalars(select(District.slug))) or "none"
            raise click.ClickException(f"No district {slug!r}. Known districts: {known}. Districts come from the "
                                       "[[districts]] entries of the district file.")
        return district
    districts = list(session.scalars(select(District).order_by(District.id)))
    if len(districts) != 1:
        names = ", ".join(d.slug for d in districts) or "none yet — run `trailmark db upgrade`"
        raise click.ClickException(f"Say which district with --district (known: {names}).")
    return districts[0]


def _check_url(value: str, name: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise click.BadParameter(f"expected a URL like https://lms.example.org/…, got {value!r}", param_hint=name)
    if parts.scheme == "http" and current_app.config["TRAILMARK"]["mode"] == "production":
        raise click.BadParameter("production platforms must use https", param_hint=name)
    return value


@platform_cli.command("add")
@click.option("--issuer", required=True, help="The platform's issuer, e.g. https://canvas.instructure.com")
@click.option("--client-id", required=True, help="The client id (Canvas: the developer key id).")
@click.option("--deployment-id", "deployment_ids", multiple=True, required=True,
              help="A deployment id; repeat for several.")
@click.option("--auth-url", required=True, help="OIDC authorization endpoint.")
@click.option("--token-url", required=True, help="OAuth2 token endpoint.")
@click.option("--jwks-url", required=True, help="The platform's public key set URL.")
@click.option("--audience", default=None, help="Token audience if it differs from the token URL.")
@click.option("--name", default="", help="A name for people.")
@click.option("--family", default="", help="canvas, moodle, …")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
def platform_add(issuer: str, client_id: str, deployment_ids: tuple[str, ...], auth_url: str, token_url: str,
                 jwks_url: str, audience: str | None, name: str, family: str, district_slug: str | None) -> None:
    """Register an LMS by hand (manual keys)."""
    from plugin.lti.platforms import add_platform

    for value, opt in ((issuer, "--issuer"), (auth_url, "--auth-url"), (token_url, "--token-url"),
                       (jwks_url, "--jwks-url")):
        _check_url(value, opt)
    with get_store().session() as session:
        district = _district(session, district_slug)
        try:
            platform = add_platform(session, district, issuer=issuer, client_id=client_id,
                                    deployment_ids=deployment_ids, auth_login_url=auth_url, auth_token_url=token_url,
                                    key_set_url=jwks_url, auth_audience=audience, name=name,
                                    product_family=family.lower(), registered_via="manual")
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        pid = platform.id
    base = public_url(current_app.config["TRAILMARK"])
    click.echo(f"Registered platform {pid}: {issuer} (client {client_id}) for district {district.slug}.")
    click.echo(f"In the LMS use: login URL {base}/lti/login, redirect/launch URL {base}/lti/launch, "
               f"key set URL {base}/lti/jwks")


@platform_cli.command("invite")
@click.option("--district", "district_slug", default=None)
@click.option("--hours", default=72, show_default=True, type=click.IntRange(1, 24 * 30))
@click.option("--note", default="", help="Who the code is for.")
def platform_invite(district_slug: str | None, hours: int, note: str) -> None:
    """Print a one-time Dynamic Registration URL for one LMS."""
    from plugin.lti.platforms import create_invite

    with get_store().session() as session:
        district = _district(session, district_slug)
        code = create_invite(session, district, hours=hours, note=note)
    base = public_url(current_app.config["TRAILMARK"])
    click.echo(f"{base}/lti/register?code={code}")
    click.echo(f"Paste this URL into the LMS's tool registration screen within {hours} hours; it works once.")


@platform_cli.command("list")
def platform_list() -> None:
    """List registered platforms with their deployments."""
    from plugin.store.queries import list_platforms

    with get_store().session() as session:
        districts = list(session.scalars(select(District).order_by(District.slug)))
        for district in districts:
            for p, deps in list_platforms(session, district.id):
                click.echo(f"{p.id:>4}  {district.slug:<12} {p.issuer}  client={p.client_id}  "
                           f"deployments={','.join(deps) or '-'}  via={p.registered_via}")


@platform_cli.command("remove")
@click.option("--issuer", required=True)
@click.option("--client-id", required=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def platform_remove(issuer: str, client_id: str, yes: bool) -> None:
    """Remove a registration (launches from it stop working)."""
    with get_store().session() as session:
        platform = session.scalars(select(Platform).where(Platform.issuer == issuer,
                                                          Platform.client_id == client_id)).first()
        if platform is None:
            raise click.ClickException(f"No platform {issuer} with client id {client_id} "
                                       "(see `trailmark platform list`).")
        if not yes:
            click.confirm(f"Remove {issuer} (client {client_id})? Launches from it will be refused.", abort=True)
        session.delete(platform)
    click.echo(f"Removed {issuer} (client {client_id}).")


# --------------------------------------------------------------------------- config


@config_cli.command("check")
def config_check() -> None:
    """Validate the configuration and that every secret it references can be read."""
    cfg = current_app.config["TRAILMARK"]
    problems = []
    for source in cfg["sources"]:
        try:
            resolve_secrets(source)
        except ConfigError as exc:
            problems.append(f"sources: {exc}")
    for line in problems:
        click.echo(f"  ✗ {line}", err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in the configuration.")
    click.echo(f"Configuration is valid: mode={cfg['mode']}, {len(cfg['districts'])} district(s), "
               f"{len(cfg['platforms'])} platform(s), {len(cfg['sources'])} source(s), "
               f"database {_safe_url(cfg['database']['url'])}, public URL {public_url(cfg)}")


# --------------------------------------------------------------------------- serving


@click.command("start")
@click.option("--host", default=None, help="Defaults to server.host (HOST).")
@click.option("--port", default=None, type=int, help="Defaults to server.port (PORT).")
def start(host: str | None, port: int | None) -> None:
    """Migrate, then serve Trailmark and its scheduler (a single process, for local runs and small schools)."""
    from werkzeug.serving import run_simple

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cfg = app.config["TRAILMARK"]
    bootstrap(app)
    host = host or cfg["server"]["host"]
    port = port or cfg["server"]["port"]
    base = public_url(cfg)
    _start_scheduler(app)
    click.echo(f"Trailmark is running at {base}/")
    if app.config["SANDBOX_ENABLED"]:
        click.echo(f"  Sandbox LMS (launch as teacher, student, parent): {base}/sandbox")
    click.echo(f"  Dynamic Registration URL: {base}/lti/register")
    click.echo(f"  JWKS URL: {base}/lti/jwks")
    click.echo(f"  Canvas developer key JSON: {base}/lti/config/canvas.json")
    run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)


@click.command("serve")
@click.option("--host", default=None, help="Defaults to server.host (HOST).")
@click.option("--port", default=None, type=click.IntRange(1, 65535), help="Defaults to server.port (PORT).")
@click.option("--workers", default=None, type=click.IntRange(1, 64),
              help="Worker processes; defaults to server.workers (TRAILMARK_WORKERS).")
@click.option("--threads", default=None, type=click.IntRange(1, 64),
              help="Threads per worker (server.threads).")
@click.option("--with-scheduler", is_flag=True,
              help="Also run the scheduler in one worker at a time (leader-elected); otherwise run "
                   "`trailmark scheduler` separately.")
@click.option("--migrate", is_flag=True, help="Apply migrations first (always done on SQLite).")
@with_appcontext
def serve_command(host: str | None, port: int | None, workers: int | None, threads: int | None,
                  with_scheduler: bool, migrate: bool) -> None:
    """Serve Trailmark under gunicorn with several workers (district scale)."""
    from plugin.serve import ServeError, serve

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    cfg = app.config["TRAILMARK"]
    if with_scheduler and not cfg["scheduler"]["enabled"]:
        raise click.ClickException("--with-scheduler was given but scheduler.enabled is false "
                                   "(TRAILMARK_SCHEDULER); enable it or drop the option.")
    if migrate or app.config["DATABASE_URL"].startswith("sqlite"):
        bootstrap(app)
    else:
        _require_current_schema(app)
    get_store(app).dispose()  # each worker opens its own connections after the fork
    host = host or cfg["server"]["host"]
    port = port or cfg["server"]["port"]
    workers = workers or cfg["server"]["workers"]
    threads = threads or cfg["server"]["threads"]
    where = public_url({**cfg, "server": {**cfg["server"], "host": host, "port": port}})
    scheduler = "leader-elected among the workers" if with_scheduler else "not in this process"
    click.echo(f"Trailmark: {workers} worker(s) × {threads} thread(s) on {host}:{port}, public URL {where}/, "
               f"scheduler {scheduler}.")
    try:
        serve(cfg, host=host, port=port, workers=workers, threads=threads, with_scheduler=with_scheduler)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None


def _require_current_schema(app: Flask) -> None:
    from plugin.store.db import current_revision, head_revision

    try:
        current = current_revision(get_store(app).engine)
    except Exception as exc:  # noqa: BLE001 - any connection problem is reported the same way
        raise click.ClickException(f"cannot reach the database {_safe_url(app.config['DATABASE_URL'])}: "
                                   f"{type(exc).__name__}. Check database.url (DATABASE_URL).") from None
    head = head_revision()
    if current != head:
        raise click.ClickException(f"the database is at revision {current or 'none'} and this Trailmark "
                                   f"needs {head}: run `trailmark db upgrade` once (from one host), or pass "
                                   "--migrate.")


@click.command("scheduler")
@with_appcontext
def scheduler_command() -> None:
    """Run the scheduler alone, leader-elected: across hosts exactly one runs the jobs, the rest stand by."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not app.config["TRAILMARK"]["scheduler"]["enabled"]:
        raise click.ClickException("scheduler.enabled is false (TRAILMARK_SCHEDULER); nothing to run.")
    try:
        from plugin import jobs
    except ImportError:
        raise click.ClickException("this Trailmark has no scheduler jobs (plugin/jobs.py is missing)."
                                   ) from None
    if app.config["DATABASE_URL"].startswith("sqlite"):
        bootstrap(app)
    else:
        _require_current_schema(app)
    cfg = app.config["TRAILMARK"]["scheduler"]
    click.echo(f"Trailmark scheduler (pid {os.getpid()}): standing for election every "
               f"{cfg['heartbeat_seconds']} s; stop with Ctrl-C or SIGTERM.")
    jobs.run_scheduler_forever(app)


def _start_scheduler(app: Flask) -> None:
    try:
        from plugin import jobs
    except ImportError:
        return
    jobs.init_app(app)


def register_commands(app: Flask) -> None:
    for group in (db_cli, keys_cli, platform_cli, config_cli):
        app.cli.add_command(group)
    app.cli.add_command(start)
    app.cli.add_command(serve_command)
    app.cli.add_command(scheduler_command)
    from plugin.admin.cli import admin_cli
    from plugin.privacy_cli import privacy_cli

    app.cli.add_command(admin_cli)
    app.cli.add_command(privacy_cli)
    try:
        from plugin.sync_cli import sync_cli
    except ImportError:
        return
    app.cli.add_command(sync_cli)


def _create_app() -> Flask:
    from plugin.app import create_app

    return create_app()


cli = FlaskGroup(name="trailmark", create_app=_create_app, add_default_commands=False,
                 help="Trailmark: district IT commands.")


def main() -> None:
    try:
        cli.main(prog_name="trailmark")
    except ConfigError as exc:
        click.echo(f"Configuration error: {exc}", err=True)
        sys.exit(2)
