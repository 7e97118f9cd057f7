"""The admin console for district IT: pages at /admin and a JSON API at /api/admin (described by OpenAPI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask


def init_app(app: Flask) -> None:
    """Register the console's pages and API."""
    from plugin.admin import api, views

    app.register_blueprint(views.bp)
    app.register_blueprint(api.bp)
