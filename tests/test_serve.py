"""`trailmark serve` (gunicorn) and `trailmark scheduler`: options, clear errors, JSON access log, the scheduler
elected among workers or among scheduler processes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from plugin.config import ConfigError, load_config
from plugin.serve import ServeError, check_bind, gunicorn_options, with_worker_header
from tests.gunicorn_server import ROOT, TRAILMARK, WAIT, serve, wait_for

# --------------------------------------------------------------------------- options and errors


def test_gunicorn_options_follow_the_configuration() -> None:
    cfg = load_config(env={"TRAILMARK_WORKERS": "4"})
    opts = gunicorn_options(cfg, host="0.0.0.0", port=8000, workers=cfg["server"]["workers"], threads=1)
    assert opts["bind"] == ["0.0.0.0:8000"] and opts["workers"] == 4 and opts["worker_class"] == "gthread"
    sync = load_config(env={}, overrides={"server": {"worker_class": "sync"}})
    assert gunicorn_options(sync, host="h", port=1, workers=2, threads=1)["worker_class"] == "sync"
    assert opts["accesslog"] is None and opts["preload_app"] is False
    assert (opts["timeout"], opts["graceful_timeout"]) == (30, 30)
    cfg = load_config(env={}, overrides={"server": {"threads": 4, "access_log": "json",
                                                    "graceful_timeout_seconds": 10}})
    opts = gunicorn_options(cfg, host="::1", port=8000, workers=2, threads=4)
    assert opts["bind"] == ["[::1]:8000"] and opts["worker_class"] == "gthread" and opts["threads"] == 4
    assert opts["accesslog"] == "-" and opts["graceful_timeout"] == 10


@pytest.mark.parametrize("overrides,expected", [
    ({"server": {"workers": 0}}, "server.workers"),
    ({"server": {"access_log": "apache"}}, "server.access_log"),
    ({"server": {"worker_class": "gevent"}}, "server.worker_class"),
    ({"redis": {"url": "http://cache:6379"}}, "redis.url: expected redis://"),
    ({"redis": {"url": "redis://:hunter2@cache:6379/0"}}, "redis.password"),
    ({"redis": {"password": "hunter2"}}, "redis.password"),
    ({"scheduler": {"heartbeat_seconds": 30}}, "scheduler.heartbeat_seconds"),
])
def test_invalid_serving_settings_name_the_key(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(env={}, overrides=overrides)
    assert expected in str(exc.value) and "hunter2" not in str(exc.value)


def test_redis_url_from_the_environment() -> None:
    cfg = load_config(env={"TRAILMARK_REDIS_URL": "redis://cache.example:6379/2"})
    assert cfg["redis"]["url"] == "redis://cache.example:6379/2"
    assert load_config(env={})["redis"]["url"] == ""


def test_a_port_in_use_is_a_clear_error(runner: Any) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match="already in use"):
            check_bind("127.0.0.1", port)
        out = runner.invoke(args=["serve", "--port", str(port)])
    assert out.exit_code == 1 and f"port {port} on 127.0.0.1 is already in use" in out.output


def test_bad_worker_counts_are_refused(runner: Any) -> None:
    out = runner.invoke(args=["serve", "--workers", "0"])
    assert out.exit_code == 2 and "0 is not in the range 1<=x<=64" in out.output
    out = runner.invoke(args=["serve", "--workers", "many"])
    assert out.exit_code == 2 and "'many' is not a valid integer" in out.output


def test_scheduler_needs_to_be_enabled(runner: Any) -> None:
    out = runner.invoke(args=["scheduler"])  # the test app has scheduler.enabled = false
    assert out.exit_code == 1 and "scheduler.enabled is false" in out.output
    out = runner.invoke(args=["serve", "--with-scheduler"])
    assert out.exit_code == 1 and "scheduler.enabled is false" in out.output


@pytest.mark.postgres
def test_serve_refuses_a_database_that_is_not_migrated(database_url: str, tmp_path: Path) -> None:
    name = f"trailmark_unmigrated_{os.getpid()}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAILMARK_")}
        env.update({"DATABASE_URL": f"{database_url.rsplit('/', 1)[0]}/{name}", "PYTHONPATH": str(ROOT),
                    "TRAILMARK_SECRET_KEY": f"file:{tmp_path}/secret"})
        proc = subprocess.run([*TRAILMARK, "serve", "--port", "1"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1
        assert "the database is at revision none" in proc.stderr and "trailmark db upgrade" in proc.stderr
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def test_worker_header_names_the_process() -> None:
    seen: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen["headers"] = dict(headers)

    assert with_worker_header(app)({}, start_response) == [b"ok"]
    assert seen["headers"]["X-Trailmark-Worker"] == str(os.getpid())


# --------------------------------------------------------------------------- a real server


def test_json_access_log_without_query_strings(database_url: str, tmp_path: Path) -> None:
    with serve(database_url, tmp_path, workers=1, server_toml='access_log = "json"') as server:  # gthread
        http = requests.Session()
        state, nonce, _ = _login(server, http)
        token = server.platform.id_token(nonce, f"{server.base}/lti/launch")
        launched = server.post_launch(http, state, token)
        assert launched.status_code == 303 and "X-Trailmark-Worker" not in launched.headers
        ticket = launched.headers["Location"].split("ltik=")[1]
        assert server.open_panel(http, launched.headers["Location"]).status_code == 200

        def launch_lines() -> list[dict[str, Any]]:
            entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
            access = [e for e in entries if e["logger"] == "trailmark.access"]
            return [e for e in access if e["path"] != "/healthz"]  # the start-up probe

        lines = wait_for(lambda: len(launch_lines()) >= 3 and launch_lines(), "three access log lines")
    assert [(e["method"], e["path"], e["status"]) for e in lines] == [
        ("GET", "/lti/login", 302), ("POST", "/lti/launch", 303), ("GET", "/p/teacher", 200)]
    assert all(e["worker"] == lines[0]["worker"] and isinstance(e["ms"], float) for e in lines)
    assert ticket not in server.log() and state not in server.log()


def _login(server: Any, http: requests.Session) -> tuple[str, str, str]:
    resp = http.get(f"{server.base}/lti/login", allow_redirects=False, timeout=10, params={
        "iss": server.platform.issuer, "login_hint": "hint", "target_link_uri": f"{server.base}/lti/launch",
        "client_id": server.platform.client_id, "lti_deployment_id": server.platform.deployment_id})
    assert resp.status_code == 302, resp.text[:300]
    from urllib.parse import parse_qs, urlsplit

    qs = parse_qs(urlsplit(resp.headers["Location"]).query)
    return qs["state"][0], qs["nonce"][0], resp.headers.get("X-Trailmark-Worker", "")


def _elected(log: str) -> list[int]:
    """The pids that logged winning the scheduler election, in order."""
    return [int(m) for m in re.findall(r"leader\.elected name=scheduler pid=(\d+)", log)]


def test_with_scheduler_one_worker_leads_and_another_takes_over(database_url: str, tmp_path: Path) -> None:
    with serve(database_url, tmp_path, workers=2, scheduler_toml="heartbeat_seconds = 1",
               args=("--with-scheduler",)) as server:
        workers = wait_for(lambda: server.workers() if len(server.workers()) == 2 else None, "two workers")
        [leader] = wait_for(lambda: _elected(server.log()), "a worker to lead")
        assert leader in workers
        os.kill(leader, signal.SIGKILL)  # the leading worker dies; gunicorn starts a new one

        def successor() -> int | None:
            later = [pid for pid in _elected(server.log()) if pid != leader]
            return later[0] if later else None

        new_leader = wait_for(successor, "another worker to take over")
        assert new_leader in server.workers() and _elected(server.log()) == [leader, new_leader]
        assert requests.get(f"{server.base}/healthz", timeout=5).status_code == 200


def test_scheduler_processes_elect_one_and_hand_over_on_stop(database_url: str, tmp_path: Path) -> None:
    district = tmp_path / "district.toml"
    district.write_text(f'mode = "local"\n[server]\nsecret_key = "file:{tmp_path}/secret_key"\n'
                        f'[database]\nurl = "{database_url}"\n[sandbox]\nenabled = false\n'
                        '[scheduler]\nheartbeat_seconds = 1\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAILMARK_", "DATABASE_URL"))}
    env.update({"TRAILMARK_CONFIG": str(district), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"})
    logs = [tmp_path / f"scheduler-{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("w") as out:
            procs.append(subprocess.Popen([*TRAILMARK, "scheduler"], cwd=tmp_path, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, text=True))

    def elected() -> list[int]:
        return [pid for log in logs for pid in _elected(log.read_text())]

    try:
        wait_for(lambda: all("standing for election" in log.read_text() for log in logs), "both to stand")
        [leader] = wait_for(elected, "one scheduler to lead")
        first = next(p for p in procs if p.pid == leader)
        standby = next(p for p in procs if p.pid != leader)
        assert standby.poll() is None and elected() == [leader]  # the standby waits its turn
        first.send_signal(signal.SIGTERM)
        assert first.wait(WAIT) == 0
        wait_for(lambda: elected() == [leader, standby.pid] or elected() == [standby.pid, leader],
                 "the standby to take over")
        assert standby.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(WAIT)
