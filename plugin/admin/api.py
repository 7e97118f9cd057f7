"""The admin JSON API at /api/admin, for district IT's scripts, and its OpenAPI document.

Every endpoint needs ``Authorization: Bearer tmk_…``, a token made by ``trailmark admin token create``; a token
belongs to one district and sees and changes only that district. Each route is declared once with
``operation``: the same declaration registers the Flask view and its OpenAPI operation (built with apispec and
its marshmallow plugin from the schemas in ``plugin/admin/schemas.py``), so the document at
``/api/admin/openapi.json`` always lists exactly the routes that exist.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app, g, jsonify, request
from marshmallow import Schema, ValidationError

from plugin.admin import auth, schemas, service
from plugin.store.db import get_session

bp = Blueprint("admin_api", __name__, url_prefix="/api/admin")
PREFIX = "/api/admin"
SPEC_EXTENSION = "trailmark.admin_openapi"


@dataclass(frozen=True)
class Parameter:
    name: str
    where: str  # path | query
    type: str  # integer | string
    description: str = ""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form: /platforms/{platform_id}
    endpoint: str
    summary: str
    response: type[Schema] | None
    many: bool = False
    status: int = 200
    body: type[Schema] | None = None
    params: Sequence[Parameter] = field(default_factory=tuple)
    tag: str = ""


OPERATIONS: list[Operation] = []


class ApiError(Exception):
    """An error answered as JSON ``{"error", "message"}`` with a status."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


def _now() -> datetime:
    return datetime.now(UTC)


def _who() -> auth.Principal:
    return g.principal  # type: ignore[no-any-return]


