"""Panels for each role after a launch. Views parse input, ask the store or the learning rules, render."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for
from marshmallow import ValidationError
from sqlalchemy import select

from plugin import signin as signin_mod
from plugin.cache import get_cache
from plugin.lti import keys as tool_keys
from plugin.lti.deeplink import build_response, placements_for
from plugin.lti.roles import ADMIN, PARENT, STUDENT, TEACHER
from plugin.lti.sessions import LaunchSession, check_csrf, create_session, find_session
from plugin.mail import MailError
from plugin.mail import send as send_mail
from plugin.panels import actions, charts, pages, present, schemas
from plugin.store import queries
from plugin.store.db import get_session
from plugin.store.models import AuditEvent, District

bp = Blueprint("panels", __name__, url_prefix="/p")
bp.add_app_template_global(charts.marker_icon, "marker_icon")
bp.add_app_template_global(present.day_text, "day_text")
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
            row = find_session(get_session(), _ticket(), datetime.now(UTC), get_cache())
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
    row: LaunchSession | None = g.get("app_session")

    def purl(endpoint: str, **values: Any) -> str:
        """A panel URL that carries the launch session."""
        return url_for(endpoint, ltik=g.get("ltik"), **values)

    profile_base: list[str] = []

    def profile_href(student_id: int) -> str:
        """A student's profile URL with the session (built once per page: a class view links every student)."""
        if not profile_base:
            profile_base.extend(purl("panels.student_profile", student_id=0).split("/0?", 1))
        return f"{profile_base[0]}/{int(student_id)}?{profile_base[1]}"

    return {"app_session": row, "purl": purl, "profile_href": profile_href,
            "csrf_token": row.csrf_token if row else ""}


def _me() -> queries.StudentInfo:
    row: LaunchSession = g.app_session
    person = queries.person_info(get_session(), row.district_id, row.person_id or 0)
    if person is None:
        abort(403, "Your account is no longer in this district's roster.")
    return person


_AUDIT_INSERT = AuditEvent.__table__.insert()


def _audit(action: str, subject: str, **detail: Any) -> None:
    """Record a page view in the audit log: written once the page is rendered, just before the request commits."""
    row: LaunchSession = g.app_session
    g.setdefault("audit_rows", []).append({
        "district_id": row.district_id, "at": datetime.now(UTC), "actor": f"person:{row.person_id}",
        "action": action, "subject": subject, "detail": detail})


@bp.after_request
def _write_audit(resp: Response) -> Response:
    """Insert the request's audit rows last, so that a page view holds a write lock (SQLite) only to commit."""
    rows = g.pop("audit_rows", None)
    if rows:
        get_session().execute(_AUDIT_INSERT, rows)
    return resp


def can_view_student(row: LaunchSession, student_id: int) -> bool:
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


PANEL_ENDPOINTS = {TEACHER: "panels.teacher", STUDENT: "panels.student", PARENT: "panels.parent",
                   ADMIN: "admin.home"}


def panel_endpoint(view: str, message_type: str | None) -> str:
    """The endpoint a launch opens: the deep-linking picker, or the panel of the launch's view."""
    if message_type == "LtiDeepLinkingRequest":
        return "panels.deep_link"
    return PANEL_ENDPOINTS[view]


@bp.get("/home")
@require_session()
def home() -> Response:
    """Send a bookmarked or older launch link on to the session's panel (launches now go there directly)."""
    row: LaunchSession = g.app_session
    return redirect(url_for(panel_endpoint(row.view, row.claims.get("message_type")),  # type: ignore[return-value]
                            ltik=g.ltik))


