"""``trailmark admin …``: local administrators and API tokens (thin wrappers around plugin.admin.auth)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import click
from flask.cli import AppGroup
from sqlalchemy import select

from plugin.admin import auth
from plugin.store.db import get_store
from plugin.store.models import AdminUser, ApiToken, AuditEvent, District

admin_cli = AppGroup("admin", help="Admin console accounts and API tokens.")
token_cli = AppGroup("token", help="Bearer tokens for the admin JSON API (/api/admin).")
admin_cli.add_command(token_cli)


def _district(session, slug: str | None) -> District:  # type: ignore[no-untyped-def]
    from plugin.cli import _district as find

    return find(session, slug)


def _audit(session, district_id: int, action: str, subject: str, **detail: object) -> None:  # type: ignore[no-untyped-def]
    session.add(AuditEvent(district_id=district_id, at=datetime.now(UTC), actor="cli", action=action,
                           subject=subject, detail=dict(detail)))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@admin_cli.command("create-user")
@click.argument("username")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def create_user(username: str, district_slug: str | None, password_stdin: bool) -> None:
    """Make a local administrator who signs in at /admin/login."""
    password = _read_password(password_stdin)
    with get_store().session() as session:
        district = _district(session, district_slug)
        try:
            user = auth.create_user(session, district.id, username, password, datetime.now(UTC))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        _audit(session, district.id, "admin.user_created", f"admin:{user.id}", username=username)
    click.echo(f"Administrator {username} can now sign in at /admin/login (district {district.slug}).")


@admin_cli.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def set_password(username: str, password_stdin: bool) -> None:
    """Give a local administrator a new password."""
    password = _read_password(password_stdin)
    with get_store().session() as session:
        user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
        if user is None:
            raise click.ClickException(f"no administrator {username!r}")
        try:
            auth.set_password(user, password)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        user.disabled_at = None
        _audit(session, user.district_id, "admin.password_set", f"admin:{user.id}")
    click.echo(f"New password set for {username}.")


@admin_cli.command("disable-user")
@click.argument("username")
def disable_user(username: str) -> None:
    """Stop a local administrator from signing in (their open sessions end too)."""
    with get_store().session() as session:
        user = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
        if user is None:
            raise click.ClickException(f"no administrator {username!r}")
        user.disabled_at = datetime.now(UTC)
        _audit(session, user.district_id, "admin.user_disabled", f"admin:{user.id}")
    click.echo(f"{username} can no longer sign in.")


@admin_cli.command("list-users")
def list_users() -> None:
    """List local administrators."""
    with get_store().session() as session:
        slugs = dict(session.execute(select(District.id, District.slug)).all())
        for user in session.scalars(select(AdminUser).order_by(AdminUser.username)):
            state = "disabled" if user.disabled_at else "active"
            last = f"{user.last_login_at:%Y-%m-%d %H:%M}" if user.last_login_at else "never"
            click.echo(f"{user.username:<32} {slugs.get(user.district_id, '?'):<12} {state:<8} last sign-in {last}")


@token_cli.command("create")
@click.option("--district", "district_slug", default=None, help="District slug (needed when there are several).")
@click.option("--name", required=True, help="What the token is for, e.g. 'monitoring'.")
@click.option("--days", type=click.IntRange(1, 3650), default=None, help="Expire after this many days.")
def token_create(district_slug: str | None, name: str, days: int | None) -> None:
    """Make an API token; it is printed once and only its hash is kept."""
    with get_store().session() as session:
        district = _district(session, district_slug)
        secret, row = auth.create_token(session, district.id, name, datetime.now(UTC), days=days)
        _audit(session, district.id, "admin.token_created", f"token:{row.id}", name=name, days=days)
        token_id = row.id
    click.echo(secret)
    click.echo(f"Token {token_id} for district {district.slug}: send it as 'Authorization: Bearer …'. "
               "It is not shown again.", err=True)


@token_cli.command("list")
def token_list() -> None:
    """List API tokens (never their secrets)."""
    with get_store().session() as session:
        slugs = dict(session.execute(select(District.id, District.slug)).all())
        for t in session.scalars(select(ApiToken).order_by(ApiToken.id)):
            state = "revoked" if t.revoked_at else (f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "live")
            used = f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never"
            click.echo(f"{t.id:>4}  {t.prefix}…  {slugs.get(t.district_id, '?'):<12} {state:<18} used {used}  "
                       f"{t.name}")


@token_cli.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    """Revoke an API token at once."""
    with get_store().session() as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise click.ClickException(f"no token {token_id} (see `trailmark admin token list`)")
        row.revoked_at = datetime.now(UTC)
        _audit(session, row.district_id, "admin.token_revoked", f"token:{row.id}")
    click.echo(f"Token {token_id} revoked.")
