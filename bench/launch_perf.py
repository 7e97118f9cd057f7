"""Launch performance: complete LTI 1.3 launches against Trailmark and against a minimal pylti1p3 tool.

Both tools run under gunicorn with the same workers (2 workers, gthread by default: one request at a time per
worker, connections kept alive; ``--worker-class sync`` closes each connection) on loopback ports:

* Trailmark (``trailmark serve``) on SQLite, or on PostgreSQL when ``TRAILMARK_BENCH_POSTGRES_URL`` is set (a
  fresh database is created and dropped), with Redis when one is available;
* the reference tool (``bench/reference_tool/app.py``): pylti1p3's Flask adapter with launch data, nonces and
  the platform key set in Redis.

The load generator is the LMS: it serves its JWKS from a small HTTP server, answers the OIDC auth step in
process (reads state and nonce from the tool's redirect, signs an RS256 id_token) and runs ``--clients``
browser-like clients (a thread and a ``requests.Session`` each, cookies kept). One launch is: OIDC login GET,
the auth step, the id_token POST, and the GETs up to the first panel. The users are 240 teachers and students of
12 classes, each launching from their own class; every user launches once to warm up (first launches provision
people, classes and enrollments), then each tool gets the same load for ``--seconds`` per round, rounds
alternating between the tools.

Reported: launches/s, latency p50/p95/p99, the Trailmark/reference ratio, the server CPU per launch (utime +
stime of the gunicorn master and workers from /proc) and next to it the floor — the CPU of two bare Flask
requests (a do-nothing app under the same gunicorn) plus one RS256 verification, measured in the same run; what
gunicorn and HTTP cost per request (the bare app under gunicorn minus the same app called in process); the CPU
per launch of the load generator (this process) and of redis-server; and what the targets need by Little's law
(8 clients back to back: launches/s = 8 / mean latency) on this machine's CPUs.
Then Trailmark's launch is profiled in one process through the test client: CPU and SQL statements per request
of each step (the best of batches of 25 launches, so a burst of other work on the machine does not count), then
cProfile over ``--profile`` launches: own time and function calls by layer (SQLAlchemy, Flask, Redis, Jinja, …;
call counts do not depend on the machine's load) and the top entries.

    python -m bench.launch_perf [--seconds 10] [--clients 8] [--rounds 2] [--profile 300] [--profile-only]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jwt  # noqa: E402
import requests  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
LIS = "http://purl.imsglobal.org/vocab/lis/v2/"
ROLES = {"teacher": [f"{LIS}membership#Instructor"], "student": [f"{LIS}membership#Learner"]}
CLK_TCK = os.sysconf("SC_CLK_TCK")
HTTP_TIMEOUT = 30.0
USERS = 240  # teachers and students, each launching from their own class
COURSES = 12


# --------------------------------------------------------------------------- the loopback LMS


class Platform:
    """An LMS on 127.0.0.1: JWKS over HTTP, the OIDC auth step and id_token signing in process."""

    issuer = "https://lms.bench.test"
    client_id = "bench-client"
    deployment_id = "dep-1"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "bench-1"
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        body = json.dumps({"keys": [jwk]}).encode()
        self.jwks_hits = 0
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                platform.jwks_hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.httpd.server_address[1]
        self.jwks_url = f"http://127.0.0.1:{port}/jwks"
        self.auth_url = f"http://127.0.0.1:{port}/auth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def claims(self, nonce: str, target: str, user: int) -> dict[str, Any]:
        now = int(time.time())
        role = "teacher" if user % 10 < 2 else "student"  # 20% teachers
        course = user % COURSES  # everyone launches from their own class, as they do all year
        return {
            "iss": self.issuer, "aud": self.client_id, "azp": self.client_id, "sub": f"{role}-{user}",
            "iat": now, "exp": now + 300, "nonce": nonce, "name": f"Pat {role.title()} {user}",
            "given_name": "Pat", "family_name": f"{role.title()} {user}", "email": f"{role}{user}@bench.test",
            LTI + "message_type": "LtiResourceLinkRequest", LTI + "version": "1.3.0",
            LTI + "deployment_id": self.deployment_id, LTI + "target_link_uri": target,
            LTI + "resource_link": {"id": f"rl-{course}", "title": "Unit"}, LTI + "roles": ROLES[role],
            LTI + "context": {"id": f"course-{course}", "label": f"C{course}", "title": f"Course {course}"},
        }

    def authorize(self, auth_redirect: str, user: int) -> tuple[str, dict[str, str]]:
        """Answer the OIDC auth request: where to POST, and the form (id_token + state)."""
        qs = parse_qs(urlsplit(auth_redirect).query)
        assert qs["client_id"][0] == self.client_id and qs["response_mode"][0] == "form_post"
        redirect_uri = qs["redirect_uri"][0]
        token = jwt.encode(self.claims(qs["nonce"][0], redirect_uri, user), self.key, algorithm="RS256",
                           headers={"kid": self.kid})
        return redirect_uri, {"id_token": token, "state": qs["state"][0]}


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen[bytes]
    login_path: str
    marker: str  # text the first panel must contain
    log: Path

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        found = [self.proc.pid]
        for pid in _children(self.proc.pid):
            found.append(pid)
            found.extend(_children(pid))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out.extend(int(p) for p in text)
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def _spawn(name: str, args: list[str], env: dict[str, str], cwd: Path, base: str, login_path: str,
           marker: str) -> Server:
    log = cwd / f"{name}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name, base, proc, login_path, marker, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited:\n{log.read_text()}")
        try:
            requests.get(base + "/", timeout=1)
            if len(server.pids()) >= 3:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{name} did not start:\n{log.read_text()}")


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAILMARK_", "DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_trailmark(workdir: Path, platform: Platform, database_url: str, redis_url: str | None,
                    workers: int, worker_class: str) -> Server:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    redis = f'[redis]\nurl = "{redis_url}"\nkey_prefix = "bench:{uuid.uuid4().hex[:6]}:"\n' if redis_url else ""
    district = workdir / "trailmark.toml"
    district.write_text(
        f'mode = "local"\n[server]\nhost = "127.0.0.1"\nport = {port}\npublic_url = "{base}"\n'
        f'secret_key = "file:{workdir}/secret_key"\nworkers = {workers}\nworker_class = "{worker_class}"\n'
        f'[database]\nurl = "{database_url}"\n'
        f'{redis}[sandbox]\nenabled = false\n[scheduler]\nenabled = false\n'
        f'[[districts]]\nslug = "bench"\nname = "Bench District"\n'
        f'[[platforms]]\ndistrict = "bench"\nname = "Bench LMS"\nissuer = "{platform.issuer}"\n'
        f'client_id = "{platform.client_id}"\ndeployment_ids = ["{platform.deployment_id}"]\n'
        f'auth_login_url = "{platform.auth_url}"\nauth_token_url = "{platform.auth_url}/token"\n'
        f'key_set_url = "{platform.jwks_url}"\n')
    env = {**_clean_env(), "TRAILMARK_CONFIG": str(district)}
    args = [sys.executable, "-c", "from plugin.cli import main; main()", "serve", "--migrate"]
    return _spawn("trailmark", args, env, workdir, base, "/lti/login", "Course ")


def start_reference(workdir: Path, platform: Platform, redis_url: str, workers: int, worker_class: str) -> Server:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tool_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    conf = workdir / "reference.json"
    conf.write_text(json.dumps({
        "issuer": platform.issuer, "client_id": platform.client_id, "deployment_id": platform.deployment_id,
        "auth_login_url": platform.auth_url, "auth_token_url": platform.auth_url + "/token",
        "key_set_url": platform.jwks_url, "tool_private_key": tool_key, "redis_url": redis_url, "base_url": base,
        "secret_key": uuid.uuid4().hex}))
    env = {**_clean_env(), "REFERENCE_TOOL_CONFIG": str(conf)}
    args = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class, "-b", f"127.0.0.1:{port}",
            "--no-control-socket", "bench.reference_tool.app:create_app()"]
    return _spawn("reference", args, env, workdir, base, "/login", "Course ")


def start_bare(workdir: Path, workers: int, worker_class: str) -> Server:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class, "-b", f"127.0.0.1:{port}",
            "--no-control-socket", "bench.reference_tool.bare:create_app()"]
    return _spawn("bare", args, _clean_env(), workdir, base, "/", "ok")


REDIS_PIDS: list[int] = []  # the throwaway redis-server, whose CPU is counted per launch


@contextmanager
def redis_server(workdir: Path) -> Iterator[str | None]:
    """TRAILMARK_BENCH_REDIS_URL, or a throwaway redis-server on a loopback port, or None."""
    url = os.environ.get("TRAILMARK_BENCH_REDIS_URL") or os.environ.get("TRAILMARK_TEST_REDIS_URL")
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                               else None)
    if url or binary is None:
        yield url
        return
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        REDIS_PIDS.append(proc.pid)
        yield url
    finally:
        if proc.pid in REDIS_PIDS:
            REDIS_PIDS.remove(proc.pid)
        proc.terminate()
        proc.wait()


@contextmanager
def database(workdir: Path) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database (TRAILMARK_BENCH_POSTGRES_URL) or a SQLite file; (url, label)."""
    pg = os.environ.get("TRAILMARK_BENCH_POSTGRES_URL")
    if not pg:
        workdir.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{workdir}/trailmark.db", "SQLite (file, WAL)"
        return
    from sqlalchemy import create_engine, text

    name = f"trailmark_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{pg.rsplit('/', 1)[0]}/{name}", "PostgreSQL"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --------------------------------------------------------------------------- the load


