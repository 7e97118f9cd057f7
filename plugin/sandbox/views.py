"""Sandbox LMS endpoints: the course page, OIDC auth, JWKS, the client-credentials token, NRPS and AGS,
and the deep-linking return. Off unless the sandbox is enabled."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jwt
from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jwt.algorithms import RSAAlgorithm
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate
from sqlalchemy import select

from plugin.lti import keys as tool_keys
from plugin.sandbox import platform as sb
from plugin.store import queries
from plugin.store.db import get_session
from plugin.store.models import (
    Class,
    District,
    Person,
    Platform,
    SandboxLineItem,
    SandboxResourceLink,
    SandboxScore,
)

bp = Blueprint("sandbox", __name__, url_prefix="/sandbox")

AGS = "https://purl.imsglobal.org/spec/lti-ags/scope/"
NRPS_SCOPE = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
TOKEN_SECONDS = 3600


def _platform() -> Platform:
    session = get_session()
    platform = session.scalars(select(Platform).where(Platform.issuer == sb.issuer(current_app),
                                                      Platform.client_id == sb.CLIENT_ID)).first()
    if platform is None:
        platform = sb.ensure_sandbox(session, current_app)
        session.commit()
    return platform


def _login_url(user_key: str, hint: str) -> str:
    base = current_app.config["BASE_URL"]
    params = {"iss": sb.issuer(current_app), "login_hint": user_key, "target_link_uri": f"{base}/lti/launch",
              "lti_message_hint": hint, "client_id": sb.CLIENT_ID, "lti_deployment_id": sb.DEPLOYMENT_ID}
    return f"{base}/lti/login?{urlencode(params)}"


@bp.get("")
@bp.get("/")
def index() -> str:
    """The sandbox course page: who can launch, and what the course's gradebook holds."""
    platform = _platform()
    session = get_session()
    klass = session.scalars(select(Class).where(Class.district_id == platform.district_id,
                                                Class.sourced_id == sb.CONTEXT_ID)).first()
    links = list(session.scalars(select(SandboxResourceLink).where(SandboxResourceLink.context_id == sb.CONTEXT_ID)
                                 .order_by(SandboxResourceLink.id)))
    launches = [(u, url_for("sandbox.course", user_key=u.key)) for u in sb.USERS]
    return render_template("sandbox/index.html", klass=klass, launches=launches, links=links,
                           deep_link=url_for("sandbox.course", user_key="teacher", hint="deep-link"),
                           gradebook=url_for("sandbox.gradebook"))


@bp.get("/course/<user_key>")
def course(user_key: str) -> str:
    """The LMS course page as one user sees it, with Trailmark in a frame (the launch starts inside it)."""
    u = sb.user(user_key)
    if u is None:
        abort(404)
    hint = request.args.get("hint", sb.RESOURCE_LINK_ID)
    if hint != "deep-link" and not hint.startswith("sandbox-"):
        hint = sb.RESOURCE_LINK_ID
    return render_template("sandbox/course.html", user=u, login_url=_login_url(u.key, hint),
                           deep=hint == "deep-link")


class _AuthRequest(Schema):
    class Meta:
        unknown = EXCLUDE

    scope = fields.String(required=True, validate=validate.Equal("openid"))
    response_type = fields.String(required=True, validate=validate.Equal("id_token"))
    response_mode = fields.String(required=True, validate=validate.Equal("form_post"))
    prompt = fields.String(load_default="none")
    client_id = fields.String(required=True)
    redirect_uri = fields.String(required=True)
    login_hint = fields.String(required=True)
    state = fields.String(required=True, validate=validate.Length(max=512))
    nonce = fields.String(required=True, validate=validate.Length(max=512))
    lti_message_hint = fields.String(load_default="")


@bp.route("/auth", methods=["GET", "POST"])
def auth() -> Response:
    """OIDC authorization endpoint: checks the tool's request and posts a signed id_token back."""
    _platform()
    try:
        req = _AuthRequest().load(request.values.to_dict())
    except ValidationError as exc:
        abort(400, f"The authentication request is invalid: {exc.messages}")
    base = current_app.config["BASE_URL"]
    if req["client_id"] != sb.CLIENT_ID or req["redirect_uri"] != f"{base}/lti/launch":
        abort(400, "Unknown client_id or a redirect_uri that is not registered for it.")
    u = sb.user(req["login_hint"])
    if u is None:
        return Response(render_template("sandbox/form_post.html", action=req["redirect_uri"],
                                        fields={"error": "login_required", "state": req["state"],
                                                "error_description": "Unknown sandbox user."}))
    claims = sb.id_token_claims(current_app, u, nonce=req["nonce"], message_hint=req["lti_message_hint"],
                                mentee_subs=sb.mentee_subs(u.key))
    token = sb.sign(current_app, claims)
    return Response(render_template("sandbox/form_post.html", action=req["redirect_uri"],
                                    fields={"id_token": token, "state": req["state"]}))


