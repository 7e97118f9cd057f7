"""Configuration: ``config/default.toml``, then the district file named by ``TRAILMARK_CONFIG``, then the
environment. Everything is validated with marshmallow at start; an invalid value stops start-up with a message
naming the key, the bad value and the expected form. Secrets are references (``env:NAME`` or ``file:PATH``),
resolved only when used and never logged.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, validate, validates_schema

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "config" / "default.toml"

SOURCE_KINDS = ("canvas", "moodle", "oneroster-rest", "oneroster-csv", "lti", "fake")
SECRET_KEYS = frozenset({"token", "client_secret", "password", "refresh_token", "secret_key", "private_key"})


class ConfigError(Exception):
    """The configuration is invalid; the message says where and how to fix it."""


# --------------------------------------------------------------------------- secrets


def _is_secret_ref(value: object) -> bool:
    return isinstance(value, str) and (value.startswith("env:") or value.startswith("file:"))


def resolve_secret(ref: str, *, key: str = "secret") -> str:
    """Turn ``env:NAME`` or ``file:PATH`` into the secret's value."""
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{key}: environment variable {name} is not set; export it or use file:PATH")
        return value
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read secret file {path} ({exc.strerror})") from None
    raise ConfigError(f"{key}: secrets must be given as env:NAME or file:PATH, never inline")


def resolve_secrets(source: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of a source (or platform) dict with every secret reference resolved."""
    out: dict[str, Any] = {}
    for key, value in source.items():
        if isinstance(value, Mapping):
            out[key] = resolve_secrets(value)
        elif key in SECRET_KEYS and isinstance(value, str):
            out[key] = resolve_secret(value, key=f"{source.get('name', '')}.{key}".strip("."))
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- schemas


class _SecretRef(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if not _is_secret_ref(text):
            raise ValidationError("secrets must be references: env:NAME or file:PATH, never the secret itself")
        return text


def _url(*, require_tld: bool = False) -> fields.Url:
    return fields.Url(require_tld=require_tld, schemes={"http", "https"})


class ServerSchema(Schema):
    class Meta:
        unknown = RAISE

    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=5000, validate=validate.Range(1, 65535))
    public_url = fields.String(load_default="")
    trust_proxy = fields.Boolean(load_default=False)
    secret_key = _SecretRef(load_default="file:var/secret_key")
    workers = fields.Integer(load_default=2, validate=validate.Range(1, 64))
    threads = fields.Integer(load_default=1, validate=validate.Range(1, 64))
    worker_class = fields.String(load_default="gthread", validate=validate.OneOf(["gthread", "sync"]))
    timeout_seconds = fields.Integer(load_default=30, validate=validate.Range(5, 3600))
    graceful_timeout_seconds = fields.Integer(load_default=30, validate=validate.Range(1, 3600))
    access_log = fields.String(load_default="off", validate=validate.OneOf(["off", "json"]))
    worker_header = fields.Boolean(load_default=False)
    log_level = fields.String(load_default="INFO", validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))


class DatabaseSchema(Schema):
    class Meta:
        unknown = RAISE

    url = fields.String(load_default="sqlite:///var/trailmark.db")
    pool_size = fields.Integer(load_default=5, validate=validate.Range(1, 200))


class RedisSchema(Schema):
    class Meta:
        unknown = RAISE

    url = fields.String(load_default="")
    password = _SecretRef(load_default=None, allow_none=True)
    key_prefix = fields.String(load_default="trailmark:", validate=validate.Length(max=64))
    timeout_seconds = fields.Float(load_default=0.5, validate=validate.Range(0.05, 30))


class LtiSchema(Schema):
    class Meta:
        unknown = RAISE

    tool_name = fields.String(load_default="Trailmark")
    session_minutes = fields.Integer(load_default=480, validate=validate.Range(5, 24 * 60))
    clock_leeway_seconds = fields.Integer(load_default=60, validate=validate.Range(0, 600))
    max_token_age_seconds = fields.Integer(load_default=3900, validate=validate.Range(60, 86400))
    login_state_minutes = fields.Integer(load_default=10, validate=validate.Range(1, 60))
    jwks_cache_seconds = fields.Integer(load_default=3600, validate=validate.Range(0, 86400))
    http_timeout_seconds = fields.Float(load_default=10.0, validate=validate.Range(0.5, 120))
    allow_http_platforms = fields.Boolean(load_default=False)
    contact_email = fields.String(load_default="")


class SandboxSchema(Schema):
    class Meta:
        unknown = RAISE

    enabled = fields.Boolean(load_default=None, allow_none=True)  # unset: on for local runs, off in production
    key_path = fields.String(load_default="var/sandbox-platform.pem")


class SchedulerSchema(Schema):
    class Meta:
        unknown = RAISE

    enabled = fields.Boolean(load_default=True)
    outbox_seconds = fields.Integer(load_default=30, validate=validate.Range(1, 3600))
    leader_lock_id = fields.Integer(load_default=7_413_921_001, validate=validate.Range(1, 2**63 - 1))
    heartbeat_seconds = fields.Integer(load_default=5, validate=validate.Range(1, 12))


class MailSchema(Schema):
    """Outgoing mail: parents' sign-in links and the weekly digest."""

    class Meta:
        unknown = RAISE

    enabled = fields.Boolean(load_default=False)
    smtp_host = fields.String(load_default="127.0.0.1")
    smtp_port = fields.Integer(load_default=25, validate=validate.Range(1, 65535))
    security = fields.String(load_default="none", validate=validate.OneOf(["none", "starttls", "tls"]))
    username = fields.String(load_default=None, allow_none=True)
    password = _SecretRef(load_default=None, allow_none=True)
    from_address = fields.Email(load_default="trailmark@localhost.localdomain")
    timeout_seconds = fields.Float(load_default=10.0, validate=validate.Range(0.5, 120))
    signin_minutes = fields.Integer(load_default=30, validate=validate.Range(5, 24 * 60))
    digest_weekday = fields.String(load_default="fri", validate=validate.OneOf(
        ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]))


