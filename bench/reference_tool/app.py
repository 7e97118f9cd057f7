"""The baseline of ``bench/launch_perf.py``: a minimal LTI 1.3 tool written the way pylti1p3's docs show it.

Flask + pylti1p3 (``FlaskOIDCLogin`` / ``FlaskMessageLaunch``), one registration from a JSON file named by
``REFERENCE_TOOL_CONFIG``. Launch data, login nonces and the platform's key set live in Redis (a direct redis
client behind pylti1p3's cache storage interface); a nonce is deleted when it is checked, so it works once.
The panel after a launch reads the launch back from Redis and renders a small page.

    REFERENCE_TOOL_CONFIG=ref.json gunicorn -w 2 'bench.reference_tool.app:create_app()'
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from flask import Flask, redirect, render_template_string, request, url_for
from pylti1p3.contrib.flask import FlaskMessageLaunch, FlaskOIDCLogin, FlaskRequest
from pylti1p3.contrib.flask.launch_data_storage.cache import FlaskCacheDataStorage
from pylti1p3.tool_config import ToolConfDict

PANEL = """<!doctype html><html><head><title>Reference tool</title></head><body>
<h1>{{ context.get('title', '') }}</h1><p>Hello {{ name }} ({{ roles|length }} role(s)).</p>
<p>Launch {{ launch_id }}</p></body></html>"""


class RedisJsonCache:
    """The get/set interface pylti1p3's cache storage expects, on a redis client, values as JSON."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def get(self, key: str) -> Any:
        raw = self.client.get(key)
        return None if raw is None else json.loads(raw)

    def set(self, key: str, value: Any, exp: int | None = None) -> None:
        self.client.set(key, json.dumps(value), ex=exp)


class RedisLaunchStorage(FlaskCacheDataStorage):
    """pylti1p3's cache storage on Redis, with single-use nonces (checking one deletes it)."""

    def check_value(self, key: str) -> bool:
        full = self._prepare_key(key)
        if "-nonce-" in full:
            return bool(self._cache.client.delete(full))  # type: ignore[union-attr]
        return self._cache.client.exists(full) > 0  # type: ignore[union-attr]


def create_app() -> Flask:
    """Build the reference tool from ``REFERENCE_TOOL_CONFIG``."""
    with open(os.environ["REFERENCE_TOOL_CONFIG"]) as fh:
        conf = json.load(fh)
    tool_conf = ToolConfDict({conf["issuer"]: [{
        "default": True, "client_id": conf["client_id"], "auth_login_url": conf["auth_login_url"],
        "auth_token_url": conf["auth_token_url"], "auth_audience": None, "key_set_url": conf["key_set_url"],
        "key_set": None, "deployment_ids": [conf["deployment_id"]],
    }]})
    tool_conf.set_private_key(conf["issuer"], conf["tool_private_key"], client_id=conf["client_id"])
    cache = RedisJsonCache(redis.Redis.from_url(conf["redis_url"], socket_timeout=2))
    base_url = conf["base_url"]

    app = Flask(__name__)
    app.secret_key = conf["secret_key"]

    def storage() -> RedisLaunchStorage:
        return RedisLaunchStorage(cache)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        target = request.values.get("target_link_uri")
        if not target or not target.startswith(base_url):
            return "bad target_link_uri", 400
        oidc = FlaskOIDCLogin(FlaskRequest(), tool_conf, launch_data_storage=storage())
        return oidc.redirect(f"{base_url}/launch")

    @app.post("/launch")
    def launch() -> Any:
        message = FlaskMessageLaunch(FlaskRequest(), tool_conf, launch_data_storage=storage())
        message.set_public_key_caching(storage(), cache_lifetime=600)
        message.get_launch_data()  # validates state, token, nonce, registration, signature, deployment, message
        return redirect(url_for("panel", launch_id=message.get_launch_id()), code=303)

    @app.get("/panel")
    def panel() -> Any:
        launch_id = request.args.get("launch_id", "")
        message = FlaskMessageLaunch.from_cache(launch_id, FlaskRequest(), tool_conf,
                                                launch_data_storage=storage())
        data = message.get_launch_data()
        lti = "https://purl.imsglobal.org/spec/lti/claim/"
        return render_template_string(PANEL, context=data.get(lti + "context", {}), name=data.get("name", ""),
                                      roles=data.get(lti + "roles", []), launch_id=launch_id)

    return app
