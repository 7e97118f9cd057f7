"""LTI endpoints: /lti/login, /lti/launch, /lti/jwks, /lti/register, /lti/config/canvas.json."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Response, current_app, jsonify, redirect, render_template, request, url_for

from plugin import observability
from plugin.cache import Cache, get_cache
from plugin.lti import keys, registration
from plugin.lti.errors import LtiError
from plugin.lti.launch import (
    KeySetCache,
    LaunchContext,
    LaunchSettings,
    NeedsPlatformStorage,
    begin_login,
    check_launch,
    parse_login,
    state_cookie_name,
    use_login,
)
from plugin.lti.platforms import AnyPlatform, fetch_jwks
from plugin.lti.provision import provision
from plugin.lti.roles import NONE
from plugin.lti.sessions import NotTaken, create_session
from plugin.panels.views import panel_endpoint
from plugin.store.db import get_session

bp = Blueprint("lti", __name__, url_prefix="/lti")
log = logging.getLogger("trailmark.lti")

HTTP_EXTENSION = "trailmark.http"
KEY_MEMORY_EXTENSION = "trailmark.platform_keys"  # parsed platform keys of this process (see KeySetCache)


def http_session() -> requests.Session:
    """One pooled HTTP session per app for platform calls (every call passes a timeout)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    http = app.extensions.get(HTTP_EXTENSION)
    if http is None:
        http = requests.Session()
        http.headers["User-Agent"] = "Trailmark/0.1 LTI"
        app.extensions[HTTP_EXTENSION] = http
    return http


def _lti_cfg() -> dict[str, Any]:
    return current_app.config["TRAILMARK"]["lti"]


def _base_url() -> str:
    return current_app.config["BASE_URL"]


def _now() -> datetime:
    return datetime.now(UTC)


def key_cache() -> KeySetCache:
    cfg = _lti_cfg()

    def fetch(platform: AnyPlatform) -> tuple[dict[str, Any], Any]:
        if platform.registered_via == "sandbox" and current_app.config.get("SANDBOX_ENABLED"):
            from plugin.sandbox.platform import sandbox_jwks

            return sandbox_jwks(current_app), {"Cache-Control": "max-age=3600"}
        return fetch_jwks(platform.key_set_url, timeout=cfg["http_timeout_seconds"], http=http_session())

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    memory = app.extensions.setdefault(KEY_MEMORY_EXTENSION, {})
    return KeySetCache(fetch, default_seconds=cfg["jwks_cache_seconds"], memory=memory, shared=get_cache(app))


def _shared() -> Cache | None:
    """Redis when configured (login states, used nonces, launch sessions), otherwise None: the database."""
    cache = get_cache()
    return cache if cache.enabled else None


def _cookie_kwargs() -> dict[str, Any]:
    secure = current_app.config["SECURE_COOKIES"] or request.is_secure
    return {"secure": secure, "httponly": True, "samesite": "None" if secure else "Lax", "path": "/lti/"}


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    """OIDC third-party initiated login: check the registration, issue state + nonce, send the browser on."""
    req = parse_login(request.values)
    session = get_session()
    state, platform, auth_url = begin_login(
        session, req, base_url=_base_url(), launch_url=f"{_base_url()}/lti/launch", now=_now(),
        state_minutes=_lti_cfg()["login_state_minutes"], cache=_shared())
    log.debug("lti.login platform=%s storage=%s", platform.id, state.storage)  # the launch line says the rest
    max_age = _lti_cfg()["login_state_minutes"] * 60
    if state.storage == "platform":
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(platform.auth_login_url))
        resp = Response(render_template("lti/platform_storage_put.html", state=state.state, nonce=state.nonce,
                                        target=req.lti_storage_target, origin=origin, auth_url=auth_url))
    elif request.headers.get("Sec-Fetch-Dest") == "iframe" and not request.values.get("new_window"):
        # Inside an LMS frame without platform storage: check that cookies work before leaving, and offer a
        # new window (where they are first-party) when they do not.
        new_window_url = url_for("lti.login", _external=False, **{**request.values.to_dict(), "new_window": "1"})
        resp = Response(render_template("lti/cookie_check.html", auth_url=auth_url, new_window_url=new_window_url))
        resp.set_cookie("tm_cookie_check", "1", max_age=max_age, **{**_cookie_kwargs(), "httponly": False})
    else:
        resp = redirect(auth_url, code=302)  # type: ignore[assignment]
    resp.set_cookie(state_cookie_name(state.state), state.state, max_age=max_age, **_cookie_kwargs())
    return resp