@bp.get("/jwks")
def jwks() -> Response:
    resp = jsonify(sb.sandbox_jwks(current_app))
    resp.headers["Cache-Control"] = "public, max-age=3600"
    return resp


# --------------------------------------------------------------------------- services


def _tokens() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="sandbox-access-token")


@bp.post("/token")
def token() -> Response:
    """OAuth2 client credentials with a JWT assertion signed by the tool's key."""
    form = request.form
    if form.get("grant_type") != "client_credentials" or form.get("client_assertion_type") != \
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
        return jsonify({"error": "unsupported_grant_type"}), 400  # type: ignore[return-value]
    assertion = form.get("client_assertion", "")
    try:
        kid = jwt.get_unverified_header(assertion).get("kid")
        jwk = next(k for k in tool_keys.jwks(get_session())["keys"] if k.get("kid") == kid)
        jwt.decode(assertion, RSAAlgorithm.from_jwk(jwk), algorithms=["RS256"], issuer=sb.CLIENT_ID,
                   audience=f"{current_app.config['BASE_URL']}/sandbox/token",
                   options={"require": ["exp", "iat", "jti", "sub"]})
    except (jwt.PyJWTError, StopIteration, ValueError):
        return jsonify({"error": "invalid_client"}), 401  # type: ignore[return-value]
    allowed = {AGS + "lineitem", AGS + "lineitem.readonly", AGS + "result.readonly", AGS + "score", NRPS_SCOPE}
    scopes = [s for s in form.get("scope", "").split() if s in allowed]
    access = _tokens().dumps({"scopes": scopes, "n": secrets.token_hex(4)})
    return jsonify({"access_token": access, "token_type": "Bearer", "expires_in": TOKEN_SECONDS,
                    "scope": " ".join(scopes)})  # type: ignore[return-value]


def _require_scope(*needed: str) -> None:
    auth_header = request.headers.get("Authorization", "")
    if not auth_header.startswith("Bearer "):
        abort(401)
    try:
        data = _tokens().loads(auth_header[7:], max_age=TOKEN_SECONDS)
    except BadSignature:
        abort(401)
    if not set(needed) & set(data.get("scopes", [])):
        abort(403, "The access token lacks the scope this service needs.")


def _context_or_404(context_id: str) -> tuple[Platform, Class]:
    platform = _platform()
    klass = get_session().scalars(select(Class).where(Class.district_id == platform.district_id,
                                                      Class.lti_context_id == context_id)).first()
    if klass is None:
        abort(404)
    return platform, klass


@bp.get("/api/contexts/<context_id>/memberships")
def memberships(context_id: str) -> Response:
    """NRPS 2.0 membership container, paged with limit and a Link rel=next header."""
    _require_scope(NRPS_SCOPE)
    platform, klass = _context_or_404(context_id)
    session = get_session()
    limit = max(1, min(request.args.get("limit", 50, type=int) or 50, 200))
    offset = max(0, request.args.get("offset", 0, type=int) or 0)
    role_map = {"teacher": "Instructor", "student": "Learner"}
    members = []
    teachers = _class_teachers(session, platform.district_id, klass.id)
    people = [(p, "teacher") for p in teachers] + [
        (p, "student") for p in queries.list_students(session, platform.district_id, klass.id)]
    subs = _subs(session, platform, [p.id for p, _ in people])
    for person, role in people[offset:offset + limit]:
        members.append({"status": "Active", "name": person.display_name, "given_name": person.given_name,
                        "family_name": person.family_name, "email": person.email,
                        "user_id": subs.get(person.id, f"sandbox-{person.username}"),
                        "lis_person_sourcedid": person.sis_id,
                        "roles": [f"{sb.LIS}membership#{role_map[role]}"]})
    resp = jsonify({"id": request.url, "context": {"id": context_id, "label": klass.class_code,
                                                    "title": klass.title}, "members": members})
    resp.mimetype = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
    if offset + limit < len(people):
        nxt = url_for("sandbox.memberships", context_id=context_id, limit=limit, offset=offset + limit,
                      _external=True)
        resp.headers["Link"] = f'<{nxt}>; rel="next"'
    return resp


def _class_teachers(session: Any, district_id: int, class_id: int) -> list[Person]:
    from plugin.store.models import Enrollment

    return list(session.scalars(select(Person).join(Enrollment, Enrollment.person_id == Person.id).where(
        Enrollment.district_id == district_id, Enrollment.class_id == class_id, Enrollment.role == "teacher",
        Enrollment.status == "active")))


