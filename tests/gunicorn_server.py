"""A real `trailmark serve` (gunicorn, separate processes) on a loopback port, and a loopback LMS for it.

The LMS publishes its JWKS from a tiny HTTP server in the test process (the workers are other processes, so
`responses` cannot stand in) and signs id_tokens with its own RSA key.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import requests

from tests.lti_platform import LTI, ROLE, jwk_of, new_rsa

ROOT = Path(__file__).resolve().parents[1]
TRAILMARK = (sys.executable, "-c", "from plugin.cli import main; main()")
START_TIMEOUT = 20.0
HTTP_TIMEOUT = 10.0


WAIT = 20.0  # seconds a test waits for a server to reach a state


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackPlatform:
    """An LMS on 127.0.0.1: JWKS over real HTTP, id_tokens signed in-process."""

    issuer = "https://lms.loopback.test"
    client_id = "loopback-client"
    deployment_id = "dep-1"

    def __init__(self) -> None:
        self.key = new_rsa()
        self.kid = "loopback-1"
        self.jwks_hits = 0
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                platform.jwks_hits += 1
                body = json.dumps({"keys": [jwk_of(platform.key, platform.kid)]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks"
        self.auth_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/auth"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def toml(self, district: str = "north") -> str:
        return (f'[[platforms]]\ndistrict = "{district}"\nname = "Loopback LMS"\nissuer = "{self.issuer}"\n'
                f'client_id = "{self.client_id}"\ndeployment_ids = ["{self.deployment_id}"]\n'
                f'auth_login_url = "{self.auth_url}"\nauth_token_url = "{self.auth_url}/token"\n'
                f'key_set_url = "{self.jwks_url}"\nproduct_family = "canvas"\n')

    def id_token(self, nonce: str, target: str, role: str = "teacher", user: str = "t1") -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": self.client_id, "azp": self.client_id, "sub": f"{role}-{user}",
            "iat": now, "exp": now + 300, "nonce": nonce, "name": f"Pat {role.title()}",
            LTI + "message_type": "LtiResourceLinkRequest", LTI + "version": "1.3.0",
            LTI + "deployment_id": self.deployment_id, LTI + "target_link_uri": target,
            LTI + "resource_link": {"id": "rl-1", "title": "Trailmark"}, LTI + "roles": ROLE[role],
            LTI + "context": {"id": "course-1", "label": "BIO1", "title": "Biology 1"},
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


@dataclass
class Served:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    platform: LoopbackPlatform
    log_path: Path
    pids: set[str] = field(default_factory=set)

    def workers(self) -> set[int]:
        """The gunicorn workers (children of the master, which is the `trailmark serve` process)."""
        found: set[int] = set()
        for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ---- one launch, step by step

    def login(self, http: requests.Session) -> tuple[str, str, str]:
        """GET /lti/login; return (state, nonce, worker pid)."""
        resp = http.get(f"{self.base}/lti/login", allow_redirects=False, timeout=HTTP_TIMEOUT, params={
            "iss": self.platform.issuer, "login_hint": "hint", "target_link_uri": f"{self.base}/lti/launch",
            "client_id": self.platform.client_id, "lti_deployment_id": self.platform.deployment_id})
        assert resp.status_code == 302, resp.text[:500]
        qs = parse_qs(urlsplit(resp.headers["Location"]).query)
        return qs["state"][0], qs["nonce"][0], resp.headers["X-Trailmark-Worker"]

    def post_launch(self, http: requests.Session, state: str, token: str) -> requests.Response:
        return http.post(f"{self.base}/lti/launch", data={"id_token": token, "state": state},
                         allow_redirects=False, timeout=HTTP_TIMEOUT)

    def open_panel(self, http: requests.Session, location: str) -> requests.Response:
        """Follow the launch's redirects to the first panel."""
        url = location if location.startswith("http") else self.base + location
        for _ in range(3):
            resp = http.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT)
            if resp.status_code not in (302, 303):
                return resp
            url = self.base + resp.headers["Location"] if resp.headers["Location"].startswith("/") \
                else resp.headers["Location"]
        raise AssertionError("too many redirects")

    def launch(self, http: requests.Session, role: str = "teacher", user: str = "t1") -> tuple[str, str, str]:
        """A whole launch; return (login worker, launch worker, panel html)."""
        state, nonce, login_pid = self.login(http)
        token = self.platform.id_token(nonce, f"{self.base}/lti/launch", role, user)
        resp = self.post_launch(http, state, token)
        assert resp.status_code == 303, resp.text[:800]
        panel = self.open_panel(http, resp.headers["Location"])
        assert panel.status_code == 200, panel.text[:800]
        return login_pid, resp.headers["X-Trailmark-Worker"], panel.text

    # ---- steering requests to one worker

    @contextmanager
    def pins(self) -> Iterator[Callable[[], Pin]]:
        """Pin workers: each ``pin()`` keeps one free sync worker busy until its ``finish()``."""
        made: list[Pin] = []

        def pin() -> Pin:
            made.append(Pin(self.port))
            return made[-1]

        try:
            yield pin
        finally:
            for p in made:
                p.finish()


