"""Panels for each role after a launch. Views parse input, ask the store or the learning rules, render."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for
from sqlalchemy import select

from plugin import signin as signin_mod
from plugin.lti import keys as tool_keys
from plugin.lti.deeplink import build_response, placements_for
from plugin.lti.roles import ADMIN, PARENT, STUDENT, TEACHER
from plugin.lti.sessions import check_csrf, create_session, load_session
from plugin.mail import MailError
from plugin.mail import send as send_mail
from plugin.store import queries
from plugin.store.db import get_session
from plugin.store.models import AppSession, AuditEvent, District, Person

bp = Blueprint("panels", __name__, url_prefix="/p")
log = logging.getLogger("trailmark.panels")

F = TypeVar("F", bound=Callable[..., Any])


def _ticket() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:].strip()
    return request.values.get("ltik")


def require_session(*views: str) -> Callable[[F], F]:
    """Load the launch session (``ltik``) and allow only the given views; POSTs also need the CSRF token."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            row = load_session(get_session(), _ticket(), datetime.now(UTC))
            if row is None:
                return Response(render_template(
                    "error.html", title="Your Trailmark session has ended",
                    message="Open Trailmark again from your course in the LMS.", reason="session_missing",
                    hint=None, status=401), status=401)
            if views and row.view not in views:
                abort(403, "This page is not part of your Trailmark view.")
            if request.method == "POST" and not check_csrf(row, request.form.get("csrf_token")):
                abort(400, "The form was out of date. Reload the page and try again.")
            g.app_session = row
            g.ltik = _ticket()
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


@bp.app_context_processor
def _inject() -> dict[str, Any]:
    row: AppSession | None = g.get("app_session")

    def purl(endpoint: str, **values: Any) -> str:
        """A panel URL that carries the launch session."""
        return url_for(endpoint, ltik=g.get("ltik"), **values)

    return {"app_session": row, "purl": purl, "csrf_token": row.csrf_token if row else ""}


def _me() -> Person:
    row: AppSession = g.app_session
    person = queries.get_person(get_session(), row.district_id, row.person_id or 0)
    if person is None:
        abort(403, "Your account is no longer in this district's roster.")
    return person


def _audit(action: str, subject: str, **detail: Any) -> None:
    row: AppSession = g.app_session
    get_session().add(AuditEvent(district_id=row.district_id, at=datetime.now(UTC), actor=f"person:{row.person_id}",
                                 action=action, subject=subject, detail=detail))


def can_view_student(row: AppSession, student_id: int) -> bool:
    """Self, a teacher of one of the student's classes, a linked parent, or a district admin; nobody else."""
    session = get_session()
    if row.person_id == student_id:
        return True
    if row.view == ADMIN:
        return queries.get_person(session, row.district_id, student_id) is not None
    if row.view == TEACHER:
        return queries.teaches_student(session, row.district_id, row.person_id or 0, student_id)
    if row.view == PARENT:
        return queries.is_guardian_of(session, row.district_id, row.person_id or 0, student_id)
    return False


@bp.get("/home")
@require_session()
def home() -> Response:
    row: AppSession = g.app_session
    if row.claims.get("message_type") == "LtiDeepLinkingRequest":
        return redirect(url_for("panels.deep_link", ltik=g.ltik))  # type: ignore[return-value]
    target = {TEACHER: "panels.teacher", STUDENT: "panels.student", PARENT: "panels.parent",
              ADMIN: "panels.admin"}[row.view]
    return redirect(url_for(target, ltik=g.ltik))  # type: ignore[return-value]


@bp.get("/teacher")
@require_session(TEACHER)
def teacher() -> str:
    row: AppSession = g.app_session
    session = get_session()
    klass = queries.get_class(session, row.district_id, row.class_id) if row.class_id else None
    students = queries.list_students(session, row.district_id, klass.id) if klass else []
    modules = queries.list_modules(session, row.district_id, klass.id) if klass else []
    return render_template("panels/teacher.html", me=_me(), klass=klass, students=students, modules=modules)


@bp.get("/student")
@require_session(STUDENT)
def student() -> str:
    me = _me()
    return _profile_page(me, own=True)


@bp.get("/students/<int:student_id>")
@require_session(TEACHER, PARENT, ADMIN, STUDENT)
def student_profile(student_id: int) -> str:
    row: AppSession = g.app_session
    if not can_view_student(row, student_id):
        log.warning("panels.denied view=%s student=%s", row.view, student_id)
        abort(403, "You can only see learner profiles of your own students or children.")
    person = queries.get_person(get_session(), row.district_id, student_id)
    if person is None:
        abort(404)
    if row.person_id != student_id:
        _audit("view_student_profile", f"person:{student_id}", view=row.view)
    return _profile_page(person, own=row.person_id == student_id)


def _profile_page(person: Person, *, own: bool) -> str:
    row: AppSession = g.app_session
    session = get_session()
    classes = queries.list_classes_of(session, row.district_id, person.id)
    modules = {c.id: queries.list_modules(session, row.district_id, c.id) for c in classes}
    return render_template("panels/student.html", student=person, own=own, classes=classes, modules=modules)