def _subs(session: Any, platform: Platform, person_ids: list[int]) -> dict[int, str]:
    from plugin.store.models import ExternalRef

    rows = session.execute(select(ExternalRef.entity_id, ExternalRef.external_id).where(
        ExternalRef.district_id == platform.district_id, ExternalRef.kind == "person",
        ExternalRef.namespace == f"lti:{platform.id}", ExternalRef.entity_id.in_(person_ids)))
    return {entity: ext for entity, ext in rows}


class _LineItemSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    label = fields.String(required=True, validate=validate.Length(min=1, max=255))
    scoreMaximum = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    resourceId = fields.String(load_default=None, allow_none=True)
    resourceLinkId = fields.String(load_default=None, allow_none=True)
    tag = fields.String(load_default=None, allow_none=True)


def _line_item_json(item: SandboxLineItem) -> dict[str, Any]:
    data: dict[str, Any] = {"id": url_for("sandbox.line_item", context_id=item.context_id, item_id=item.id,
                                          _external=True), "label": item.label, "scoreMaximum": item.score_maximum}
    for key, value in (("resourceId", item.resource_id), ("resourceLinkId", item.resource_link_id),
                       ("tag", item.tag)):
        if value:
            data[key] = value
    return data


@bp.route("/api/contexts/<context_id>/lineitems", methods=["GET", "POST"])
def line_items(context_id: str) -> Response:
    """AGS line item container."""
    session = get_session()
    _context_or_404(context_id)
    if request.method == "GET":
        _require_scope(AGS + "lineitem", AGS + "lineitem.readonly")
        query = select(SandboxLineItem).where(SandboxLineItem.context_id == context_id)
        for arg, column in (("resource_id", SandboxLineItem.resource_id), ("tag", SandboxLineItem.tag),
                            ("resource_link_id", SandboxLineItem.resource_link_id)):
            if request.args.get(arg):
                query = query.where(column == request.args[arg])
        resp = jsonify([_line_item_json(i) for i in session.scalars(query.order_by(SandboxLineItem.id))])
        resp.mimetype = "application/vnd.ims.lis.v2.lineitemcontainer+json"
        return resp
    _require_scope(AGS + "lineitem")
    try:
        data = _LineItemSchema().load(request.get_json(force=True, silent=True) or {})
    except ValidationError as exc:
        abort(400, f"Invalid line item: {exc.messages}")
    item = SandboxLineItem(context_id=context_id, label=data["label"], score_maximum=data["scoreMaximum"],
                           resource_id=data["resourceId"], resource_link_id=data["resourceLinkId"], tag=data["tag"],
                           created_at=datetime.now(UTC))
    session.add(item)
    session.flush()
    resp = jsonify(_line_item_json(item))
    resp.status_code = 201
    resp.mimetype = "application/vnd.ims.lis.v2.lineitem+json"
    return resp


@bp.get("/api/contexts/<context_id>/lineitems/<int:item_id>")
def line_item(context_id: str, item_id: int) -> Response:
    _require_scope(AGS + "lineitem", AGS + "lineitem.readonly")
    item = get_session().get(SandboxLineItem, item_id)
    if item is None or item.context_id != context_id:
        abort(404)
    return jsonify(_line_item_json(item))


class _ScoreSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    userId = fields.String(required=True)
    scoreGiven = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0))
    scoreMaximum = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0,
                                                                                           min_inclusive=False))
    comment = fields.String(load_default=None, allow_none=True)
    timestamp = fields.AwareDateTime(required=True)
    activityProgress = fields.String(required=True, validate=validate.OneOf(
        ["Initialized", "Started", "InProgress", "Submitted", "Completed"]))
    gradingProgress = fields.String(required=True, validate=validate.OneOf(
        ["FullyGraded", "Pending", "PendingManual", "Failed", "NotReady"]))


@bp.post("/api/contexts/<context_id>/lineitems/<int:item_id>/scores")
def scores(context_id: str, item_id: int) -> Response:
    """AGS score publish: keeps the latest score per user; an older timestamp is refused (409)."""
    _require_scope(AGS + "score")
    session = get_session()
    item = session.get(SandboxLineItem, item_id)
    if item is None or item.context_id != context_id:
        abort(404)
    try:
        data = _ScoreSchema().load(request.get_json(force=True, silent=True) or {})
    except ValidationError as exc:
        abort(400, f"Invalid score: {exc.messages}")
    if data["scoreGiven"] is not None and data["scoreMaximum"] is None:
        abort(400, "scoreMaximum is required with scoreGiven.")
    row = session.scalars(select(SandboxScore).where(SandboxScore.line_item_id == item.id,
                                                     SandboxScore.user_id == data["userId"])).first()
    stamp = data["timestamp"]
    if row is not None:
        previous = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
        if stamp < previous:
            return Response("A newer score is already recorded.", status=409)
    if row is None:
        row = SandboxScore(line_item_id=item.id, user_id=data["userId"], activity_progress="", grading_progress="",
                           timestamp=stamp)
        session.add(row)
    row.score_given = data["scoreGiven"]
    row.score_maximum = data["scoreMaximum"]
    row.comment = data["comment"]
    row.activity_progress = data["activityProgress"]
    row.grading_progress = data["gradingProgress"]
    row.timestamp = stamp
    return Response(status=204)