@dataclass
class Result:
    name: str
    launches: int = 0
    errors: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the tool's gunicorn master and workers
    generator_cpu: float = 0.0  # this process: the clients, the platform's signing and its JWKS server
    redis_cpu: float = 0.0  # the throwaway redis-server (shared by both tools, idle for the bare app)
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""
    steps: Steps = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.launches / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(q * len(data)))] * 1000 if data else float("nan")

    @property
    def cpu_ms_per_launch(self) -> float:
        return self.cpu / self.launches * 1000 if self.launches else float("nan")

    def per_launch_ms(self, seconds: float) -> float:
        return seconds / self.launches * 1000 if self.launches else float("nan")

    def merge(self, other: Result) -> None:
        self.launches += other.launches
        self.errors += other.errors
        self.seconds += other.seconds
        self.cpu += other.cpu
        self.generator_cpu += other.generator_cpu
        self.redis_cpu += other.redis_cpu
        self.latencies += other.latencies
        self.first_error = self.first_error or other.first_error
        for name, values in other.steps.items():
            self.steps.setdefault(name, []).extend(values)

    def step_p50(self, name: str) -> float:
        data = sorted(self.steps.get(name, []))
        return data[len(data) // 2] * 1000 if data else float("nan")


Steps = dict[str, list[float]]


def one_launch(http: requests.Session, server: Server, platform: Platform, rng: random.Random,
               steps: Steps | None = None, user: int | None = None) -> None:
    """Login, auth, id_token POST, then the GETs to the first panel (each launch a new browser visit)."""
    http.cookies.clear()  # pylti1p3 never deletes its state cookies; a long-lived jar would outgrow header limits
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        if steps is not None:
            steps.setdefault(name, []).append(now - clock)
        clock = now

    resp = http.get(server.base + server.login_path, allow_redirects=False, timeout=HTTP_TIMEOUT, params={
        "iss": platform.issuer, "login_hint": "hint", "client_id": platform.client_id,
        "lti_deployment_id": platform.deployment_id,
        "target_link_uri": server.base + ("/lti/launch" if server.name == "trailmark" else "/launch")})
    if resp.status_code != 302:
        raise RuntimeError(f"login answered {resp.status_code}: {resp.text[:300]}")
    lap("login")
    url, form = platform.authorize(resp.headers["Location"], rng.randrange(USERS) if user is None else user)
    lap("auth (platform signs)")
    resp = http.post(url, data=form, allow_redirects=False, timeout=HTTP_TIMEOUT)
    lap("id_token POST")
    for _ in range(4):
        if resp.status_code not in (302, 303):
            break
        location = resp.headers["Location"]
        resp = http.get(location if location.startswith("http") else server.base + location,
                        allow_redirects=False, timeout=HTTP_TIMEOUT)
        lap("panel GET" if resp.status_code == 200 else "redirect GET")
    if resp.status_code != 200 or server.marker not in resp.text:
        raise RuntimeError(f"panel answered {resp.status_code}: {resp.text[:300]}")


def run_load(server: Server, platform: Platform, *, clients: int, seconds: float, seed: int,
             action: Callable[..., None] = one_launch) -> Result:
    """``clients`` threads doing ``action`` back to back for ``seconds``; server CPU measured around it."""
    result = Result(server.name)
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at: list[float] = [0.0]

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        http = requests.Session()
        mine: list[float] = []
        steps: Steps = {}
        errors, first = 0, ""
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                action(http, server, platform, rng, steps)
                mine.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors += 1
                first = first or f"{type(exc).__name__}: {exc}"
                http = requests.Session()
        with lock:
            result.latencies += mine
            result.launches += len(mine)
            result.errors += errors
            result.first_error = result.first_error or first
            for name, values in steps.items():
                result.steps.setdefault(name, []).extend(values)

    pids = server.pids()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(client, n) for n in range(clients)]
        cpu0, own0, redis0 = cpu_seconds(pids), time.process_time(), cpu_seconds(REDIS_PIDS)
        t0 = time.perf_counter()
        stop_at[0] = t0 + seconds
        start_gate.wait()
        for f in futures:
            f.result()
        result.seconds = time.perf_counter() - t0
        result.cpu = cpu_seconds(pids) - cpu0
        result.generator_cpu = time.process_time() - own0
        result.redis_cpu = cpu_seconds(REDIS_PIDS) - redis0
    return result