def _flask_rule(path: str, params: Sequence[Parameter]) -> str:
    kinds = {p.name: p.type for p in params if p.where == "path"}

    def convert(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"<int:{name}>" if kinds.get(name) == "integer" else f"<{name}>"

    return re.sub(r"\{(\w+)\}", convert, path)


def _path_params(path: str, params: Sequence[Parameter]) -> tuple[Parameter, ...]:
    declared = {p.name for p in params}
    implied = tuple(Parameter(name, "path", "integer" if name.endswith("_id") else "string")
                    for name in re.findall(r"\{(\w+)\}", path) if name not in declared)
    return (*implied, *params)


def operation(method: str, path: str, *, summary: str, response: type[Schema] | None = None, many: bool = False,
              status: int = 200, body: type[Schema] | None = None, params: Sequence[Parameter] = (),
              tag: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an API route: the Flask view (token-checked) and its OpenAPI operation."""
    all_params = _path_params(path, params)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        op = Operation(method.upper(), path, fn.__name__, summary, response, many, status, body, all_params, tag)

        @functools.wraps(fn)
        def view(**kwargs: Any) -> Any:
            try:
                _authenticate()
                data = fn(**kwargs)
            except ApiError as exc:
                get_session().rollback()
                return _error(exc.status, exc.error, exc.message)
            except service.NotFoundInDistrict as exc:
                get_session().rollback()
                return _error(404, "Not Found", str(exc))
            if op.status == 204:
                resp = Response(status=204)
            else:
                payload = op.response(many=op.many).dump(data) if op.response is not None else data
                resp = jsonify(payload)
                resp.status_code = op.status
            resp.headers["Cache-Control"] = "no-store"
            return resp

        bp.add_url_rule(_flask_rule(path, all_params), endpoint=fn.__name__, view_func=view, methods=[op.method])
        OPERATIONS.append(op)
        return view

    return decorator


def _error(status: int, error: str, message: str) -> Response:
    resp = jsonify({"error": error, "message": message})
    resp.status_code = status
    resp.headers["Cache-Control"] = "no-store"
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="trailmark-admin"'
    return resp


def _authenticate() -> None:
    header = request.headers.get("Authorization", "")
    secret = header[7:].strip() if header.startswith("Bearer ") else None
    session = get_session()
    row = auth.find_token(session, secret, _now())
    if row is None:
        raise ApiError(401, "Unauthorized", "Send Authorization: Bearer <token> with a live token made by "
                                            "`trailmark admin token create`.")
    g.principal = auth.Principal(district_id=row.district_id, actor=f"token:{row.id}", via="token", label=row.name)


def _body(schema: type[Schema]) -> dict[str, Any]:
    raw = request.get_json(silent=True)
    if not isinstance(raw, dict):
        raise ApiError(400, "Bad Request", "Send a JSON object (Content-Type: application/json).")
    try:
        return schema().load(raw)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ApiError(400, "Bad Request", schemas.first_error(exc)) from None


def _limit() -> int:
    return max(1, min(request.args.get("limit", default=service.PAGE, type=int) or service.PAGE, 500))


PAGE_PARAMS = (Parameter("limit", "query", "integer", "At most this many (1–500, default 50)"),
               Parameter("before", "query", "integer", "Only ids below this one (the next page)"))


# --------------------------------------------------------------------------- endpoints


@operation("GET", "/district", summary="The district this token belongs to", response=schemas.DistrictOut,
           tag="district")
def get_district() -> Any:
    return service.district_of(get_session(), _who().district_id)


@operation("GET", "/platforms", summary="Registered LMS platforms", response=schemas.PlatformOut, many=True,
           tag="platforms")
def list_platforms() -> Any:
    return service.list_platforms(get_session(), _who().district_id)


@operation("POST", "/platforms", summary="Register an LMS by hand (or add deployment ids to a registration)",
           response=schemas.PlatformOut, status=201, body=schemas.PlatformForm, tag="platforms")
def add_platform() -> Any:
    data = _body(schemas.PlatformForm)
    production = current_app.config["TRAILMARK"]["mode"] == "production"
    for key in ("issuer", "auth_login_url", "auth_token_url", "key_set_url"):
        problem = service.check_platform_url(data[key], production=production)
        if problem:
            raise ApiError(400, "Bad Request", f"{key}: {problem}")
    session = get_session()
    try:
        platform = service.add_platform(session, _who(), data, now=_now())
    except ValueError as exc:
        raise ApiError(409, "Conflict", str(exc)) from None
    session.commit()
    return platform


@operation("DELETE", "/platforms/{platform_id}", summary="Remove a registration (its launches stop working)",
           status=204, tag="platforms")
def remove_platform(platform_id: int) -> Any:
    session = get_session()
    service.remove_platform(session, _who(), platform_id, now=_now())
    session.commit()


@operation("POST", "/platforms/invites", summary="A one-time Dynamic Registration URL",
           response=schemas.InviteOut, status=201, body=schemas.InviteForm, tag="platforms")
def create_invite() -> Any:
    data = _body(schemas.InviteForm)
    session = get_session()
    made = service.create_invite(session, _who(), base_url=current_app.config["BASE_URL"], hours=data["hours"],
                                 note=data["note"], now=_now())
    session.commit()
    return made


@operation("GET", "/sources", summary="Sources with their last and next sync, health and errors",
           response=schemas.SourceOut, many=True, tag="sync")
def list_sources() -> Any:
    return service.list_sources(current_app, get_session(), _who().district_id, now=_now())


@operation("POST", "/sources/{name}/sync", summary="Ask the scheduler to sync a source at its next poll "
           "(a paused one too)", response=schemas.SyncRequestedOut, status=202, body=schemas.SyncRequestIn,
           tag="sync")
def request_sync(name: str) -> Any:
    data = _body(schemas.SyncRequestIn) if request.get_data() else {"full": False}
    session = get_session()
    try:
        requested = service.request_sync(current_app, session, _who(), name, full=data["full"], now=_now())
    except ValueError as exc:
        raise ApiError(409, "Conflict", str(exc)) from None
    session.commit()
    return requested


@operation("GET", "/sync-runs", summary="Sync runs, newest first", response=schemas.SyncRunOut, many=True,
           params=(Parameter("source", "query", "string", "Only this source's runs"), *PAGE_PARAMS), tag="sync")
def list_sync_runs() -> Any:
    return service.list_runs(get_session(), _who().district_id, source=request.args.get("source") or None,
                             limit=_limit(), before_id=request.args.get("before", type=int))


@operation("GET", "/sync-runs/{run_id}", summary="One sync run with counts per record kind and its errors",
           response=schemas.SyncRunDetailOut, tag="sync")
def get_sync_run(run_id: int) -> Any:
    return service.get_run(get_session(), _who().district_id, run_id)


@operation("GET", "/outbox", summary="Outbox depth by status, dead letters and the pending backlog",
           response=schemas.OutboxOut, params=(PAGE_PARAMS[0],), tag="outbox")
def get_outbox() -> Any:
    return service.outbox_overview(get_session(), _who().district_id, now=_now(), limit=_limit())


@operation("POST", "/outbox/{item_id}/retry", summary="Put one dead letter back in the queue",
           response=schemas.RetriedOut, tag="outbox")
def retry_outbox_item(item_id: int) -> Any:
    session = get_session()
    try:
        service.retry_outbox_item(session, _who(), item_id, now=_now())
    except ValueError as exc:
        raise ApiError(409, "Conflict", str(exc)) from None
    session.commit()
    return {"retried": 1}


@operation("POST", "/outbox/retry-dead", summary="Put every dead letter back in the queue",
           response=schemas.RetriedOut, tag="outbox")
def retry_all_dead() -> Any:
    session = get_session()
    n = service.retry_all_dead(session, _who(), now=_now())
    session.commit()
    return {"retried": n}


@operation("GET", "/keys", summary="Trailmark's signing keys (shared by every district)", response=schemas.KeyOut,
           many=True, tag="keys")
def list_keys() -> Any:
    return service.list_keys(get_session())


@operation("POST", "/keys/rotate", summary="Make a new signing key; the old one stays published until retired",
           response=schemas.RotatedOut, tag="keys")
def rotate_key() -> Any:
    session = get_session()
    rotated = service.rotate_key(session, _who(), now=_now())
    session.commit()
    return rotated


@operation("POST", "/keys/{kid}/retire", summary="Stop publishing a retiring key", status=204,
           params=(Parameter("kid", "path", "string", "The key id"),), tag="keys")
def retire_key(kid: str) -> Any:
    session = get_session()
    try:
        service.retire_key(session, _who(), kid, now=_now())
    except LookupError as exc:
        raise ApiError(404, "Not Found", str(exc)) from None
    except ValueError as exc:
        raise ApiError(409, "Conflict", str(exc)) from None
    session.commit()


@operation("GET", "/config-check", summary="Check configuration, database, Redis, keys, platforms and sources",
           response=schemas.ConfigCheckOut, tag="district")
def config_check() -> Any:
    checks = service.config_check(current_app, get_session(), _who().district_id, now=_now())
    return {"ok": all(c.ok for c in checks), "checks": [c.as_dict() for c in checks]}


@operation("GET", "/audit-events", summary="Audit events, newest first", response=schemas.AuditEventOut,
           many=True, params=(Parameter("action", "query", "string", "Only this action"), *PAGE_PARAMS),
           tag="district")
def list_audit_events() -> Any:
    return service.list_audit(get_session(), _who().district_id, limit=_limit(),
                              before_id=request.args.get("before", type=int),
                              action=request.args.get("action") or None)


@operation("GET", "/people/{person_id}/export", summary="Everything Trailmark holds about one person (audited)",
           response=schemas.ExportOut, tag="privacy")
def export_person(person_id: int) -> Any:
    session = get_session()
    data = service.export_student(session, _who(), person_id, now=_now())
    session.commit()
    return data


@operation("POST", "/people/{person_id}/erase", summary="Erase one person's data and keep a tombstone (audited)",
           response=schemas.ErasureOut, body=schemas.EraseRequest, tag="privacy")
def erase_person(person_id: int) -> Any:
    if not _body(schemas.EraseRequest)["confirm"]:
        raise ApiError(400, "Bad Request", "confirm: must be true; erasure cannot be undone")
    session = get_session()
    report = service.erase_student(session, _who(), person_id, now=_now())
    session.commit()
    return report


# --------------------------------------------------------------------------- the OpenAPI document


def _parameter(p: Parameter) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.where == "path",
                           "schema": {"type": p.type}}
    if p.description:
        out["description"] = p.description
    return out


def build_spec(base_url: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every declared operation."""
    spec = APISpec(title="Trailmark admin API", version="1.0.0", openapi_version="3.1.0",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "District administration: platforms, sources, sync runs, the outbox, "
                                        "signing keys, the configuration check, the audit log and privacy "
                                        "requests. A token sees only its own district."},
                   servers=[{"url": f"{base_url}{PREFIX}"}])
    spec.components.security_scheme("token", {"type": "http", "scheme": "bearer",
                                              "description": "A token from `trailmark admin token create`"})
    spec.components.schema("Error", schema=schemas.ErrorOut)
    error = {"description": "Error", "content": {"application/json": {"schema": "Error"}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {"401": {**error, "description": "No live token"}}
        if op.status == 204:
            responses["204"] = {"description": "Done"}
        else:
            schema: Any = op.response
            content = {"type": "array", "items": schema} if op.many else schema
            responses[str(op.status)] = {"description": op.summary,
                                         "content": {"application/json": {"schema": content}}}
        if any(p.where == "path" for p in op.params):
            responses["404"] = {**error, "description": "Not in this district"}
        if op.body is not None:
            responses["400"] = {**error, "description": "Invalid request body"}
        entry: dict[str, Any] = {"operationId": op.endpoint, "summary": op.summary, "responses": responses,
                                 "security": [{"token": []}], "tags": [op.tag] if op.tag else []}
        if op.params:
            entry["parameters"] = [_parameter(p) for p in op.params]
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": op.body}}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document (no token needed: it describes the API, not a district)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    doc = app.extensions.get(SPEC_EXTENSION)
    if doc is None:
        doc = app.extensions[SPEC_EXTENSION] = build_spec(app.config["BASE_URL"])
    return jsonify(doc)