class Pin:
    """An HTTP request sent up to its last header line: the sync worker that took it waits for the rest."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT)
        self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self.worker: str | None = None
        wait_accepted(port)

    def finish(self) -> str:
        """Send the rest of the request; return the worker that answered."""
        if self.worker is None:
            self.sock.sendall(b"Connection: close\r\n\r\n")
            data = b""
            while chunk := self.sock.recv(65536):
                data += chunk
            self.sock.close()
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            self.worker = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
                               if line.lower().startswith("x-trailmark-worker:"))
        return self.worker


def _accept_queue(port: int) -> int | None:
    """Connections waiting in the listening socket's accept queue (from /proc/net/tcp), or None."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        local, st, queues = parts[1], parts[3], parts[4]
        if st == "0A" and int(local.split(":")[1], 16) == port:
            return int(queues.split(":")[1], 16)
    return None


def wait_accepted(port: int, timeout: float = 10.0) -> None:
    """Wait until a worker has taken every connection made so far (the listen queue is empty)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = _accept_queue(port)
        if waiting is None:
            time.sleep(0.3)
            return
        if waiting == 0:
            return
        time.sleep(0.005)
    raise AssertionError(f"no worker accepted the connection on port {port}")


def wait_until_up(base: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trailmark serve exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"trailmark serve did not come up:\n{log_path.read_text()}")


@contextmanager
def serve(database_url: str, workdir: Path, *, workers: int = 2,
          server_toml: str = 'worker_header = true\nworker_class = "sync"',
          scheduler_toml: str = "", args: tuple[str, ...] = (),
          env: dict[str, str] | None = None) -> Iterator[Served]:
    """Start `trailmark serve` with a loopback LMS registered in its district file; stop it afterwards."""
    platform = LoopbackPlatform()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    district = workdir / "district.toml"
    district.write_text(
        f'mode = "local"\n[server]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "{base}"\n'
        f'secret_key = "file:{workdir}/secret_key"\nworkers = {workers}\n{server_toml}\n'
        f'[database]\nurl = "{database_url}"\n[sandbox]\nenabled = false\n'
        f'[scheduler]\nenabled = true\n{scheduler_toml}\n[[districts]]\nslug = "north"\nname = "North"\n'
        f'{platform.toml()}')
    log_path = workdir / "serve.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAILMARK_", "DATABASE_URL"))}
    full_env.update({"TRAILMARK_CONFIG": str(district), "PYTHONPATH": str(ROOT), **(env or {})})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*TRAILMARK, "serve", "--migrate", *args], cwd=workdir, env=full_env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(base, proc, log_path)
        yield Served(base=base, port=port, proc=proc, workdir=workdir, platform=platform, log_path=log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        platform.close()
