"""An optional shared store next to the database (Redis when ``redis.url`` is set, otherwise nothing).

Two kinds of keys live here. Caches (platform key sets) copy the database, which stays their source of truth.
Short-lived launch records (OIDC login states with their nonces, launch sessions; see ``plugin/lti``) are kept
only here when Redis is configured, so a launch writes nothing to the database; when Redis is not configured or
does not answer they go to the database as before. A cache that is down, slow or empty costs a database query,
never a security check: callers treat a miss and an outage alike, ``add_if_absent`` says "present" only when
Redis really holds the key, and ``take`` says "taken" only when this very call deleted it. After an error the
cache stays quiet for ``BACKOFF_SECONDS`` so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("trailmark.cache")

EXTENSION = "trailmark.cache"
BACKOFF_SECONDS = 5.0

# Server-side scripts: one round trip, atomic, and far less client work than a MULTI pipeline.
_SET_INDEXED = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('TTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
"""
_TAKE = """
local taken = redis.call('DEL', KEYS[1])
if KEYS[2] then redis.call('SET', KEYS[2], '1', 'EX', ARGV[1]) end
return taken
"""
_TAKE_AND_SET = """
local taken = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
if taken == 1 then
  redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3])
  if KEYS[4] then
    redis.call('SADD', KEYS[4], KEYS[3])
    if redis.call('TTL', KEYS[4]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[4], ARGV[3]) end
  end
end
return taken
"""


class Cache(Protocol):
    """get/set with a TTL, an atomic add and an atomic take for single-use keys, and per-owner key sets."""

    enabled: bool

    def get(self, key: str) -> bytes | None:
        """The value, or None when absent or the cache is unavailable."""
        ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of several keys in one round trip (None for each one absent, or all when unavailable)."""
        ...

    def set(self, key: str, value: bytes | str, ttl: int, *, index: str | None = None) -> bool:
        """Store a value for ``ttl`` seconds (and list its key under ``index``, kept as long as its longest-lived
        key); True when it was stored."""
        ...

    def add_if_absent(self, key: str, value: bytes | str, ttl: int) -> bool | None:
        """Store the key only if it is new: True added, False already present, None unknown (unavailable)."""
        ...

    def take(self, key: str, *, mark: tuple[str, int] | None = None) -> bool | None:
        """Delete the key: True when this call deleted it, False when it was gone, None unknown (unavailable).

        ``mark`` = (key, ttl) is set in the same transaction, so a later look-up can say why the key is gone.
        """
        ...

    def take_and_set(self, key: str, *, mark: tuple[str, int], set_key: str, value: bytes | str, ttl: int,
                     index: str | None = None) -> bool | None:
        """``take`` the key and, only if this call took it, ``set`` another, atomically and in one round trip."""
        ...

    def delete_indexed(self, index: str) -> int | None:
        """Delete every key listed under ``index`` and the list itself; how many, or None when unavailable."""
        ...


class NullCache:
    """No shared cache: every lookup misses and ``add_if_absent`` cannot tell."""

    enabled = False

    def get(self, key: str) -> bytes | None:
        """Miss."""
        return None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Miss them all."""
        return [None] * len(keys)

    def set(self, key: str, value: bytes | str, ttl: int, *, index: str | None = None) -> bool:
        """Drop the value."""
        return False

    def add_if_absent(self, key: str, value: bytes | str, ttl: int) -> bool | None:
        """Cannot tell."""
        return None

    def take(self, key: str, *, mark: tuple[str, int] | None = None) -> bool | None:
        """Cannot tell."""
        return None

    def take_and_set(self, key: str, *, mark: tuple[str, int], set_key: str, value: bytes | str, ttl: int,
                     index: str | None = None) -> bool | None:
        """Cannot tell."""
        return None

    def delete_indexed(self, index: str) -> int | None:
        """Nothing to delete."""
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
        self._set_indexed = client.register_script(_SET_INDEXED)
        self._take = client.register_script(_TAKE)
        self._take_and_set = client.register_script(_TAKE_AND_SET)

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

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """MGET the keys."""
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            values = self.client.mget([self.prefix + key for key in keys])
        except Exception as exc:  # noqa: BLE001 - any Redis failure is a miss
            self._failed("mget", exc)
            return [None] * len(keys)
        return [v if isinstance(v, bytes) or v is None else str(v).encode() for v in values]

    def set(self, key: str, value: bytes | str, ttl: int, *, index: str | None = None) -> bool:
        """SET the key with EX ``ttl`` (and SADD it to ``index``, which lives as long as its newest key)."""
        if ttl <= 0 or not self._available():
            return False
        try:
            if index is None:
                return bool(self.client.set(self.prefix + key, value, ex=int(ttl)))
            return bool(self._set_indexed(keys=[self.prefix + key, self.prefix + index], args=[value, int(ttl)]))
        except Exception as exc:  # noqa: BLE001
            self._failed("set", exc)
            return False

    def add_if_absent(self, key: str, value: bytes | str, ttl: int) -> bool | None:
        """SET the key with NX and EX ``ttl``."""
        if not self._available():
            return None
        try:
            return bool(self.client.set(self.prefix + key, value, ex=max(1, int(ttl)), nx=True))
        except Exception as exc:  # noqa: BLE001
            self._failed("add", exc)
            return None

    def take(self, key: str, *, mark: tuple[str, int] | None = None) -> bool | None:
        """DEL the key (and SET the mark) in one script."""
        if not self._available():
            return None
        try:
            keys = [self.prefix + key] + ([self.prefix + mark[0]] if mark is not None else [])
            return bool(self._take(keys=keys, args=[max(1, int(mark[1])) if mark is not None else 0]))
        except Exception as exc:  # noqa: BLE001
            self._failed("take", exc)
            return None

    def take_and_set(self, key: str, *, mark: tuple[str, int], set_key: str, value: bytes | str, ttl: int,
                     index: str | None = None) -> bool | None:
        """DEL the key, SET the mark, and if the DEL took the key SET ``set_key`` (SADD it to ``index``): one script."""
        if ttl <= 0 or not self._available():
            return None
        keys = [self.prefix + key, self.prefix + mark[0], self.prefix + set_key]
        if index is not None:
            keys.append(self.prefix + index)
        try:
            return bool(self._take_and_set(keys=keys, args=[max(1, int(mark[1])), value, int(ttl)]))
        except Exception as exc:  # noqa: BLE001
            self._failed("take_and_set", exc)
            return None

    def delete_indexed(self, index: str) -> int | None:
        """SMEMBERS the index, then DEL its keys and itself."""
        if not self._available():
            return None
        try:
            members = list(self.client.smembers(self.prefix + index))  # full key names, prefix included
            deleted = int(self.client.delete(*members)) if members else 0
            self.client.delete(self.prefix + index)
            return deleted
        except Exception as exc:  # noqa: BLE001
            self._failed("delete_indexed", exc)
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
