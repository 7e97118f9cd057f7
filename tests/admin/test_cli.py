"""``trailmark admin``: local administrators and API tokens from the command line."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from plugin.store.db import get_store
from plugin.store.models import AdminUser, ApiToken, AuditEvent
from tests.admin.conftest import PASSWORD, sign_in

pytestmark = pytest.mark.usefixtures("sandbox_off")


def test_create_user_then_sign_in(app: Any, runner: Any, client: Any) -> None:
    made = runner.invoke(args=["admin", "create-user", "it-jane", "--district", "north", "--password-stdin"],
                         input=f"{PASSWORD}\n")
    assert made.exit_code == 0, made.output
    assert sign_in(client, "it-jane").status_code == 303
    with get_store(app).session() as session:
        user = session.scalars(select(AdminUser)).one()
        assert user.password_hash.startswith("scrypt:") and PASSWORD not in user.password_hash
        assert session.scalars(select(AuditEvent.action).where(AuditEvent.actor == "cli")).all() == [
            "admin.user_created"]


def test_create_user_refuses_short_passwords_and_duplicates(runner: Any) -> None:
    short = runner.invoke(args=["admin", "create-user", "it-jane", "--district", "north", "--password-stdin"],
                          input="short\n")
    assert short.exit_code != 0 and "at least 12" in short.output
    args = ["admin", "create-user", "it-jane", "--district", "north", "--password-stdin"]
    assert runner.invoke(args=args, input=f"{PASSWORD}\n").exit_code == 0
    again = runner.invoke(args=args, input=f"{PASSWORD}\n")
    assert again.exit_code != 0 and "already" in again.output
    unknown = runner.invoke(args=["admin", "create-user", "x1", "--district", "south", "--password-stdin"],
                            input=f"{PASSWORD}\n")
    assert unknown.exit_code != 0 and "No district 'south'" in unknown.output


def test_disable_and_reset_password(runner: Any, client: Any) -> None:
    runner.invoke(args=["admin", "create-user", "it-jane", "--district", "north", "--password-stdin"],
                  input=f"{PASSWORD}\n")
    assert runner.invoke(args=["admin", "disable-user", "it-jane"]).exit_code == 0
    assert sign_in(client, "it-jane").status_code == 401
    new = "another long passphrase"
    assert runner.invoke(args=["admin", "set-password", "it-jane", "--password-stdin"], input=f"{new}\n").exit_code == 0
    assert sign_in(client, "it-jane", new).status_code == 303
    assert "it-jane" in runner.invoke(args=["admin", "list-users"]).output


def test_tokens_create_list_revoke(app: Any, runner: Any, client: Any) -> None:
    made = runner.invoke(args=["admin", "token", "create", "--district", "north", "--name", "monitoring",
                               "--days", "30"])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip().splitlines()[0]
    assert secret.startswith("tmk_")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/admin/district", headers=headers).get_json()["slug"] == "north"
    listing = runner.invoke(args=["admin", "token", "list"]).output
    assert "monitoring" in listing and secret not in listing and "expires" in listing
    with get_store(app).session() as session:
        token_id = session.scalars(select(ApiToken.id)).one()
    assert runner.invoke(args=["admin", "token", "revoke", str(token_id)]).exit_code == 0
    assert client.get("/api/admin/district", headers=headers).status_code == 401
