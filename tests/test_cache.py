"""The optional Redis cache: its small interface on a real redis-server, outages, and launches that use it."""

from __future__ import annotations

import socket
import uuid
from typing import Any

import pytest
import redis
from sqlalchemy import delete

from plugin.cache import NullCache, RedisCache, cache_from_config, get_cache
from plugin.config import load_config
from plugin.store.db import get_store
from plugin.store.models import PlatformKeySet


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_redis_the_cache_is_null() -> None:
    cache = cache_from_config(load_config(env={}))
    assert isinstance(cache, NullCache) and not cache.enabled
    assert cache.set("k", b"v", 60) is False
    assert cache.get("k") is None and cache.add_if_absent("k", b"v", 60) is None
    assert cache.get_many(["k", "j"]) == [None, None]
    assert cache.take("k") is None and cache.delete_indexed("i") is None


@pytest.mark.redis
def test_get_set_and_add_if_absent(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    cache = RedisCache.from_url(redis_url, prefix=prefix)
    assert cache.get("a") is None
    cache.set("a", "1", 60)
    assert cache.get("a") == b"1"
    assert cache.add_if_absent("once", b"x", 30) is True
    assert cache.add_if_absent("once", b"y", 30) is False
    assert cache.get("once") == b"x"
    raw = redis.Redis.from_url(redis_url)
    assert 0 < raw.ttl(prefix + "once") <= 30 and 0 < raw.ttl(prefix + "a") <= 60
    other = RedisCache.from_url(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    assert other.get("a") is None  # prefixes keep several Trailmarks apart
    assert cache.set("gone", b"1", 0) is False  # no TTL, no write
    assert cache.get("gone") is None
    raw.delete(prefix + "a", prefix + "once")


@pytest.mark.redis
def test_get_many_take_and_indexed_keys(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    cache = RedisCache.from_url(redis_url, prefix=prefix)
    raw = redis.Redis.from_url(redis_url)
    assert cache.set("state", b"s", 60) is True
    assert cache.get_many(["mark", "state"]) == [None, b"s"]
    assert cache.take("state", mark=("mark", 30)) is True  # this call deleted it, and marked why
    assert cache.take("state", mark=("mark", 30)) is False  # a second taker finds it gone
    assert cache.get_many(["mark", "state"]) == [b"1", None]
    assert 0 < raw.ttl(prefix + "mark") <= 30

    assert cache.set("s1", b"1", 60, index="owner") and cache.set("s2", b"2", 120, index="owner")
    assert cache.set("other", b"3", 60, index="someone-else")
    assert 60 < raw.ttl(prefix + "owner") <= 120  # the list lives as long as its newest key
    assert cache.delete_indexed("owner") == 2
    assert cache.get_many(["s1", "s2", "other"]) == [None, None, b"3"]
    assert not raw.exists(prefix + "owner")
    assert cache.delete_indexed("owner") == 0
    raw.delete(prefix + "mark", prefix + "other", prefix + "someone-else")


class CountingClient:
    def __init__(self, client: Any):
        self.client = client
        self.calls = 0

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.client.get(*args, **kwargs)

    def set(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.client.set(*args, **kwargs)


def test_an_unreachable_redis_is_a_miss_and_is_left_alone_for_a_while() -> None:
    cache = RedisCache.from_url(f"redis://127.0.0.1:{_closed_port()}/0", timeout=0.2)
    client = CountingClient(cache.client)
    cache.client, cache.backoff_seconds = client, 60
    assert cache.get("k") is None
    assert cache.add_if_absent("k", b"1", 10) is None  # unknown, never "absent"
    assert cache.take("k") is None  # unknown, never "taken"
    assert cache.set("k", b"1", 10) is False and cache.get_many(["k"]) == [None]
    assert client.calls == 1  # after the first failure, no call waits on a dead server


# --------------------------------------------------------------------------- launches with Redis


@pytest.fixture
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    marker = request.node.get_closest_marker("redis")
    if marker is None:
        return app_config
    url = request.getfixturevalue("redis_url")
    return {**app_config, "redis": {"url": url, "key_prefix": f"test:{uuid.uuid4().hex}:"}}


@pytest.mark.redis
def test_a_replayed_launch_is_refused_by_redis(app: Any, client: Any, lti: Any) -> None:
    """More launches with Redis (states, nonces, sessions kept there): tests/lti/test_launch_redis.py."""
    state, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce))
    assert client.post("/lti/launch", data={"id_token": token, "state": state}).status_code == 303
    cache = get_cache(app)
    assert isinstance(cache, RedisCache)
    assert len(list(cache.client.scan_iter(cache.prefix + "nonce:*"))) == 1
    replay = client.post("/lti/launch", data={"id_token": token, "state": state})
    assert replay.status_code == 401 and "nonce_replayed" in replay.get_data(as_text=True)


@pytest.mark.redis
def test_a_second_worker_gets_the_platform_keys_from_redis(app: Any, app_config: dict[str, Any], client: Any,
                                                           lti: Any) -> None:
    from plugin.app import create_app

    assert lti.launch(client).status_code == 303
    assert lti.jwks_calls == 1
    with get_store(app).session() as session:  # not even the database copy is needed
        session.execute(delete(PlatformKeySet))
    second = create_app(app_config, env={})  # a fresh process: nothing in memory
    try:
        assert lti.launch(second.test_client()).status_code == 303
        assert lti.jwks_calls == 1
    finally:
        get_store(second).dispose()


def test_launches_work_while_redis_is_down(app_config: dict[str, Any], lti: Any) -> None:
    from plugin.app import create_app

    down = create_app({**app_config, "redis": {"url": f"redis://127.0.0.1:{_closed_port()}/0",
                                               "timeout_seconds": 0.2}}, env={})
    try:
        client = down.test_client()
        assert lti.launch(client).status_code == 303
        state, nonce = lti.login(client)
        token = lti.sign(lti.claims(nonce))
        assert client.post("/lti/launch", data={"id_token": token, "state": state}).status_code == 303
        replay = client.post("/lti/launch", data={"id_token": token, "state": state})
        assert replay.status_code == 401 and "nonce_replayed" in replay.get_data(as_text=True)
    finally:
        get_store(down).dispose()
