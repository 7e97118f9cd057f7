"""The admin console pages at /admin for district IT.

An administrator arrives either through an LTI launch with an Administrator role (the launch session's ``ltik``
travels in links and forms, as in the other panels, and is checked by ``require_session``), or by signing in at
``/admin/login`` with a local account; that sign-in keeps its session ticket in an HttpOnly, SameSite=Strict
cookie scoped to /admin. Either way every POST needs the session's CSRF token and every change is audited.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for
from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.admin import auth, service
from plugin.admin.schemas import InviteForm, PlatformForm, first_error
from plugin.lti.roles import ADMIN
from plugin.lti.sessions import check_csrf, create_session, load_session
from plugin.panels.views import require_session
from plugin.store.db import get_session
from plugin.store.models import AdminUser, AppSession, AuditEvent, Person

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

COOKIE = "tm_admin"
LOGIN_CSRF_COOKIE = "tm_admin_login"
F = TypeVar("F", bound=Callable[..., Any])


def _now() -> datetime:
    return datetime.now(UTC)


def _cookie_args(path: str = "/admin") -> dict[str, Any]:
    secure = bool(current_app.config["SECURE_COOKIES"] or request.is_secure)
    return {"secure": secure, "httponly": True, "samesite": "Strict", "path": path}


def _principal_from_launch(row: AppSession) -> auth.Principal:
    person = get_session().get(Person, row.person_id) if row.person_id else None
    return auth.Principal(district_id=row.district_id, actor=f"person:{row.person_id}", via="lti",
                          label=person.display_name if person is not None else "LMS administrator")


def _local_session() -> AppSession | None:
    """The signed-in local administrator's session (cookie), if it is live and the account still enabled."""
    ticket = request.cookies.get(COOKIE)
    if not ticket:
        return None
    row = load_session(get_session(), ticket, _now())
    if row is None or row.view != ADMIN or not row.claims.get("admin_user_id"):
        return None
    user = get_session().get(AdminUser, row.claims["admin_user_id"])
    if user is None or user.disabled_at is not None or user.district_id != row.district_id:
        return None
    return row


def admin_page(fn: F) -> F:
    """Allow administrators only: an LTI admin launch (``ltik``) or a local sign-in (cookie)."""

    @functools.wraps(fn)
    def from_launch(*args: Any, **kwargs: Any) -> Any:
        g.principal = _principal_from_launch(g.app_session)
        return fn(*args, **kwargs)

    launched = require_session(ADMIN)(from_launch)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.values.get("ltik") or request.headers.get("Authorization", "").startswith("Bearer "):
            return launched(*args, **kwargs)
        row = _local_session()
        if row is None:
            return redirect(url_for("admin.login", next=request.full_path if request.method == "GET" else None))
        if request.method == "POST" and not check_csrf(row, request.form.get("csrf_token")):
            abort(400, "The form was out of date. Reload the page and try again.")
        g.app_session = row
        g.ltik = None
        g.principal = auth.Principal(district_id=row.district_id, actor=f"admin:{row.claims['admin_user_id']}",
                                     via="password", label=str(row.claims.get("username", "")))
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _who() -> auth.Principal:
    return g.principal  # type: ignore[no-any-return]


def _back(endpoint: str, **values: Any) -> Response:
    return redirect(url_for(endpoint, ltik=g.get("ltik"), **values), code=303)  # type: ignore[return-value]


def _act(action: Callable[[Session], Any], endpoint: str, done: str) -> Response:
    """Run one admin action and go back to ``endpoint``: 404 for a row of another district (or none), 409 for an
    action the row's state refuses, the action committed otherwise."""
    session = get_session()
    try:
        action(session)
    except LookupError:  # service.NotFoundInDistrict, an unknown key
        abort(404)
    except ValueError as exc:
        abort(409, str(exc))
    session.commit()
    return _back(endpoint, done=done)


def _page(template: str, **context: Any) -> str:
    session = get_session()
    return render_template(template, principal=_who(), district=service.district_of(session, _who().district_id),
                           notice=request.args.get("done"), **context)


