"""An optional shared cache in front of the database (Redis when ``redis.url`` is set, otherwise nothing).

The database stays the source of truth for everything cached here. A cache that is down, slow or empty costs a
database query, never a security check: callers treat a miss and an outage alike, and ``add_if_absent`` says
"present" only when Redis really holds the key. After an error the cache stays quiet for
``BACKOFF_SECONDS`` so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("trailmark.cache")

EXTENSION = "trailmark.cache"
BACKOFF_SECONDS = 5.0


class Cache(Protocol):
    """get/set with a TTL, and an atomic add for single-use keys."""

    enabled: bool

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or the cache is unavailable."""
        ...

    def set(self, key: str, value: bytes | str, ttl: int) -> None:
        """Store a value for ``ttl`` seconds (best effort)."""
        ...

    def add_if_absent(self, key: str, value: bytes | str, ttl: int) -> bool | None:
        """Store the key only if it is new: True added, False already present, None unknown (unavailable)."""
        ...


class NullCache:
    """No shared cache: every lookup misses and ``add_if_absent`` cannot tell."""

    enabled = False

    def get(self, key: str) -> bytes | None:
        """Miss."""
        return None

    def set(self, key: str, value: bytes | str, ttl: int) -> None:
        """Drop the value."""

    def add_if_absent(self, key: str, value: bytes | str, ttl: int) -> bool | None:
        """Cannot tell."""
        return None


class RedisCache:
    """Redis through ``redis-py``; every call has the client's socket timeout and errors back off."""

    enabled = True

    def __init__(self, client: Any, *, prefix: str = "trailmark:", backoff_seconds: float = BACKOFF_SECONDS):
        self.client = client
        self.prefix = prefix
        self.backoff_seconds = backoff_seconds
        self._quiet_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, prefix: str = "trailmark:",
                 timeout: float = 0.5) -> RedisCache:
        """Connect lazily to ``url`` (nothing is sent until the first call)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        client = redis.Redis.from_url(url, password=password, socket_timeout=timeout,
                                      socket_connect_timeout=timeout, health_check_interval=30,
                                      retry=Retry(NoBackoff(), 0))  # an outage costs one timeout, not several
        return cls(client, prefix=prefix)

    def _available(self) -> bool:
        return time.monotonic() >= self._quiet_until

    def _failed(self, op: str, exc: Exception) -> None:
        with self._lock:
            first = self._available()
            self._quiet_until = time.monotonic() + self.backoff_seconds
        if first:
            log.warning("cache.unavailable op=%s error=%s; using the database for %.0f s", op,
                        type(exc).__name__, self.backoff_seconds)

    def get(self, key: str) -> bytes | None:
        """GET the key."""
        if not self._available():
            return None
        try:
            value = self.client.get(self.prefix + key)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is a miss
            self._failed("get", exc)
            return None
        return value if isinstance(value, bytes) or value is None else str(value).encode()

    def set(self, key: str, value: bytes | str, ttl: int) -> None:
        """SET the key with EX ``ttl``."""
        if ttl <= 0 or not self._available():
            return
        try:
            self.client.set(self.prefix + key, value, ex=int(ttl))
        except Exception as exc:  # noqa: BLE001
            self._failed("set", exc)

    def add_if_absent(self, key: str, value: bytes | str, ttl: int) -> bool | None:
        """SET the key with NX and EX ``ttl``."""
        if not self._available():
            return None
        try:
            return bool(self.client.set(self.prefix + key, value, ex=max(1, int(ttl)), nx=True))
        except Exception as exc:  # noqa: BLE001
            self._failed("add", exc)
            return None

    def ping(self) -> bool:
        """True when Redis answers."""
        try:
            return bool(self.client.ping())
        except Exception:  # noqa: BLE001
            return False


def cache_from_config(cfg: dict[str, Any]) -> Cache:
    """A Redis cache when ``redis.url`` is set, otherwise the null cache."""
    redis_cfg = cfg["redis"]
    if not redis_cfg["url"]:
        return NullCache()
    from plugin.config import resolve_secret

    password = resolve_secret(redis_cfg["password"], key="redis.password") if redis_cfg["password"] else None
    return RedisCache.from_url(redis_cfg["url"], password=password, prefix=redis_cfg["key_prefix"],
                               timeout=redis_cfg["timeout_seconds"])


def get_cache(app: Flask | None = None) -> Cache:
    """The app's shared cache, created on first use."""
    if app is None:
        from flask import current_app

        app = current_app._get_current_object()  # type: ignore[attr-defined]
    cache: Cache | None = app.extensions.get(EXTENSION)
    if cache is None:
        cache = cache_from_config(app.config["TRAILMARK"])
        app.extensions[EXTENSION] = cache
    return cache