class PrivacySchema(Schema):
    """Encryption at rest and how long operational records about people are kept."""

    class Meta:
        unknown = RAISE

    encryption_key = _SecretRef(load_default="file:var/encryption_key")
    retention_days = fields.Integer(load_default=365, validate=validate.Range(1, 36500))
    audit_retention_days = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 36500))
    sync_run_retention_days = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 36500))
    outbox_retention_days = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 36500))
    snapshot_retention_days = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 36500))
    purge_hour = fields.Integer(load_default=3, validate=validate.Range(0, 23))


class AdminSchema(Schema):
    """The admin console at /admin and its JSON API at /api/admin."""

    class Meta:
        unknown = RAISE

    enabled = fields.Boolean(load_default=True)
    session_minutes = fields.Integer(load_default=60, validate=validate.Range(5, 24 * 60))
    max_failed_logins = fields.Integer(load_default=5, validate=validate.Range(1, 1000))
    lockout_minutes = fields.Integer(load_default=15, validate=validate.Range(1, 24 * 60))


class ObservabilitySchema(Schema):
    """Logs, /metrics and /readyz."""

    class Meta:
        unknown = RAISE

    log_format = fields.String(load_default="json", validate=validate.OneOf(["json", "text"]))
    metrics_enabled = fields.Boolean(load_default=True)
    metrics_token = _SecretRef(load_default=None, allow_none=True)


ALERT_KINDS = ("behind", "stalled", "far_ahead")
ALERT_AUDIENCES = ("teacher", "student", "parent")


def _alert_audience_schema(name: str, default_kinds: tuple[str, ...]) -> type[Schema]:
    """Build the schema of one audience's alert messages: which kinds, from which level."""
    return Schema.from_dict({
        "kinds": fields.List(fields.String(validate=validate.OneOf(ALERT_KINDS)),
                             load_default=lambda: list(default_kinds)),
        "min_level": fields.Integer(load_default=1, validate=validate.Range(1, 3)),
    }, name=name)


_AUDIENCE_SCHEMAS: dict[str, type[Schema]] = {
    "teacher": _alert_audience_schema("TeacherAlertMessagesSchema", ALERT_KINDS),
    "student": _alert_audience_schema("StudentAlertMessagesSchema", ()),
    "parent": _alert_audience_schema("ParentAlertMessagesSchema", ()),
}


class AlertMessagesSchema(Schema):
    """Minimum-pace alerts sent through the LMS, per audience: teachers get every kind, students and parents none."""

    class Meta:
        unknown = RAISE

    teacher = fields.Nested(_AUDIENCE_SCHEMAS["teacher"], load_default=lambda: _AUDIENCE_SCHEMAS["teacher"]().load({}))
    student = fields.Nested(_AUDIENCE_SCHEMAS["student"], load_default=lambda: _AUDIENCE_SCHEMAS["student"]().load({}))
    parent = fields.Nested(_AUDIENCE_SCHEMAS["parent"], load_default=lambda: _AUDIENCE_SCHEMAS["parent"]().load({}))


class DistrictSchema(Schema):
    class Meta:
        unknown = RAISE

    slug = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9][a-z0-9-]{0,62}$",
                                                                 error="use lowercase letters, digits and dashes"))
    name = fields.String(required=True)
    issuer_allowlist = fields.List(fields.String(), load_default=list)
    match_on = fields.List(fields.String(validate=validate.OneOf(["sis_id", "email", "username"])),
                           load_default=lambda: ["sis_id"])
    mastery_threshold = fields.Float(load_default=None, allow_none=True)
    alert_messages = fields.Nested(AlertMessagesSchema, load_default=lambda: AlertMessagesSchema().load({}))


