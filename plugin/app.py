"""The application factory: configuration, store, blueprints, error pages, CLI and scheduler."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, render_template, request
from flask.sessions import SessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from plugin import config as config_mod
from plugin import observability, privacy
from plugin.lti.errors import LtiError
from plugin.store import db

log = logging.getLogger("trailmark")


def create_app(config: Mapping[str, Any] | None = None, *, env: Mapping[str, str] | None = None) -> Flask:
    """Build a Trailmark app. ``config`` overrides the loaded configuration (same shape as the TOML files)."""
    cfg = config_mod.load_config(env=env, overrides=config)
    app = Flask(__name__, template_folder="panels/templates", static_folder="panels/static",
                static_url_path="/static")
    base_url = config_mod.public_url(cfg)
    app.config.update(
        TRAILMARK=cfg,
        BASE_URL=base_url,
        SECRET_KEY=config_mod.secret_key(cfg),
        DATABASE_URL=cfg["database"]["url"],
        DB_POOL_SIZE=cfg["database"]["pool_size"],
        SOURCES=cfg["sources"],
        SCHEDULER_ENABLED=cfg["scheduler"]["enabled"],
        SANDBOX_ENABLED=cfg["sandbox"]["enabled"],
        MAX_CONTENT_LENGTH=1024 * 1024,
        SECURE_COOKIES=base_url.startswith("https://"),
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.session_interface = NoCookieSession()
    if cfg["server"]["trust_proxy"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)  # type: ignore[method-assign]
    logging.getLogger("trailmark").setLevel(cfg["server"]["log_level"])

    db.init_app(app)
    from plugin.progress import on_sync_applied

    app.extensions["trailmark.on_applied"] = on_sync_applied  # a sync that changed classes refreshes them
    privacy.init_app(app)
    observability.init_app(app)

    from plugin.lti import views as lti_views
    from plugin.panels import views as panel_views

    app.register_blueprint(lti_views.bp)
    app.register_blueprint(panel_views.bp)
    if cfg["admin"]["enabled"]:
        from plugin import admin

        admin.init_app(app)
    if cfg["sandbox"]["enabled"]:
        from plugin.sandbox import views as sandbox_views

        app.register_blueprint(sandbox_views.bp)

    from plugin.cli import register_commands

    register_commands(app)
    _error_pages(app)

    @app.after_request
    def _security_headers(resp):  # type: ignore[no-untyped-def]
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.get("/")
    def home() -> str:
        """What Trailmark is, the sandbox when it runs, and the addresses district IT registers in the LMS."""
        return render_template("home.html", base=app.config["BASE_URL"],
                               sandbox=app.config["SANDBOX_ENABLED"], admin="admin.home" in app.view_functions)

    @app.get("/healthz")
    def healthz() -> tuple[dict[str, str], int]:
        return {"status": "ok"}, 200

    return app


class NoCookieSession(SessionInterface):
    """Trailmark keeps no Flask cookie session: a launch session is an ``ltik`` ticket (``plugin/lti/sessions.py``).

    Flask would otherwise open and verify a signed session cookie on every request; ``flask.session`` is a
    read-only empty ``NullSession`` here, and writing to it fails loudly.
    """

    def open_session(self, app: Flask, request: Any) -> None:
        """No session to open: Flask falls back to its null session."""
        return None

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        """Nothing to save."""


def _error_pages(app: Flask) -> None:
    @app.errorhandler(LtiError)
    def _lti_error(exc: LtiError):  # type: ignore[no-untyped-def]
        log.warning("lti.refused reason=%s status=%s path=%s", exc.reason, exc.status, request.path)
        observability.count_refusal(exc.reason)
        return render_template("error.html", title="Trailmark could not open", message=exc.message,
                               reason=exc.reason, hint=exc.hint, status=exc.status), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # type: ignore[no-untyped-def]
        messages = {
            400: "The request was malformed.",
            403: "You do not have access to this page.",
            404: "There is no page at this address.",
            405: "This address does not accept that kind of request.",
            413: "The request is too large.",
        }
        message = exc.description if exc.code in (400, 403) and exc.description else messages.get(
            exc.code or 500, exc.description or "")
        if request.path.startswith(("/api/", "/sandbox/api/", "/lti/jwks", "/healthz")):
            return {"error": exc.name, "message": message}, exc.code
        return render_template("error.html", title=exc.name, message=message, reason=None, hint=None,
                               status=exc.code), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s", request.path)
        db.discard_session()  # nothing half-done is committed at teardown
        return render_template("error.html", title="Something went wrong",
                               message="Trailmark hit an unexpected error. It has been logged; please try again.",
                               reason=None, hint=None, status=500), 500