@bp.get("/parent")
@require_session(PARENT)
def parent() -> str:
    row: AppSession = g.app_session
    children = queries.list_children(get_session(), row.district_id, row.person_id or 0)
    chosen = None
    wanted = request.args.get("child", type=int)
    if wanted is not None:
        chosen = next((c for c in children if c.id == wanted), None)
        if chosen is None:
            abort(403, "You can only see your own children.")
    elif children:
        chosen = children[0]
    classes = queries.list_classes_of(get_session(), row.district_id, chosen.id) if chosen else []
    if chosen is not None:
        _audit("view_student_profile", f"person:{chosen.id}", view=row.view)
    return render_template("panels/parent.html", me=_me(), children=children, child=chosen, classes=classes)


@bp.route("/signin/<district_slug>", methods=["GET", "POST"])
def signin(district_slug: str) -> Any:
    """Parents ask for an emailed sign-in link with the address the school has on file."""
    session = get_session()
    district = session.scalars(select(District).where(District.slug == district_slug)).first()
    if district is None:
        abort(404)
    if request.method == "GET":
        return render_template("panels/signin.html", district=district, sent=False)
    email = (request.form.get("email") or "").strip()
    if not email or "@" not in email or len(email) > 254:
        return render_template("panels/signin.html", district=district, sent=False,
                               error="Enter the email address the school has for you."), 400
    mail_cfg = current_app.config["TRAILMARK"]["mail"]
    now = datetime.now(UTC)
    person = signin_mod.find_guardian(session, district, email)
    token = signin_mod.issue_link(session, person, minutes=mail_cfg["signin_minutes"], now=now) if person else None
    if person is not None and token is not None:
        session.commit()
        url = f"{current_app.config['BASE_URL']}{url_for('panels.signin_link', token=token)}"
        try:
            send_mail(mail_cfg, to=person.email or email, subject="Your Trailmark sign-in link",
                      text=signin_mod.signin_text(name=person.display_name, url=url,
                                                  minutes=mail_cfg["signin_minutes"]))
        except MailError as exc:
            log.error("signin.mail_failed district=%s: %s", district.slug, exc)
    return render_template("panels/signin.html", district=district, sent=True)


@bp.get("/signin/link/<token>")
def signin_link(token: str) -> Any:
    session = get_session()
    now = datetime.now(UTC)
    person = signin_mod.redeem_link(session, token, now)
    if person is None:
        return render_template("error.html", title="This sign-in link no longer works",
                               message="Sign-in links work once and expire. Ask for a new one from the sign-in page.",
                               reason="signin_link_invalid", hint=None, status=410), 410
    minutes = current_app.config["TRAILMARK"]["lti"]["session_minutes"]
    ticket, _row = create_session(session, district_id=person.district_id, user_sub=f"email:{person.id}",
                                  view=PARENT, roles=[], platform_id=None, deployment_id=None, context_id=None,
                                  person_id=person.id, class_id=None, claims={"signed_in_by": "email"},
                                  minutes=minutes, now=now)
    session.add(AuditEvent(district_id=person.district_id, at=now, actor=f"person:{person.id}",
                           action="sign_in_by_email", subject=f"person:{person.id}", detail={}))
    session.commit()
    return redirect(url_for("panels.parent", ltik=ticket))


@bp.get("/admin")
@require_session(ADMIN)
def admin() -> str:
    row: AppSession = g.app_session
    session = get_session()
    return render_template("panels/admin.html", platforms=queries.list_platforms(session, row.district_id),
                           keys=queries.list_keys(session))


@bp.route("/deep-link", methods=["GET", "POST"])
@require_session(TEACHER, ADMIN)
def deep_link() -> Any:
    row: AppSession = g.app_session
    claims = row.claims
    if claims.get("message_type") != "LtiDeepLinkingRequest" or not claims.get("deep_link_return_url"):
        abort(400, "This launch was not a request to add Trailmark to the course.")
    session = get_session()
    modules = queries.list_modules(session, row.district_id, row.class_id) if row.class_id else []
    options = placements_for([(m.sourced_id, m.title) for m in modules])
    if request.method == "GET":
        return render_template("panels/deep_link.html", options=options,
                               multiple=claims.get("deep_link_accept_multiple", True))
    chosen_keys = request.form.getlist("item")
    chosen = [o for o in options if o.key in chosen_keys]
    if not chosen:
        return render_template("panels/deep_link.html", options=options, error="Choose at least one item to add.",
                               multiple=claims.get("deep_link_accept_multiple", True)), 400
    if not claims.get("deep_link_accept_multiple", True):
        chosen = chosen[:1]
    token = build_response(
        issuer=claims["issuer"], client_id=claims["client_id"], deployment_id=row.deployment_id or "",
        return_url=claims["deep_link_return_url"], data=claims.get("deep_link_data"),
        base_url=current_app.config["BASE_URL"], chosen=chosen, key=tool_keys.signing_key(session),
        with_line_items=claims.get("deep_link_accept_lineitem", True))
    return render_template("panels/deep_link_return.html", return_url=claims["deep_link_return_url"], jwt=token,
                           count=len(chosen))