DONE_MESSAGES = {
    "override": "Saved. The student's path has been recomputed.",
    "override-removed": "Override removed. The module follows the mastery rules again.",
    "plan": "Pace plan saved. Every student's pace has been recomputed.",
    "plan-reset": "Due dates spread evenly again. Every student's pace has been recomputed.",
    "accommodation": "Extra days saved. The student's pace has been recomputed.",
    "accommodation-removed": "Extra days removed. The student's pace has been recomputed.",
    "entry": "Added to the profile.",
    "entry-saved": "Saved.",
    "entry-archived": "Archived. It no longer shows on the profile.",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _done() -> str | None:
    return DONE_MESSAGES.get(request.args.get("done", ""))


def _sort() -> str:
    value = request.args.get("sort", "name")
    return value if value in present.SORTS else "name"


def _class_id() -> int:
    row: LaunchSession = g.app_session
    if not row.class_id:
        abort(400, "This launch did not come from a class. Open Trailmark from a course page.")
    return row.class_id


def _render_class(*, status: int = 200, error: str | None = None, error_field: str = "",
                  form: dict[str, Any] | None = None) -> Response:
    row: LaunchSession = g.app_session
    session = get_session()
    context: dict[str, Any] = {"klass": None}
    if row.class_id:
        context = pages.class_page(session, row.district_id, row.class_id, today=_now().date(), sort=_sort())
        if context["klass"] is not None:
            _audit("view_class", f"class:{row.class_id}", view=row.view)
    html = render_template("panels/teacher.html", me=_me(), done=_done(), error=error, error_field=error_field,
                           form=form or {}, **context)
    return Response(html, status=status)


@bp.get("/teacher")
@require_session(TEACHER)
def teacher() -> Response:
    return _render_class()


@bp.post("/teacher/overrides")
@require_session(TEACHER)
def add_override() -> Any:
    """Open a module for a student (shown mastery another way, accommodation) or close it again."""
    row: LaunchSession = g.app_session
    class_id = _class_id()
    try:
        form = schemas.OverrideForm().load(request.form)
    except ValidationError as exc:
        field, message = schemas.first_error(exc)
        return _override_error(message, field)
    session = get_session()
    if not queries.enrolled_student(session, row.district_id, class_id, form["student_id"]):
        return _override_error("Student: choose a student of this class.", "student_id")
    if queries.get_module(session, row.district_id, class_id, form["module_id"]) is None:
        return _override_error("Module: choose a module of this class.", "module_id")
    now = _now()
    override = actions.add_override(session, district_id=row.district_id, class_id=class_id,
                                    student_id=form["student_id"], module_id=form["module_id"], kind=form["kind"],
                                    note=form["note"], author_id=row.person_id, now=now)
    actions.audit(session, row.district_id, row.person_id, "gate_override", f"person:{form['student_id']}", now,
                  class_id=class_id, module_id=form["module_id"], kind=form["kind"], override_id=override.id)
    actions.refresh(session, row.district_id, [class_id], now)
    session.commit()
    return _back(form["return_to"], form["student_id"], "override")


def _override_error(message: str, field: str) -> Response:
    if request.form.get("return_to") == "student":
        student_id = request.form.get("student_id", type=int)
        if student_id is not None and can_view_student(g.app_session, student_id):
            return _render_profile(student_id, status=400, error=message, error_form="override", form=request.form)
    return _render_class(status=400, error=message, error_field=field, form=dict(request.form))


def _back(return_to: str, student_id: int, done: str, anchor: str = "overrides") -> Any:
    if return_to == "student":
        return redirect(url_for("panels.student_profile", student_id=student_id, ltik=g.ltik, done=done)
                        + f"#{anchor}", code=303)
    return redirect(url_for("panels.teacher", ltik=g.ltik, done=done) + f"#{anchor}", code=303)


@bp.post("/teacher/overrides/<int:override_id>/remove")
@require_session(TEACHER)
def remove_override(override_id: int) -> Any:
    row: LaunchSession = g.app_session
    class_id = _class_id()
    try:
        form = schemas.RemoveOverrideForm().load(request.form)
    except ValidationError:
        abort(400, "The form was not understood. Reload the page and try again.")
    session = get_session()
    override = queries.get_override(session, row.district_id, class_id, override_id)
    if override is None or override.revoked_at is not None:
        abort(404)
    now = _now()
    actions.remove_override(session, override, now)
    actions.audit(session, row.district_id, row.person_id, "gate_override_removed", f"person:{override.person_id}",
                  now, class_id=class_id, module_id=override.module_id, override_id=override.id)
    actions.refresh(session, row.district_id, [class_id], now)
    session.commit()
    return _back(form["return_to"], override.person_id, "override-removed")


def _render_plan(*, status: int = 200, error: str | None = None, error_form: str = "",
                 form: Any = None) -> Response:
    row: LaunchSession = g.app_session
    context = pages.plan_page(get_session(), row.district_id, _class_id())
    if context["klass"] is not None:
        _audit("view_pace_plan", f"class:{row.class_id}", view=row.view)
    html = render_template("panels/pace_plan.html", me=_me(), done=_done(), error=error, error_form=error_form,
                           form=form or {}, **context)
    return Response(html, status=status)


@bp.get("/teacher/pace-plan")
@require_session(TEACHER)
def pace_plan() -> Response:
    return _render_plan()


@bp.post("/teacher/pace-plan")
@require_session(TEACHER)
def save_pace_plan() -> Any:
    """Save module due dates (kept as edits where they differ from the even spread), or spread them evenly again."""
    row: LaunchSession = g.app_session
    class_id = _class_id()
    session = get_session()
    modules = queries.module_infos(session, row.district_id, [class_id])
    titles = {m.id: m.title for m in modules}
    try:
        form = schemas.PacePlanForm().load(request.form)
    except ValidationError as exc:
        field, message = schemas.first_error(exc)
        due_errors = exc.messages.get("due") if isinstance(exc.messages, dict) else None
        if isinstance(due_errors, dict):
            key = next(iter(due_errors))
            title = titles.get(int(key)) if str(key).isdigit() else None
            message = f"Due date for {title or 'a module'}: {schemas.first_error(ValidationError(due_errors))[1]}"
            message = message.replace(": Value: ", ": ").replace(f": {key}: ", ": ")
        return _render_plan(status=400, error=message, error_form="plan", form=request.form)
    info = queries.class_info(session, row.district_id, [class_id])[class_id]
    start = form["start_date"] or info.term_start
    end = form["end_date"] or info.term_end
    if start is None or end is None:
        return _render_plan(status=400, error="Term: enter the first and last day of the term.", error_form="plan",
                            form=request.form)
    if end <= start:
        return _render_plan(status=400, error="Term end: the term must end after it starts.", error_form="plan",
                            form=request.form)
    for module_id, day in form["due"].items():
        if module_id not in titles:
            continue
        if day is not None and not start <= day <= end:
            return _render_plan(status=400, error=(
                f"Due date for {titles[module_id]}: {day.isoformat()} is outside the term "
                f"({start.isoformat()} to {end.isoformat()})."), error_form="plan", form=request.form)
    now = _now()
    reset = form["action"] == "reset"
    actions.save_pace_plan(session, district_id=row.district_id, class_id=class_id, module_ids=list(titles),
                           term=(info.term_start, info.term_end), start=start, end=end,
                           skip_weekends=form["skip_weekends"], due=form["due"], reset=reset,
                           author_id=row.person_id, now=now)
    actions.audit(session, row.district_id, row.person_id, "pace_plan_saved", f"class:{class_id}", now,
                  reset=reset)
    actions.refresh(session, row.district_id, [class_id], now)
    session.commit()
    return redirect(url_for("panels.pace_plan", ltik=g.ltik, done="plan-reset" if reset else "plan"), code=303)


@bp.post("/teacher/accommodations")
@require_session(TEACHER)
def save_accommodation() -> Any:
    row: LaunchSession = g.app_session
    class_id = _class_id()
    try:
        form = schemas.AccommodationForm().load(request.form)
    except ValidationError as exc:
        return _render_plan(status=400, error=schemas.first_error(exc)[1], error_form="accommodation",
                            form=request.form)
    session = get_session()
    if not queries.enrolled_student(session, row.district_id, class_id, form["student_id"]):
        return _render_plan(status=400, error="Student: choose a student of this class.",
                            error_form="accommodation", form=request.form)
    now = _now()
    actions.save_accommodation(session, district_id=row.district_id, class_id=class_id,
                               student_id=form["student_id"], extra_days=form["extra_days"], note=form["note"],
                               now=now)
    actions.audit(session, row.district_id, row.person_id, "accommodation_saved", f"person:{form['student_id']}",
                  now, class_id=class_id, extra_days=form["extra_days"])
    actions.refresh(session, row.district_id, [class_id], now)
    session.commit()
    return redirect(url_for("panels.pace_plan", ltik=g.ltik, done="accommodation") + "#accommodations", code=303)


@bp.post("/teacher/accommodations/remove")
@require_session(TEACHER)
def remove_accommodation() -> Any:
    row: LaunchSession = g.app_session
    class_id = _class_id()
    try:
        form = schemas.StudentChoiceForm().load(request.form)
    except ValidationError:
        abort(400, "Choose a student.")
    session = get_session()
    found = queries.get_accommodation(session, row.district_id, class_id, form["student_id"])
    if found is None:
        abort(404)
    now = _now()
    actions.remove_accommodation(session, found)
    actions.audit(session, row.district_id, row.person_id, "accommodation_removed", f"person:{form['student_id']}",
                  now, class_id=class_id)
    actions.refresh(session, row.district_id, [class_id], now)
    session.commit()
    return redirect(url_for("panels.pace_plan", ltik=g.ltik, done="accommodation-removed") + "#accommodations",
                    code=303)


@bp.get("/student")
@require_session(STUDENT)
def student() -> Response:
    row: LaunchSession = g.app_session
    return _render_profile(row.person_id or 0)


@bp.get("/students/<int:student_id>")
@require_session(TEACHER, PARENT, ADMIN, STUDENT)
def student_profile(student_id: int) -> Response:
    return _render_profile(student_id)


def _render_profile(student_id: int, *, status: int = 200, error: str | None = None, error_form: str = "",
                    form: Any = None) -> Response:
    """A learner profile; anyone but the student themself is checked and audited."""
    row: LaunchSession = g.app_session
    if not can_view_student(row, student_id):
        log.warning("panels.denied view=%s student=%s", row.view, student_id)
        abort(403, "You can only see learner profiles of your own students or children.")
    session = get_session()
    person, classes = queries.student_with_classes(session, row.district_id, student_id)
    if person is None:
        abort(404)
    own = row.person_id == student_id
    if not own:
        _audit("view_student_profile", f"person:{student_id}", view=row.view)
    context = pages.profile_page(session, row.district_id, person, own=own, viewer_id=row.person_id,
                                 viewer_view=row.view, today=_now().date(),
                                 override_class_id=row.class_id if row.view == TEACHER else None, classes=classes)
    html = render_template("panels/student.html", done=_done(), error=error, error_form=error_form,
                           form=form or {}, **context)
    return Response(html, status=status)


def _entry_role(student_id: int) -> str:
    """Who may write in this profile: the student ("student") or one of their teachers ("teacher")."""
    row: LaunchSession = g.app_session
    if row.view == STUDENT and row.person_id == student_id:
        return "student"
    if row.view == TEACHER and queries.teaches_student(get_session(), row.district_id, row.person_id or 0,
                                                       student_id):
        return "teacher"
    abort(403, "You can only change your own profile, or the profile of a student you teach.")


ENTRY_KINDS = {"student": ("interest", "aspiration", "goal"), "teacher": ("goal", "note")}


def _after_entry(student_id: int, done: str, anchor: str) -> Any:
    row: LaunchSession = g.app_session
    if row.view == STUDENT:
        return redirect(url_for("panels.student", ltik=g.ltik, done=done) + f"#{anchor}", code=303)
    return redirect(url_for("panels.student_profile", student_id=student_id, ltik=g.ltik, done=done)
                    + f"#{anchor}", code=303)


@bp.post("/students/<int:student_id>/entries")
@require_session(STUDENT, TEACHER)
def add_entry(student_id: int) -> Any:
    """A student adds an interest, aspiration or goal; a teacher co-sets a goal or adds a note."""
    role = _entry_role(student_id)
    row: LaunchSession = g.app_session
    try:
        form = schemas.EntryForm().load(request.form)
    except ValidationError as exc:
        return _render_profile(student_id, status=400, error=schemas.first_error(exc)[1], error_form="add",
                               form=request.form)
    if form["kind"] not in ENTRY_KINDS[role]:
        return _render_profile(student_id, status=400, error="Kind: choose one of the kinds in the list.",
                               error_form="add", form=request.form)
    session = get_session()
    if form["competency_id"] is not None:
        classes = queries.class_ids_of_student(session, row.district_id, student_id)
        if form["competency_id"] not in {c.id for c in queries.competency_infos(session, row.district_id, classes)}:
            return _render_profile(student_id, status=400, error="Competency: choose one from the list.",
                                   error_form="add", form=request.form)
    now = _now()
    entry = actions.add_entry(session, district_id=row.district_id, student_id=student_id, kind=form["kind"],
                              text=form["text"], author_id=row.person_id, author_role=role,
                              target_date=form["target_date"], status=form["status"],
                              competency_id=form["competency_id"], now=now)
    actions.audit(session, row.district_id, row.person_id, "profile_entry_added", f"person:{student_id}", now,
                  entry_id=entry.id, kind=entry.kind)
    actions.refresh(session, row.district_id, queries.class_ids_of_student(session, row.district_id, student_id),
                    now)
    session.commit()
    return _after_entry(student_id, "entry", f"{form['kind']}s")


def _editable_entry(student_id: int, entry_id: int) -> Any:
    role = _entry_role(student_id)
    row: LaunchSession = g.app_session
    entry = queries.get_entry(get_session(), row.district_id, entry_id)
    if entry is None or entry.person_id != student_id or entry.archived_at is not None:
        abort(404)
    allowed = (entry.kind in ENTRY_KINDS["student"] if role == "student"
               else entry.author_role == "teacher" and entry.kind in ENTRY_KINDS["teacher"])
    if not allowed:
        abort(403, "You cannot change this entry.")
    return entry


@bp.post("/students/<int:student_id>/entries/<int:entry_id>")
@require_session(STUDENT, TEACHER)
def edit_entry(student_id: int, entry_id: int) -> Any:
    entry = _editable_entry(student_id, entry_id)
    row: LaunchSession = g.app_session
    try:
        form = schemas.EntryEditForm().load(request.form)
    except ValidationError as exc:
        return _render_profile(student_id, status=400, error=schemas.first_error(exc)[1],
                               error_form=f"edit-{entry_id}", form=request.form)
    session = get_session()
    now = _now()
    actions.edit_entry(session, entry, text=form["text"], target_date=form["target_date"], status=form["status"],
                       now=now)
    actions.audit(session, row.district_id, row.person_id, "profile_entry_edited", f"person:{student_id}", now,
                  entry_id=entry.id, kind=entry.kind)
    actions.refresh(session, row.district_id, queries.class_ids_of_student(session, row.district_id, student_id),
                    now)
    session.commit()
    return _after_entry(student_id, "entry-saved", f"{entry.kind}s")


@bp.post("/students/<int:student_id>/entries/<int:entry_id>/archive")
@require_session(STUDENT, TEACHER)
def archive_entry(student_id: int, entry_id: int) -> Any:
    entry = _editable_entry(student_id, entry_id)
    row: LaunchSession = g.app_session
    session = get_session()
    now = _now()
    actions.archive_entry(session, entry, now)
    actions.audit(session, row.district_id, row.person_id, "profile_entry_archived", f"person:{student_id}", now,
                  entry_id=entry.id, kind=entry.kind)
    actions.refresh(session, row.district_id, queries.class_ids_of_student(session, row.district_id, student_id),
                    now)
    session.commit()
    return _after_entry(student_id, "entry-archived", f"{entry.kind}s")


@bp.get("/parent")
@require_session(PARENT)
def parent() -> Response:
    """A parent's view of one child (a switcher when there are several); read only, audited."""
    row: LaunchSession = g.app_session
    session = get_session()
    children = queries.list_children(session, row.district_id, row.person_id or 0)
    chosen = None
    wanted = request.args.get("child", type=int)
    if wanted is not None:
        chosen = next((c for c in children if c.id == wanted), None)
        if chosen is None:
            abort(403, "You can only see your own children.")
    elif children:
        chosen = children[0]
    context: dict[str, Any] = {}
    if chosen is not None:
        _audit("view_student_profile", f"person:{chosen.id}", view=row.view)
        context = pages.profile_page(session, row.district_id, chosen, own=False, viewer_id=row.person_id,
                                     viewer_view=row.view, today=_now().date())
    return Response(render_template("panels/parent.html", me=_me(), children=children, child=chosen, done=None,
                                    error=None, error_form="", form={}, **context))


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


@bp.route("/deep-link", methods=["GET", "POST"])
@require_session(TEACHER, ADMIN)
def deep_link() -> Any:
    row: LaunchSession = g.app_session
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