class PlatformSchema(Schema):
    class Meta:
        unknown = RAISE

    district = fields.String(required=True)
    name = fields.String(load_default="")
    issuer = fields.String(required=True)
    client_id = fields.String(required=True)
    deployment_ids = fields.List(fields.String(), required=True, validate=validate.Length(min=1))
    auth_login_url = _url()
    auth_token_url = _url()
    key_set_url = _url()
    auth_audience = fields.String(load_default=None, allow_none=True)
    product_family = fields.String(load_default="")

    @validates_schema
    def _required_urls(self, data: dict[str, Any], **_: Any) -> None:
        for key in ("auth_login_url", "auth_token_url", "key_set_url"):
            if not data.get(key):
                raise ValidationError("required: the platform's URL (see README, 'Registering')", key)


class SourceSchema(Schema):
    """Common keys of a source; kind-specific keys pass through to the connector, which validates them."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                                                                 error="letters, digits, '.', '_' and '-'"))
    kind = fields.String(required=True, validate=validate.OneOf(SOURCE_KINDS))
    district = fields.String(required=True)
    schedule = fields.String(load_default=None, allow_none=True)
    enabled = fields.Boolean(load_default=True)
    max_removal_share = fields.Float(load_default=0.10, validate=validate.Range(0.0, 1.0))


class ConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    mode = fields.String(load_default="local", validate=validate.OneOf(["local", "production"]))
    server = fields.Nested(ServerSchema, load_default=dict)
    database = fields.Nested(DatabaseSchema, load_default=dict)
    redis = fields.Nested(RedisSchema, load_default=lambda: RedisSchema().load({}))
    lti = fields.Nested(LtiSchema, load_default=dict)
    sandbox = fields.Nested(SandboxSchema, load_default=dict)
    scheduler = fields.Nested(SchedulerSchema, load_default=dict)
    mail = fields.Nested(MailSchema, load_default=dict)
    privacy = fields.Nested(PrivacySchema, load_default=lambda: PrivacySchema().load({}))
    admin = fields.Nested(AdminSchema, load_default=lambda: AdminSchema().load({}))
    observability = fields.Nested(ObservabilitySchema, load_default=lambda: ObservabilitySchema().load({}))
    districts = fields.List(fields.Nested(DistrictSchema), load_default=list)
    platforms = fields.List(fields.Nested(PlatformSchema), load_default=list)
    sources = fields.List(fields.Dict(), load_default=list)


# --------------------------------------------------------------------------- loading

ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "TRAILMARK_MODE": ("mode",),
    "HOST": ("server", "host"),
    "PORT": ("server", "port"),
    "TRAILMARK_PUBLIC_URL": ("server", "public_url"),
    "TRAILMARK_TRUST_PROXY": ("server", "trust_proxy"),
    "TRAILMARK_SECRET_KEY": ("server", "secret_key"),
    "TRAILMARK_WORKERS": ("server", "workers"),
    "TRAILMARK_LOG_LEVEL": ("server", "log_level"),
    "DATABASE_URL": ("database", "url"),
    "TRAILMARK_REDIS_URL": ("redis", "url"),
    "TRAILMARK_SANDBOX": ("sandbox", "enabled"),
    "TRAILMARK_SCHEDULER": ("scheduler", "enabled"),
    "TRAILMARK_LOG_FORMAT": ("observability", "log_format"),
}


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist (TRAILMARK_CONFIG names it)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _format_errors(messages: Any, prefix: str = "") -> list[str]:
    lines: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
            lines.extend(_format_errors(value, name))
    elif isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
        lines.append(f"{prefix or 'config'}: {'; '.join(messages)}")
    elif isinstance(messages, list):
        for item in messages:
            lines.extend(_format_errors(item, prefix))
    else:
        lines.append(f"{prefix}: {messages}")
    return lines


def _lookup(raw: Mapping[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.replace("[", ".").replace("]", "").split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return None
    return node


def validate_config(raw: Mapping[str, Any], *, origin: str = "configuration") -> dict[str, Any]:
    """Validate a merged configuration mapping; raise ConfigError listing every problem."""
    try:
        cfg: dict[str, Any] = ConfigSchema().load(raw)
    except ValidationError as exc:
        problems = []
        for line in _format_errors(exc.messages):
            key = line.split(":", 1)[0]
            bad = _lookup(raw, key)
            shown = "" if bad is None or key.endswith(SECRET_KEYS_SUFFIXES) else f" (got {bad!r})"
            problems.append(f"  {line}{shown}")
        raise ConfigError(f"{origin} is invalid:\n" + "\n".join(problems)) from None
    problems = []
    slugs = {d["slug"] for d in cfg["districts"]}
    sources = []
    for i, source in enumerate(cfg["sources"]):
        try:
            common = SourceSchema().load(source)
        except ValidationError as exc:
            problems.extend(f"  sources[{i}].{line}" for line in _format_errors(exc.messages))
            continue
        for key, value in source.items():
            if key in SECRET_KEYS and not _is_secret_ref(value):
                problems.append(f"  sources[{i}].{key}: secrets must be env:NAME or file:PATH, never inline")
        if common["district"] not in slugs:
            problems.append(f"  sources[{i}].district: no [[districts]] entry with slug {common['district']!r}")
        sources.append({**source, **common})
    names = [s["name"] for s in sources]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"  sources: the name {dup!r} is used twice; names must be unique")
    for i, platform in enumerate(cfg["platforms"]):
        if platform["district"] not in slugs:
            problems.append(f"  platforms[{i}].district: no [[districts]] entry with slug {platform['district']!r}")
    url = cfg["server"]["public_url"]
    if url and not urlsplit(url).scheme.startswith("http"):
        problems.append("  server.public_url: expected an http(s) URL like https://trailmark.example.org "
                        f"(got {url!r})")
    if cfg["mode"] == "production" and url and not url.startswith("https://"):
        problems.append("  server.public_url: production needs https (LTI cookies must be Secure)")
    problems.extend(_redis_problems(cfg["redis"]))
    if problems:
        raise ConfigError(f"{origin} is invalid:\n" + "\n".join(problems))
    cfg["sources"] = sources
    if cfg["sandbox"]["enabled"] is None:
        cfg["sandbox"]["enabled"] = cfg["mode"] == "local"
    if cfg["mode"] == "local":
        cfg["lti"]["allow_http_platforms"] = True
    for district in cfg["districts"]:  # parents without a Mentor launch sign in by email, when mail is on
        district["alert_messages"]["signin_url"] = (
            f"{public_url(cfg)}/p/signin/{district['slug']}" if cfg["mail"].get("enabled") else None)
    return cfg


SECRET_KEYS_SUFFIXES = tuple(f".{k}" for k in SECRET_KEYS)


def _redis_problems(redis_cfg: Mapping[str, Any]) -> list[str]:
    url = redis_cfg["url"]
    if not url:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return [f"  redis.url: expected redis://host:6379/0, rediss://… or unix:///path (got {url!r})"]
    if parts.password:
        return ["  redis.url: put the password in redis.password as env:NAME or file:PATH, not in the URL"]
    return []


def _coerce_env(value: str) -> Any:
    lowered = value.lower()
    if lowered in {"true", "yes", "on", "1"}:
        return True if lowered != "1" else value
    if lowered in {"false", "no", "off", "0"}:
        return False if lowered != "0" else value
    return value


def load_config(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load and validate the whole configuration."""
    env = os.environ if env is None else env
    raw = _read_toml(DEFAULT_FILE) if DEFAULT_FILE.exists() else {}
    origin = str(DEFAULT_FILE)
    district_file = env.get("TRAILMARK_CONFIG")
    if district_file:
        raw = _deep_merge(raw, _read_toml(Path(district_file)))
        origin = district_file
    for name, path in ENV_OVERRIDES.items():
        if name in env and env[name] != "":
            node = raw
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = _coerce_env(env[name])
    if overrides:
        raw = _deep_merge(raw, overrides)
    return validate_config(raw, origin=origin)


def public_url(cfg: Mapping[str, Any]) -> str:
    """The base URL platforms reach Trailmark at, without a trailing slash."""
    url = cfg["server"]["public_url"]
    if url:
        return url.rstrip("/")
    host = cfg["server"]["host"]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{cfg['server']['port']}"


def create_private_file(path: Path, content: bytes) -> bool:
    """Create ``path`` (readable by its owner only) holding ``content``, unless it exists; return whether created.

    The file appears whole or not at all: it is written under a temporary name and linked into place, so processes
    starting together agree on one file and none reads it half written.
    """
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False  # another process created it first
        return True
    finally:
        os.unlink(tmp)


def secret_key(cfg: Mapping[str, Any], *, create: bool = True) -> str:
    """The Flask secret key; a file reference is created with a random key the first time."""
    ref = cfg["server"]["secret_key"]
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        if not path.exists() and create:
            import secrets

            create_private_file(path, secrets.token_urlsafe(48).encode())
        return resolve_secret(f"file:{path}", key="server.secret_key")
    return resolve_secret(ref, key="server.secret_key")