def warm_up(server: Server, platform: Platform, clients: int) -> None:
    """Launch once as every user (first launches provision people, classes and enrollments)."""

    def client(n: int) -> None:
        http = requests.Session()
        for user in range(n, USERS, clients):
            one_launch(http, server, platform, random.Random(user), user=user)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(client, range(clients)))


def bare_get(http: requests.Session, server: Server, platform: Platform, rng: random.Random,
             steps: Steps | None = None) -> None:
    resp = http.get(server.base + "/", timeout=HTTP_TIMEOUT)
    if resp.status_code != 200:
        raise RuntimeError(f"bare app answered {resp.status_code}")


def print_budget(t: Result, ref: Result, *, clients: int, cpus: int, p99_ms: float = 30.0) -> None:
    """Where each launch's CPU goes on this machine, and what p99 < 30 ms at ``clients`` clients needs (Little)."""
    print("\n  CPU per launch, ms       tool server   load generator   redis-server   total   bound at (launches/s)")
    for res in (t, ref):
        server, gen, red = res.cpu_ms_per_launch, res.per_launch_ms(res.generator_cpu), res.per_launch_ms(
            res.redis_cpu)
        total = server + gen + red
        print(f"  {res.name:<22} {server:12.2f} {gen:16.2f} {red:14.2f} {total:7.2f}   "
              f"{cpus * 1000 / total:8.0f} (all {cpus} CPUs), {1000 / gen:.0f} (generator's one GIL)")
    needed = clients / (p99_ms / 1000)
    budget = cpus * 1000 / needed
    gen = t.per_launch_ms(t.generator_cpu)
    red = t.per_launch_ms(t.redis_cpu)
    print(f"  Little's law: {clients} clients back to back, so launches/s = {clients} / mean latency. p99 < "
          f"{p99_ms:.0f} ms needs a mean below {p99_ms:.0f} ms, so more than {needed:.0f} launches/s; on {cpus} "
          f"CPUs that leaves {budget:.2f} ms of CPU per launch for everything, and {1000 / needed:.2f} ms for the "
          f"load generator (its {clients} threads share one GIL).")
    ref_total = ref.cpu_ms_per_launch + ref.per_launch_ms(ref.generator_cpu) + ref.per_launch_ms(ref.redis_cpu)
    print(f"  1.5x the reference's launches/s with all {cpus} CPUs busy needs Trailmark's whole launch (server + "
          f"generator + Redis) in {ref_total / 1.5:.2f} ms, i.e. its server in "
          f"{ref_total / 1.5 - gen - red:.2f} ms per launch (it used {t.cpu_ms_per_launch:.2f}).")
    left = budget - gen - red
    verdict = ("reachable only if the server fits in that" if left > 0 and gen < 1000 / needed else
               "not reachable on this machine with this load generator, whatever the server does")
    print(f"  Measured here: the generator uses {gen:.2f} ms and Redis {red:.2f} ms per Trailmark launch, leaving "
          f"{left:.2f} ms for Trailmark's server (it used {t.cpu_ms_per_launch:.2f}): p99 < {p99_ms:.0f} ms is "
          f"{verdict}. With today's total the mean latency cannot drop below "
          f"{clients * (t.cpu_ms_per_launch + gen + red) / cpus:.1f} ms.")