# --------------------------------------------------------------------------- sign-in


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/admin") and not value.startswith("//") and "\\" not in value:
        return value.rstrip("?")
    return url_for("admin.home")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """Local administrator sign-in: CSRF-checked, rate-limited per account and per address, audited."""
    cfg = current_app.config["TRAILMARK"]["admin"]
    if request.method == "GET":
        token = secrets.token_urlsafe(24)
        resp = Response(render_template("admin/login.html", csrf=token, error=None, username="",
                                        next=request.args.get("next", "")))
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, max_age=3600, **_cookie_args("/admin/login"))
        return resp
    form_token = request.form.get("csrf_token", "")
    cookie_token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not form_token or not cookie_token or not hmac.compare_digest(form_token, cookie_token):
        abort(400, "The sign-in form was out of date. Reload the page and try again.")
    username = (request.form.get("username") or "").strip()[:255]
    password = request.form.get("password") or ""
    session = get_session()
    now = _now()
    try:
        user = auth.sign_in(session, username, password, address=_client_address(), now=now,
                            max_failures=cfg["max_failed_logins"], lockout=timedelta(minutes=cfg["lockout_minutes"]))
    except auth.LoginRefused as exc:
        known = session.scalars(select(AdminUser).where(AdminUser.username == username)).first()
        session.add(AuditEvent(district_id=known.district_id if known else None, at=now, actor="anonymous",
                               action="admin.login_refused", subject=f"admin:{known.id}" if known else None,
                               detail={"locked": exc.retry_after is not None}))
        session.commit()
        status = 429 if exc.retry_after is not None else 401
        resp = Response(render_template("admin/login.html", csrf=form_token, error=str(exc), username=username,
                                        next=request.form.get("next", "")), status=status)
        if exc.retry_after is not None:
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp
    ticket, _row = create_session(
        session, district_id=user.district_id, user_sub=f"admin:{user.id}", view=ADMIN, roles=[], platform_id=None,
        deployment_id=None, context_id=None, person_id=None, class_id=None,
        claims={"signed_in_by": "password", "admin_user_id": user.id, "username": user.username},
        minutes=cfg["session_minutes"], now=now)
    who = auth.Principal(district_id=user.district_id, actor=f"admin:{user.id}", via="password")
    service.audit(session, who, "admin.login", f"admin:{user.id}", now=now)
    session.commit()
    resp = redirect(_safe_next(request.form.get("next")), code=303)
    resp.set_cookie(COOKIE, ticket, max_age=cfg["session_minutes"] * 60, **_cookie_args())
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/admin/login")
    return resp


@bp.post("/logout")
@admin_page
def logout() -> Any:
    """End a local sign-in (an LTI launch session simply expires)."""
    session = get_session()
    row: AppSession = g.app_session
    if g.principal.via == "password":
        service.audit(session, _who(), "admin.logout", g.principal.actor, now=_now())
        session.delete(row)
        session.commit()
    resp = redirect(url_for("admin.login"), code=303)
    resp.delete_cookie(COOKIE, path="/admin")
    return resp


# --------------------------------------------------------------------------- pages


@bp.get("/")
@admin_page
def home() -> str:
    session = get_session()
    now = _now()
    who = _who()
    return _page("admin/home.html", platforms=service.list_platforms(session, who.district_id),
                 sources=service.list_sources(current_app, session, who.district_id, now=now),
                 outbox=service.outbox_overview(session, who.district_id, now=now, limit=0))


@bp.get("/platforms")
@admin_page
def platforms() -> str:
    return _page("admin/platforms.html", platforms=service.list_platforms(get_session(), _who().district_id),
                 form={}, error=None, invite_url=None)


@bp.post("/platforms")
@admin_page
def add_platform() -> Any:
    session = get_session()
    try:
        data = PlatformForm().load(request.form)
    except ValidationError as exc:
        return _platform_error(first_error(exc))
    production = current_app.config["TRAILMARK"]["mode"] == "production"
    for key in ("issuer", "auth_login_url", "auth_token_url", "key_set_url"):
        problem = service.check_platform_url(data[key], production=production)
        if problem:
            return _platform_error(f"{PlatformForm.LABELS[key]}: {problem}")
    try:
        service.add_platform(session, _who(), data, now=_now())
    except ValueError as exc:
        session.rollback()
        return _platform_error(str(exc))
    session.commit()
    return _back("admin.platforms", done="platform-added")


def _platform_error(message: str) -> Response:
    html = _page("admin/platforms.html", platforms=service.list_platforms(get_session(), _who().district_id),
                 form=request.form, error=message, invite_url=None)
    return Response(html, status=400)


@bp.post("/platforms/<int:platform_id>/remove")
@admin_page
def remove_platform(platform_id: int) -> Any:
    return _act(lambda session: service.remove_platform(session, _who(), platform_id, now=_now()),
                "admin.platforms", "platform-removed")


@bp.post("/platforms/invite")
@admin_page
def invite() -> Any:
    session = get_session()
    try:
        data = InviteForm().load(request.form)
    except ValidationError as exc:
        return _platform_error(first_error(exc))
    made = service.create_invite(session, _who(), base_url=current_app.config["BASE_URL"], hours=data["hours"],
                                 note=data["note"], now=_now())
    session.commit()
    return _page("admin/platforms.html", platforms=service.list_platforms(session, _who().district_id), form={},
                 error=None, invite_url=made["url"], invite_hours=made["hours"])


