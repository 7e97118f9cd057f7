"""Launches with Redis: login states, used nonces and sessions kept there, every check of test_launch still made."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from plugin.cache import RedisCache, get_cache
from plugin.lti import sessions
from plugin.store.db import get_store
from plugin.store.models import AppSession, District, LoginState, Person, UsedNonce
from tests.lti import test_iframe_storage, test_launch

pytestmark = pytest.mark.redis


@pytest.fixture
def app_config(app_config: dict[str, Any], redis_url: str) -> dict[str, Any]:
    return {**app_config, "redis": {"url": redis_url, "key_prefix": f"test:{uuid.uuid4().hex}:"}}


def _cache(app: Any) -> RedisCache:
    cache = get_cache(app)
    assert isinstance(cache, RedisCache)
    return cache


def _keys(app: Any, kind: str) -> list[bytes]:
    cache = _cache(app)
    return list(cache.client.scan_iter(f"{cache.prefix}{kind}:*"))


def _count(app: Any, model: Any) -> int:
    with get_store(app).session() as s:
        return s.scalar(select(func.count()).select_from(model))


# The checks of test_launch.py and test_iframe_storage.py that involve login state, nonce, browser binding and
# sessions, run again here with Redis configured (this module's app_config).
test_roles_map_to_views = test_launch.test_roles_map_to_views
test_bad_signature_is_refused = test_launch.test_bad_signature_is_refused
test_tampered_payload_is_refused = test_launch.test_tampered_payload_is_refused
test_symmetric_and_none_algorithms_are_refused = test_launch.test_symmetric_and_none_algorithms_are_refused
test_unknown_deployment_is_refused = test_launch.test_unknown_deployment_is_refused
test_expired_token_is_refused = test_launch.test_expired_token_is_refused
test_replayed_nonce_is_refused_from_another_browser = test_launch.test_replayed_nonce_is_refused_from_another_browser
test_nonce_not_issued_for_this_login_is_refused = test_launch.test_nonce_not_issued_for_this_login_is_refused
test_missing_state_is_refused = test_launch.test_missing_state_is_refused
test_unknown_state_is_refused = test_launch.test_unknown_state_is_refused
test_state_cookie_from_another_browser_is_refused = test_launch.test_state_cookie_from_another_browser_is_refused
test_many_launches_in_one_browser_keep_working = test_launch.test_many_launches_in_one_browser_keep_working
test_home_sends_a_bookmarked_launch_to_its_panel = test_launch.test_home_sends_a_bookmarked_launch_to_its_panel
test_second_launch_reuses_the_person = test_launch.test_second_launch_reuses_the_person
test_unknown_role_gets_friendly_page = test_launch.test_unknown_role_gets_friendly_page
test_platform_storage_round_trip = test_iframe_storage.test_platform_storage_round_trip
test_cookie_state_mismatch_offers_a_new_window = test_iframe_storage.test_cookie_state_mismatch_offers_a_new_window


def test_a_launch_writes_no_login_state_nonce_or_session_to_the_database(app: Any, client: Any, lti: Any) -> None:
    state, nonce = lti.login(client)
    assert len(_keys(app, "login")) == 1 and _count(app, LoginState) == 0
    token = lti.sign(lti.claims(nonce))
    resp = client.post("/lti/launch", data={"id_token": token, "state": state})
    assert resp.status_code == 303
    assert client.get(resp.headers["Location"]).status_code == 200  # the session comes from Redis
    assert _keys(app, "login") == [] and len(_keys(app, "nonce")) == 1 and len(_keys(app, "session")) == 1
    assert (_count(app, LoginState), _count(app, UsedNonce), _count(app, AppSession)) == (0, 0, 0)
    with get_store(app).session() as s:  # the first launch still provisions the person: the roster is the database's
        assert s.scalar(select(func.count()).select_from(Person).where(Person.sourced_id.like("lti:%"))) == 1


def test_a_replay_is_refused_even_after_redis_forgets_the_nonce(app: Any, client: Any, lti: Any) -> None:
    state, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce))
    assert client.post("/lti/launch", data={"id_token": token, "state": state}).status_code == 303
    test_launch._refused(client.post("/lti/launch", data={"id_token": token, "state": state}), "nonce_replayed", 401)
    cache = _cache(app)
    cache.client.delete(*_keys(app, "nonce"))  # evicted, or Redis restarted empty
    test_launch._refused(client.post("/lti/launch", data={"id_token": token, "state": state}), "state_unknown", 401)


def test_two_workers_racing_for_one_state_let_one_win(app: Any, client: Any, lti: Any, monkeypatch: Any) -> None:
    """Both read the state before either deletes it: the DEL decides, the loser is refused as a replay."""
    state, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce))
    cache = _cache(app)
    real = cache.take_and_set

    def other_worker_first(key: str, **kwargs: Any) -> bool | None:
        assert cache.take(key, mark=kwargs["mark"]) is True  # the other worker's launch used the state up first
        return real(key, **kwargs)

    monkeypatch.setattr(cache, "take_and_set", other_worker_first)
    test_launch._refused(client.post("/lti/launch", data={"id_token": token, "state": state}), "nonce_replayed", 401)
    assert _count(app, AppSession) == 0 and _keys(app, "session") == []


def test_a_login_made_while_redis_was_down_finishes_from_the_database(app: Any, client: Any, lti: Any,
                                                                       monkeypatch: Any) -> None:
    cache = _cache(app)
    with monkeypatch.context() as patch:
        patch.setattr(cache, "set", lambda *args, **kwargs: False)  # Redis did not take the write
        state, nonce = lti.login(client)
    assert _count(app, LoginState) == 1 and _keys(app, "login") == []
    token = lti.sign(lti.claims(nonce))
    assert client.post("/lti/launch", data={"id_token": token, "state": state}).status_code == 303
    assert (_count(app, LoginState), _count(app, UsedNonce)) == (0, 1)  # used up in the database
    test_launch._refused(client.post("/lti/launch", data={"id_token": token, "state": state}), "nonce_replayed", 401)


def test_redis_failing_between_login_and_launch_refuses_the_launch(app: Any, client: Any, lti: Any,
                                                                   monkeypatch: Any) -> None:
    state, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce))
    monkeypatch.setattr(_cache(app), "take_and_set", lambda *args, **kwargs: None)  # Redis stopped answering
    resp = client.post("/lti/launch", data={"id_token": token, "state": state})
    assert resp.status_code == 503 and "state_unavailable" in resp.get_data(as_text=True)
    assert _count(app, AppSession) == 0


def test_an_expired_login_state_in_redis_is_refused(app: Any, client: Any, lti: Any) -> None:
    state, nonce = lti.login(client)
    cache = _cache(app)
    key = _keys(app, "login")[0]
    raw = cache.client.get(key)
    import json

    fields = json.loads(raw)
    fields[5] = fields[4] - 1  # expired a second after it was issued
    cache.client.set(key, json.dumps(fields), ex=60)
    test_launch._refused(client.post("/lti/launch", data={"id_token": lti.sign(lti.claims(nonce)), "state": state}),
                         "state_unknown", 401)


def test_sessions_in_redis_end_with_the_person(app: Any, client: Any, lti: Any) -> None:
    panel = lti.launch(client, "student").headers["Location"]
    assert client.get(panel).status_code == 200
    second = lti.launch(client, "student").headers["Location"]
    with get_store(app).session() as s:
        person = s.scalars(select(Person).where(Person.sourced_id.like("lti:%"))).one()
        person_id, district_id = person.id, person.district_id
    assert len(_keys(app, "launcher")) == 1  # the second launch remembered the ids it read
    assert sessions.end_sessions_of(get_cache(app), district_id, person_id) == 3  # two sessions and those ids
    assert _keys(app, "launcher") == [] and _keys(app, "session") == []
    for url in (panel, second):
        ended = client.get(url)
        assert ended.status_code == 401 and "session_missing" in ended.get_data(as_text=True)


def test_erasing_a_person_ends_their_sessions_and_remembered_ids(app: Any, client: Any, lti: Any) -> None:
    panel = lti.launch(client, "student").headers["Location"]
    assert lti.launch(client, "student").status_code == 303  # a returning launch: its ids are remembered
    with get_store(app).session() as s:
        person = s.scalars(select(Person).where(Person.sourced_id.like("lti:%"))).one()
        person_id, slug = person.id, s.get(District, person.district_id).slug
    erased = app.test_cli_runner().invoke(args=["privacy", "erase", str(person_id), "--district", slug, "--yes"])

    assert erased.exit_code == 0, erased.output
    assert _keys(app, "launcher") == [] and _keys(app, "session") == []
    assert client.get(panel).status_code == 401
    again = lti.launch(client, "student")
    assert again.status_code == 403 and "erased_on_request" in again.get_data(as_text=True)


def test_a_session_written_to_the_database_still_opens_with_redis(app: Any, client: Any, lti: Any,
                                                                  monkeypatch: Any) -> None:
    """Redis refused the writes of a whole launch (login state, session): both went to the database."""
    cache = _cache(app)
    with monkeypatch.context() as patch:
        patch.setattr(cache, "set", lambda *args, **kwargs: False)
        panel = lti.launch(client, "teacher").headers["Location"]
    assert _count(app, AppSession) == 1 and _keys(app, "session") == []
    assert client.get(panel).status_code == 200  # Redis answers again: a miss there, found in the database


def test_a_launch_for_no_view_still_uses_up_its_login(app: Any, client: Any, lti: Any) -> None:
    state, nonce = lti.login(client)
    token = lti.sign(lti.claims(nonce, "guest"))
    assert client.post("/lti/launch", data={"id_token": token, "state": state}).status_code == 403
    assert _keys(app, "login") == [] and _keys(app, "session") == []
    test_launch._refused(client.post("/lti/launch", data={"id_token": token, "state": state}), "nonce_replayed", 401)


def test_a_returning_launch_reads_nothing_from_the_database(app: Any, client: Any, lti: Any) -> None:
    """Registration, login, nonce and the launcher's ids come from Redis: the launch runs no SQL statement."""
    from sqlalchemy import event

    for _ in range(2):  # the first launch provisions, the second remembers the ids it reads
        assert lti.launch(client, "student").status_code == 303
    statements: list[str] = []
    engine = get_store(app).engine
    listener = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listener)
    try:
        state, nonce = lti.login(client)
        resp = client.post("/lti/launch", data={"id_token": lti.sign(lti.claims(nonce, "student")), "state": state})
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    assert resp.status_code == 303 and statements == []
    assert client.get(resp.headers["Location"]).status_code == 200


def test_a_deployment_added_after_a_refused_launch_works_at_once(app: Any, client: Any, lti: Any) -> None:
    """Registrations are remembered in Redis only when found with their deployment: refusals are never cached."""
    from plugin.lti.platforms import add_platform
    from plugin.store.models import District

    test_launch._refused(lti.launch(client, lti_deployment_id="dep-2"), "unknown_deployment", 403)
    with get_store(app).session() as s:
        district = s.scalars(select(District).where(District.slug == "north")).one()
        add_platform(s, district, issuer=lti.issuer, client_id=lti.client_id, deployment_ids=["dep-2"],
                     auth_login_url=lti.auth_url, auth_token_url=lti.token_url, key_set_url=lti.jwks_url)
    assert lti.launch(client, lti_deployment_id="dep-2").status_code == 303