def bare_wsgi_cpu(n: int = 5000) -> float:
    """CPU seconds of one request to the bare app called in this process (WSGI, no server, no socket)."""
    from io import BytesIO

    from bench.reference_tool.bare import create_app

    app = create_app()
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.errors": sys.stderr}

    def start_response(*_args: Any) -> None:
        pass

    def once() -> None:
        b"".join(app(dict(environ, **{"wsgi.input": BytesIO()}), start_response))

    for _ in range(200):
        once()
    t0 = time.process_time()
    for _ in range(n):
        once()
    return (time.process_time() - t0) / n


def rs256_verify_cpu(platform: Platform, n: int = 2000) -> float:
    """CPU seconds of one RS256 id_token verification with an already-parsed key (PyJWT)."""
    token = jwt.encode(platform.claims("n", "http://127.0.0.1/launch", 1), platform.key,
                       algorithm="RS256", headers={"kid": platform.kid})
    public = platform.key.public_key()
    t0 = time.process_time()
    for _ in range(n):
        jwt.decode(token, public, algorithms=["RS256"], audience=platform.client_id, issuer=platform.issuer)
    return (time.process_time() - t0) / n


# --------------------------------------------------------------------------- the profile


def profile_trailmark(platform: Platform, database_url: str, redis_url: str | None, workdir: Path, n: int) -> None:
    """cProfile N complete launches through Trailmark's test client in this process."""
    from sqlalchemy import event

    from plugin.app import create_app
    from plugin.cli import bootstrap
    from plugin.store.db import get_store

    base = "http://localhost"
    cfg: dict[str, Any] = {
        "mode": "local", "server": {"public_url": base, "secret_key": f"file:{workdir}/secret_key"},
        "database": {"url": database_url}, "sandbox": {"enabled": False}, "scheduler": {"enabled": False},
        "districts": [{"slug": "bench", "name": "Bench District"}],
        "platforms": [{"district": "bench", "issuer": platform.issuer, "client_id": platform.client_id,
                       "deployment_ids": [platform.deployment_id], "auth_login_url": platform.auth_url,
                       "auth_token_url": platform.auth_url + "/token", "key_set_url": platform.jwks_url}],
    }
    if redis_url:
        cfg["redis"] = {"url": redis_url, "key_prefix": f"bench-profile:{uuid.uuid4().hex[:6]}:"}
    app = create_app(cfg, env={})
    bootstrap(app)
    # The per-request log lines are written (their cost is part of a launch) to nowhere, not between the figures.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed at the end
    quiet = contextlib.redirect_stderr(devnull)
    quiet.__enter__()
    client = app.test_client()
    rng = random.Random(7)
    statements: dict[str, int] = {}
    step = ["-"]

    @event.listens_for(get_store(app).engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:
        statements[step[0]] = statements.get(step[0], 0) + 1

    cpu: dict[str, float] = {}
    calls: dict[str, int] = {}

    measuring = [True]

    def timed(name: str, call: Callable[[], Any]) -> Any:
        step[0] = name
        if not measuring[0]:
            return call()
        t0 = time.process_time()
        result = call()
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - t0
        calls[name] = calls.get(name, 0) + 1
        return result

    def launch(user: int) -> None:
        resp = timed("login GET", lambda: client.get("/lti/login", query_string={
            "iss": platform.issuer, "login_hint": "hint", "client_id": platform.client_id,
            "lti_deployment_id": platform.deployment_id, "target_link_uri": f"{base}/lti/launch"}))
        url, form = timed("(platform signs the id_token)", lambda: platform.authorize(resp.headers["Location"], user))
        resp = timed("id_token POST", lambda: client.post(urlsplit(url).path, data=form))
        while resp.status_code in (302, 303):
            location = resp.headers["Location"]
            path = urlsplit(location).path
            name = f"{path} redirect GET" if path == "/p/home" else f"first panel GET {path}"
            resp = timed(name, lambda: client.get(location))  # noqa: B023 - called at once
        assert resp.status_code == 200, resp.get_data(as_text=True)[:500]

    for user in range(USERS):  # every user's first launch: provisioning
        launch(user)
    statements.clear()
    # CPU per request of each step: the smallest average over batches of launches, so that a burst of other
    # work on the machine inflates one batch rather than the figure.
    best: dict[str, float] = {}
    total_calls: dict[str, int] = {}
    batch = 25
    for _ in range(max(1, n // batch)):
        cpu.clear()
        calls.clear()
        for _ in range(batch):
            launch(rng.randrange(USERS))
        for name, seconds in cpu.items():
            best[name] = min(best.get(name, float("inf")), seconds / calls[name])
            total_calls[name] = total_calls.get(name, 0) + calls[name]
    launches = max(1, n // batch) * batch
    print(f"\nWhere a launch goes: {launches} launches through the test client in one process "
          f"({_db_label(database_url)}{', Redis' if redis_url else ''}). CPU per request (best batch of {batch} "
          "launches), how often per launch, CPU and SQL statements per launch:")
    total_ms = 0.0
    for name, per_call in best.items():
        share = total_calls[name] / launches
        total_ms += per_call * share * 1000
        print(f"    {name:<34} {per_call * 1000:7.2f} ms x {share:4.2f} = {per_call * share * 1000:6.2f} ms  "
              f"{statements.get(name, 0) / total_calls[name]:5.1f} statements each")
    print(f"    {'total':<34} {'':18}{total_ms:6.2f} ms  {sum(statements.values()) / launches:5.1f} statements "
          "per launch")

    measuring[0] = False
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(n):
        launch(rng.randrange(USERS))
    profiler.disable()
    quiet.__exit__(None, None, None)
    devnull.close()
    stats = pstats.Stats(profiler)
    width = stats.total_tt or 1.0  # type: ignore[attr-defined]
    by_layer: dict[str, list[float]] = {}
    for func, (_cc, nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        found = by_layer.setdefault(_layer(func[0], func[2]), [0.0, 0.0])
        found[0] += tt
        found[1] += nc
    print("\n  cProfile, own time by layer (the whole launch, the platform's signing included; wall-clock time, so "
          "Redis and database round trips include waiting), and function calls per launch (a count that does not "
          "depend on the machine's load):")
    for layer, (seconds, count) in sorted(by_layer.items(), key=lambda item: -item[1][0]):
        print(f"    {layer:<50} {seconds / n * 1000:7.3f} ms/launch {seconds / width:6.1%} {count / n:8.0f} calls")
    total_calls_n = sum(count for _, count in by_layer.values())
    print(f"    {'total':<50} {width / n * 1000:7.3f} ms/launch {'':7} {total_calls_n / n:8.0f} calls")
    for key, title, only_ours in (("tottime", "own time, everything", False),
                                  ("cumulative", "cumulative time, Trailmark's own functions", True)):
        print(f"\n  cProfile, top entries by {title} (profiler overhead inflates the absolute figures):")
        stats.sort_stats(key)
        shown = 0
        for func in stats.fcn_list:  # type: ignore[attr-defined]
            filename, line, name = func
            if only_ours and f"{ROOT}/plugin/" not in filename:
                continue
            _cc, nc, tt, ct, _ = stats.stats[func]  # type: ignore[attr-defined]
            value = tt if key == "tottime" else ct
            where = "/".join(Path(filename).parts[-2:]) if filename.startswith("/") else filename
            print(f"    {value / n * 1000:7.3f} ms/launch {value / width:6.1%}  {nc / n:6.1f} calls  "
                  f"{where}:{line}({name})")
            shown += 1
            if shown == 18:
                break
    get_store(app).dispose()


LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database driver (sqlite3 / psycopg calls)", ("sqlite3.", "psycopg")),
    ("SQLAlchemy (statement execution, ORM)", ("/sqlalchemy/",)),
    ("Jinja templates and markupsafe", ("/jinja2/", "/markupsafe/", "<template>", ".html")),
    ("Flask and Werkzeug (routing, request, response)", ("/flask/", "/werkzeug/")),
    ("RSA and JWT (PyJWT, cryptography)", ("/jwt/", "/cryptography/", "RSAPrivateKey", "RSAPublicKey")),
    ("Redis client and sockets", ("/redis/", "_socket.", "socket.py", "selectors")),
    ("logging and redaction", ("/logging/", "observability.py", "re.Pattern")),
    ("pylti1p3 message validators", ("/pylti1p3/",)),
    ("Trailmark: plugin/learning", ("/plugin/learning/",)),
    ("Trailmark: plugin/panels and store queries", ("/plugin/panels/", "/plugin/store/")),
    ("Trailmark: plugin/lti, cache, app", ("/plugin/",)),
    ("JSON", ("/json/", "json.")),
)


def _layer(filename: str, name: str) -> str:
    """Name the layer a profiled function belongs to (by its file, or by the C function's name)."""
    where = f"{filename} {name}"
    for layer, marks in LAYERS:
        if any(mark in where for mark in marks):
            return layer
    return "Python itself and the rest of the standard library"


def _db_label(url: str) -> str:
    return "PostgreSQL" if url.startswith("postgresql") else "SQLite"


# --------------------------------------------------------------------------- main


def compare(args: argparse.Namespace, workdir: Path, platform: Platform, servers: list[Server],
            redis_url: str | None, database_url: str, db_label: str) -> None:
    """Start the three servers, load Trailmark and the reference tool in turns, and print the figures."""
    if redis_url is None:
        print("launch_perf: skipped — the reference tool keeps its nonces in Redis; install redis-server "
              "or set TRAILMARK_BENCH_REDIS_URL.")
        return
    trailmark = start_trailmark(workdir, platform, database_url, redis_url, args.workers, args.worker_class)
    servers.append(trailmark)
    reference = start_reference(workdir, platform, redis_url, args.workers, args.worker_class)
    servers.append(reference)
    bare = start_bare(workdir, args.workers, args.worker_class)
    servers.append(bare)
    print(f"Launch benchmark: {args.clients} clients, {args.rounds} round(s) of {args.seconds:g} s per tool, "
          f"{args.workers} gunicorn {args.worker_class} workers each, {os.cpu_count()} CPUs, load average "
          f"before start {os.getloadavg()[0]:.2f}.")
    print(f"  Trailmark: {db_label} + Redis; reference: pylti1p3 {_version('pylti1p3next')} + Redis. "
          f"{USERS} users (20% teachers) in {COURSES} classes, each warmed up by one launch.")

    for server in (trailmark, reference):  # warm up: every user launches once, code paths get hot
        try:
            warm_up(server, platform, args.clients)
        except Exception as exc:  # noqa: BLE001
            log = server.log.read_text()
            errors = [line for line in log.splitlines() if '"ERROR"' in line or "Traceback" in line]
            raise SystemExit(f"{server.name} failed during warm-up: {exc}\n"
                             f"{chr(10).join(errors[-3:]) or log[-3000:]}") from None

    totals = {"trailmark": Result("trailmark"), "reference": Result("reference")}
    for r in range(args.rounds):
        order = (trailmark, reference) if r % 2 == 0 else (reference, trailmark)
        for server in order:
            res = run_load(server, platform, clients=args.clients, seconds=args.seconds, seed=r)
            totals[server.name].merge(res)
            print(f"  round {r + 1} {server.name:<9} {res.rate:7.1f} launches/s  p50 {res.pct(0.5):6.1f} ms"
                  f"  p99 {res.pct(0.99):6.1f} ms  CPU {res.cpu_ms_per_launch:5.2f} ms/launch"
                  f"  errors {res.errors}")

    floor_run = run_load(bare, platform, clients=args.clients, seconds=max(3.0, args.seconds / 2), seed=5,
                         action=bare_get)
    bare_ms = floor_run.cpu_ms_per_launch
    verify_ms = rs256_verify_cpu(platform) * 1000
    floor_ms = 2 * bare_ms + verify_ms

    t, ref = totals["trailmark"], totals["reference"]
    print("\n                     launches/s    p50 ms   p95 ms   p99 ms   server CPU ms/launch   errors")
    for res in (t, ref):
        print(f"  {res.name:<18} {res.rate:10.1f} {res.pct(0.5):9.1f} {res.pct(0.95):8.1f} "
              f"{res.pct(0.99):8.1f} {res.cpu_ms_per_launch:14.2f} {res.errors:14d}")
    names = ["login", "auth (platform signs)", "id_token POST", "redirect GET", "panel GET"]
    print("\n  p50 ms per step:   " + "".join(f"{n:>22}" for n in names))
    for res in (t, ref):
        print(f"  {res.name:<18} " + "".join(f"{res.step_p50(n):22.1f}" for n in names))
    ratio = t.rate / ref.rate if ref.rate else float("nan")
    print(f"\n  Trailmark / reference launches per second: {ratio:.2f}x  (target >= 1.5x)  "
          f"{'MET' if ratio >= 1.5 else 'MISSED'}")
    print(f"  Trailmark p99: {t.pct(0.99):.1f} ms  (target < 30 ms)  {'MET' if t.pct(0.99) < 30 else 'MISSED'}")
    print(f"  Server CPU per launch: Trailmark {t.cpu_ms_per_launch:.2f} ms, reference "
          f"{ref.cpu_ms_per_launch:.2f} ms; floor {floor_ms:.2f} ms = 2 x bare Flask request "
          f"{bare_ms:.3f} ms + RS256 verify {verify_ms:.3f} ms  (Trailmark = "
          f"{t.cpu_ms_per_launch / floor_ms:.1f} x floor, reference = {ref.cpu_ms_per_launch / floor_ms:.1f}"
          " x floor)")
    print(f"  Bare Flask under the same gunicorn: {floor_run.rate:.0f} requests/s at {args.clients} clients.")
    in_process_ms = bare_wsgi_cpu() * 1000
    print(f"  gunicorn and HTTP per request: bare Flask under gunicorn {bare_ms:.3f} ms - the same app called in "
          f"process {in_process_ms:.3f} ms = {bare_ms - in_process_ms:.3f} ms; a launch is 3 requests for both tools, "
          f"so {3 * (bare_ms - in_process_ms):.2f} ms of each one's server CPU per launch is spent before and after "
          "the app.")
    print(f"  Platform JWKS fetched {platform.jwks_hits} time(s) in the whole run.")
    print_budget(t, ref, clients=args.clients, cpus=os.cpu_count() or 1)
    for res in (t, ref):
        if res.errors:
            print(f"  {res.name} first error: {res.first_error}")

    for server in servers:
        server.stop()
    servers.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per tool and round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", choices=("gthread", "sync"), default="gthread",
                        help="gunicorn worker class of all three servers (gthread keeps connections alive)")
    parser.add_argument("--profile", type=int, default=300, help="launches to profile (0: skip)")
    parser.add_argument("--profile-only", action="store_true", help="skip the servers and the load: profile only")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="trailmark-launch-perf-"))
    platform = Platform()
    servers: list[Server] = []
    try:
        with redis_server(workdir) as redis_url, database(workdir) as (database_url, db_label):
            if not args.profile_only:
                compare(args, workdir, platform, servers, redis_url, database_url, db_label)
        if args.profile:
            with redis_server(workdir) as redis_url, database(workdir / "profile") as (database_url, _label):
                cwd = os.getcwd()
                os.chdir(workdir)  # relative file: secrets (created on first use) stay in the scratch directory
                try:
                    profile_trailmark(platform, database_url, redis_url, workdir, args.profile)
                finally:
                    os.chdir(cwd)
    finally:
        for server in servers:
            server.stop()
        platform.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