@bp.get("/api/contexts/<context_id>/lineitems/<int:item_id>/results")
def results(context_id: str, item_id: int) -> Response:
    _require_scope(AGS + "result.readonly")
    session = get_session()
    item = session.get(SandboxLineItem, item_id)
    if item is None or item.context_id != context_id:
        abort(404)
    query = select(SandboxScore).where(SandboxScore.line_item_id == item.id)
    if request.args.get("user_id"):
        query = query.where(SandboxScore.user_id == request.args["user_id"])
    item_url = url_for("sandbox.line_item", context_id=context_id, item_id=item.id, _external=True)
    out = [{"id": f"{item_url}/results/{s.id}", "scoreOf": item_url, "userId": s.user_id,
            "resultScore": s.score_given, "resultMaximum": s.score_maximum, "comment": s.comment}
           for s in session.scalars(query.order_by(SandboxScore.id)) if s.grading_progress == "FullyGraded"]
    resp = jsonify(out)
    resp.mimetype = "application/vnd.ims.lis.v2.resultcontainer+json"
    return resp


# --------------------------------------------------------------------------- deep linking return and gradebook


@bp.post("/deep-link-return")
def deep_link_return() -> Response:
    """Receive the tool's LtiDeepLinkingResponse, verify it, and add its items (and columns) to the course."""
    token = request.form.get("JWT", "")
    session = get_session()
    base = current_app.config["BASE_URL"]
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        jwk = next(k for k in tool_keys.jwks(session)["keys"] if k.get("kid") == kid)
        claims = jwt.decode(token, RSAAlgorithm.from_jwk(jwk), algorithms=["RS256"], issuer=sb.CLIENT_ID,
                            audience=sb.issuer(current_app), options={"require": ["exp", "iat", "nonce"]})
    except (jwt.PyJWTError, StopIteration, ValueError) as exc:
        abort(400, f"The deep linking response is not valid: {type(exc).__name__}.")
    if claims.get("https://purl.imsglobal.org/spec/lti/claim/message_type") != "LtiDeepLinkingResponse":
        abort(400, "Not a deep linking response.")
    added = []
    now = datetime.now(UTC)
    for item in claims.get("https://purl.imsglobal.org/spec/lti-dl/claim/content_items", []):
        if not isinstance(item, dict) or item.get("type") != "ltiResourceLink":
            continue
        url = str(item.get("url") or f"{base}/lti/launch")
        line_item_id = None
        if isinstance(item.get("lineItem"), dict):
            li = item["lineItem"]
            line = SandboxLineItem(context_id=sb.CONTEXT_ID, label=str(li.get("label") or item.get("title")),
                                   score_maximum=float(li.get("scoreMaximum") or 100),
                                   resource_id=li.get("resourceId"), tag=li.get("tag"), created_at=now)
            session.add(line)
            session.flush()
            line_item_id = line.id
        link = SandboxResourceLink(context_id=sb.CONTEXT_ID, title=str(item.get("title") or "Trailmark"), url=url,
                                   custom=item.get("custom") or {}, line_item_id=line_item_id, created_at=now)
        session.add(link)
        session.flush()
        if line_item_id:
            session.get(SandboxLineItem, line_item_id).resource_link_id = f"sandbox-link-{link.id}"  # type: ignore
        added.append(link)
    return Response(render_template("sandbox/deep_link_done.html", added=added, back=url_for("sandbox.index")))


@bp.get("/gradebook")
def gradebook() -> str:
    """What the teacher sees in the LMS gradebook: columns Trailmark created and the scores it posted."""
    platform = _platform()
    session = get_session()
    items = list(session.scalars(select(SandboxLineItem).where(SandboxLineItem.context_id == sb.CONTEXT_ID)
                                 .order_by(SandboxLineItem.id)))
    scores_by = {(s.line_item_id, s.user_id): s for s in session.scalars(
        select(SandboxScore).where(SandboxScore.line_item_id.in_([i.id for i in items])))} if items else {}
    students = [u for u in sb.USERS if u.role == "student"]
    district = session.get(District, platform.district_id)
    return render_template("sandbox/gradebook.html", items=items, students=students, scores=scores_by,
                           district=district)