@bp.post("/launch")
def launch() -> Response:
    """Validate the id_token, provision the person and class, mint a session and open the right panel."""
    session = get_session()
    cfg = _lti_cfg()
    settings = LaunchSettings(base_url=_base_url(), leeway=cfg["clock_leeway_seconds"],
                              max_token_age=cfg["max_token_age_seconds"])
    shared = _shared()
    try:
        checked = check_launch(session, request.form, cookies=request.cookies, key_cache=key_cache(),
                               settings=settings, now=_now(), cache=shared)
        ctx, pending = checked.context, checked.pending
        if ctx.view == NONE and pending is not None and shared is not None:
            use_login(shared, pending)
    except NeedsPlatformStorage as storage:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(storage.platform.auth_login_url))
        target = request.form.get("lti_storage_target") or "_parent"
        return Response(render_template("lti/platform_storage_get.html", state=storage.state, origin=origin,
                                        target=target[:64], id_token=request.form.get("id_token", ""),
                                        action=url_for("lti.launch")))
    except LtiError as exc:
        session.rollback()
        if exc.hint == "new_window":
            return _new_window_page(exc)
        raise
    if ctx.view == NONE:
        _count_launch(ctx)
        return Response(render_template("no_view.html"), status=403)
    person_id, class_id = provision(session, ctx, cache=shared, cached=checked.launcher)
    try:  # a login kept in Redis is used up by the same script that writes the session (one round trip)
        ticket, _row = create_session(
            session, district_id=ctx.district_id, user_sub=ctx.user_sub, view=ctx.view, roles=list(ctx.roles),
            platform_id=ctx.platform_id, deployment_id=ctx.deployment_id, context_id=ctx.context_id,
            person_id=person_id, class_id=class_id, claims=_session_claims(ctx),
            minutes=cfg["session_minutes"], now=_now(), cache=shared,
            take=(pending.state_key, pending.nonce_key, pending.nonce_seconds) if pending is not None else None)
    except NotTaken as lost:
        session.rollback()  # nothing this launch provisioned stays
        if pending is None:
            raise
        raise pending.refused(lost.taken) or lost from None
    session.commit()
    _count_launch(ctx)
    # Straight to the panel of the launch's view: no hop through /p/home (one request fewer per launch).
    resp = redirect(url_for(panel_endpoint(ctx.view, ctx.message_type), ltik=ticket), code=303)
    state = request.form.get("state", "")
    resp.delete_cookie(state_cookie_name(state), path="/lti/", secure=_cookie_kwargs()["secure"],
                       samesite=_cookie_kwargs()["samesite"])
    return resp  # type: ignore[return-value]


def _count_launch(ctx: LaunchContext) -> None:
    log.info("lti.launch platform=%s message=%s view=%s", ctx.platform_id, ctx.message_type, ctx.view)
    observability.count_launch(ctx.message_type, ctx.view)


def _session_claims(ctx: LaunchContext) -> dict[str, Any]:
    """Only the launch facts panels read later: no raw id_token, no names or emails (those live in the roster)."""
    claims: dict[str, Any] = {"message_type": ctx.message_type, "issuer": ctx.issuer, "client_id": ctx.client_id}
    if ctx.is_deep_linking:
        claims.update(deep_link_return_url=ctx.deep_link_return_url, deep_link_data=ctx.deep_link_data,
                      deep_link_accept_multiple=ctx.deep_link_accept_multiple,
                      deep_link_accept_lineitem=ctx.deep_link_accept_lineitem)
    return claims


def _new_window_page(exc: LtiError) -> Response:
    """Cookies are blocked in the frame: offer to open Trailmark in a new window, where they work."""
    log.warning("lti.refused reason=%s path=%s", exc.reason, request.path)
    return Response(render_template("lti/new_window.html", message=exc.message), status=401)


@bp.get("/jwks")
def jwks() -> Response:
    session = get_session()
    data = keys.jwks(session)
    if not data["keys"]:
        keys.ensure_key(session)
        session.commit()
        data = keys.jwks(session)
    resp = jsonify(data)
    resp.headers["Cache-Control"] = "public, max-age=300"
    return resp


@bp.get("/register")
def register() -> Response:
    """LTI Dynamic Registration initiation."""
    req = registration.parse_request(request.args)
    cfg = current_app.config["TRAILMARK"]
    session = get_session()
    allowlists = {d["slug"]: d["issuer_allowlist"] for d in cfg["districts"]}
    platform = registration.register(
        session, http_session(), req, base_url=_base_url(), tool_name=cfg["lti"]["tool_name"],
        contact_email=cfg["lti"]["contact_email"], allowlists=allowlists,
        local=cfg["mode"] == "local" or cfg["lti"]["allow_http_platforms"],
        timeout=cfg["lti"]["http_timeout_seconds"])
    session.commit()
    log.info("lti.registered platform=%s issuer=%s via=dynamic", platform.id, platform.issuer)
    return Response(render_template("lti/registered.html", platform=platform))


@bp.get("/config/canvas.json")
def canvas_config() -> Response:
    cfg = current_app.config["TRAILMARK"]
    return jsonify(registration.canvas_developer_key(base_url=_base_url(), tool_name=cfg["lti"]["tool_name"],
                                                     public_jwk_url=f"{_base_url()}/lti/jwks"))
