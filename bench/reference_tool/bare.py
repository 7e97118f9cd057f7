"""The floor of ``bench/launch_perf.py``: a bare Flask app whose one view does nothing.

    gunicorn -w 2 'bench.reference_tool.bare:create_app()'
"""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    """A Flask app answering ``GET /`` with a few bytes."""
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "ok"

    return app