@bp.get("/sources")
@admin_page
def sources() -> str:
    return _page("admin/sources.html",
                 sources=service.list_sources(current_app, get_session(), _who().district_id, now=_now()))


@bp.post("/sources/<name>/sync")
@admin_page
def request_sync(name: str) -> Any:
    full = request.form.get("full") == "1"
    return _act(lambda session: service.request_sync(current_app, session, _who(), name, full=full, now=_now()),
                "admin.sources", "sync-requested")


@bp.get("/sync-runs")
@admin_page
def sync_runs() -> str:
    source = request.args.get("source") or None
    before = request.args.get("before", type=int)
    runs = service.list_runs(get_session(), _who().district_id, source=source, before_id=before)
    return _page("admin/sync_runs.html", runs=runs, source=source,
                 older=runs[-1]["id"] if len(runs) == service.PAGE else None)


@bp.get("/sync-runs/<int:run_id>")
@admin_page
def sync_run(run_id: int) -> str:
    try:
        run = service.get_run(get_session(), _who().district_id, run_id)
    except service.NotFoundInDistrict:
        abort(404)
    return _page("admin/sync_run.html", run=run)


@bp.get("/outbox")
@admin_page
def outbox() -> str:
    return _page("admin/outbox.html", outbox=service.outbox_overview(get_session(), _who().district_id, now=_now()))


@bp.post("/outbox/<int:item_id>/retry")
@admin_page
def retry_item(item_id: int) -> Any:
    return _act(lambda session: service.retry_outbox_item(session, _who(), item_id, now=_now()),
                "admin.outbox", "retried")


@bp.post("/outbox/retry-dead")
@admin_page
def retry_dead() -> Any:
    session = get_session()
    service.retry_all_dead(session, _who(), now=_now())
    session.commit()
    return _back("admin.outbox", done="retried")


@bp.get("/keys")
@admin_page
def keys() -> str:
    return _page("admin/keys.html", keys=service.list_keys(get_session()))


@bp.post("/keys/rotate")
@admin_page
def rotate_key() -> Any:
    session = get_session()
    service.rotate_key(session, _who(), now=_now())
    session.commit()
    return _back("admin.keys", done="rotated")


@bp.post("/keys/<kid>/retire")
@admin_page
def retire_key(kid: str) -> Any:
    return _act(lambda session: service.retire_key(session, _who(), kid, now=_now()), "admin.keys", "retired")


@bp.get("/config")
@admin_page
def config_check() -> str:
    checks = service.config_check(current_app, get_session(), _who().district_id, now=_now())
    return _page("admin/config.html", checks=checks)


@bp.get("/audit")
@admin_page
def audit_log() -> str:
    before = request.args.get("before", type=int)
    events = service.list_audit(get_session(), _who().district_id, before_id=before)
    return _page("admin/audit.html", events=events,
                 older=events[-1]["id"] if len(events) == service.PAGE else None)


@bp.route("/privacy", methods=["GET", "POST"])
@admin_page
def privacy_page() -> Any:
    """Find a student for a privacy request; export their data or erase it (with confirmation)."""
    session = get_session()
    who = _who()
    if request.method == "GET":
        query = (request.args.get("q") or "").strip()
        found = service.find_student(session, who.district_id, query) if query else None
        if found is not None:
            service.audit(session, who, "privacy.lookup", f"person:{found['id']}", now=_now())
            session.commit()
        return _page("admin/privacy.html", query=query, found=found, erased=None)
    person_id = request.form.get("person_id", type=int)
    if person_id is None:
        abort(400, "Choose a person.")
    if request.form.get("confirm") != "erase":
        abort(400, "Type erase to confirm.")
    try:
        report = service.erase_student(session, who, person_id, now=_now())
    except service.NotFoundInDistrict:
        abort(404)
    session.commit()
    return _page("admin/privacy.html", query="", found=None, erased=report)


@bp.get("/privacy/<int:person_id>/export")
@admin_page
def privacy_export(person_id: int) -> Response:
    import json

    session = get_session()
    try:
        data = service.export_student(session, _who(), person_id, now=_now())
    except service.NotFoundInDistrict:
        abort(404)
    session.commit()
    return Response(json.dumps(data, indent=2, ensure_ascii=False), mimetype="application/json",
                    headers={"Content-Disposition": f'attachment; filename="trailmark-person-{person_id}.json"',
                             "Cache-Control": "no-store"})
