"""Canvas writes: gates (module prerequisites + min_score), grades and messages, and configuration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest
import requests
import responses

from connectors.base import (
    AuthError,
    ConfigurationError,
    GateWrite,
    MessageWrite,
    NotFound,
    RemoteRejected,
    ScoreWrite,
    UpstreamError,
)
from connectors.canvas import CanvasConnector
from tests.connectors.canvas.canvas_support import BASE, CanvasMock, fixture

Make = Callable[..., CanvasConnector]
MODULE_202 = "/api/v1/courses/101/modules/202"
ITEM_3004 = "/api/v1/courses/101/modules/202/items/3004"


def form(request: requests.PreparedRequest) -> list[tuple[str, str]]:
    body = request.body if isinstance(request.body, str) else (request.body or b"").decode()
    return parse_qsl(body, keep_blank_values=True)


# --------------------------------------------------------------------------- gates


def test_gate_write_sets_prerequisites_and_min_score_with_canvas_form_params(canvas: CanvasMock,
                                                                            make_connector: Make) -> None:
    canvas.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])
    canvas.pages("/api/v1/courses/101/modules/202/items", [fixture("module_items_202.json")])
    canvas.pages("/api/v1/courses/101/assignments/803", [fixture("assignments_101.json")[2]])
    canvas.json(responses.PUT, MODULE_202, fixture("module_202_updated.json"))
    canvas.json(responses.PUT, ITEM_3004, fixture("module_item_3004_updated.json"))

    result = make_connector().push(GateWrite(class_sourced_id="101", module_sourced_id="202",
                                             prerequisite_module_sourced_ids=("201",),
                                             check_activity_sourced_id="803", min_score=6.0))

    (module_put,) = [r for r in canvas.calls(MODULE_202) if r.method == "PUT" and r.url.endswith("/202")]
    assert form(module_put) == [("module[prerequisite_module_ids][]", "201")]
    (item_put,) = [r for r in canvas.calls(ITEM_3004) if r.method == "PUT"]
    assert form(item_put) == [("module_item[completion_requirement][type]", "min_score"),
                              ("module_item[completion_requirement][min_score]", "6")]
    assert result.remote_id == "202"
    assert result.detail == {"prerequisite_module_ids": ["201"], "item_id": "3004", "min_score": 6.0}


def test_gate_write_refuses_a_prerequisite_that_comes_later(canvas: CanvasMock, make_connector: Make,
                                                            rsps: responses.RequestsMock) -> None:
    canvas.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])

    with pytest.raises(RemoteRejected, match="prerequisites to come first"):
        make_connector().push(GateWrite(class_sourced_id="101", module_sourced_id="201",
                                        prerequisite_module_sourced_ids=("202",)))
    assert not [c for c in rsps.calls if c.request.method == "PUT"]


def test_gate_write_clears_prerequisites_with_a_blank_value(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])
    cleared = {**fixture("module_202_updated.json"), "prerequisite_module_ids": []}
    canvas.json(responses.PUT, MODULE_202, cleared)

    make_connector().push(GateWrite(class_sourced_id="101", module_sourced_id="202",
                                    prerequisite_module_sourced_ids=()))

    (put,) = [r for r in canvas.calls(MODULE_202) if r.method == "PUT"]
    assert form(put) == [("module[prerequisite_module_ids]", "")]


def test_gate_write_detects_min_score_ignored_on_a_non_scoreable_item(canvas: CanvasMock,
                                                                      make_connector: Make) -> None:
    modules = fixture("modules_101.json")
    external = {**fixture("module_item_external_tool_updated.json"), "type": "Assignment", "content_id": 805}
    modules[1]["items"] = [external]
    canvas.pages("/api/v1/courses/101/modules", [modules])
    canvas.json(responses.PUT, MODULE_202, fixture("module_202_updated.json"))
    canvas.json(responses.PUT, "/api/v1/courses/101/modules/202/items/3010",
                fixture("module_item_external_tool_updated.json"))

    with pytest.raises(RemoteRejected, match="ignored the min_score"):
        make_connector().push(GateWrite(class_sourced_id="101", module_sourced_id="202",
                                        prerequisite_module_sourced_ids=("201",),
                                        check_activity_sourced_id="805", min_score=8.0))


def test_gate_write_for_unknown_module_is_not_found(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])
    with pytest.raises(NotFound):
        make_connector().push(GateWrite(class_sourced_id="101", module_sourced_id="999",
                                        prerequisite_module_sourced_ids=("201",)))


def test_gate_write_detects_canvas_dropping_a_prerequisite(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.pages("/api/v1/courses/101/modules", [fixture("modules_101.json")])
    dropped = {**fixture("module_202_updated.json"), "prerequisite_module_ids": []}
    canvas.json(responses.PUT, MODULE_202, dropped)
    with pytest.raises(RemoteRejected, match="kept prerequisites"):
        make_connector().push(GateWrite(class_sourced_id="101", module_sourced_id="202",
                                        prerequisite_module_sourced_ids=("201",)))


# --------------------------------------------------------------------------- scores


def score(**kw: object) -> ScoreWrite:
    values: dict[str, object] = {"class_sourced_id": "101", "activity_sourced_id": "802",
                                 "person_sourced_id": "601", "score_given": 8.0, "score_maximum": 10.0,
                                 "timestamp": datetime(2024, 9, 12, 15, 0, tzinfo=UTC)}
    values.update(kw)
    return ScoreWrite(**values)  # type: ignore[arg-type]


def test_score_write_posts_grade_scaled_to_assignment_points(canvas: CanvasMock, make_connector: Make,
                                                             sleeps: list[float]) -> None:
    url = "/api/v1/courses/101/assignments/802/submissions/601"
    canvas.json(responses.GET, "/api/v1/courses/101/assignments/802", fixture("assignment_802.json"))
    canvas.json(responses.PUT, url, fixture("submission_graded.json"), status=502)
    canvas.json(responses.PUT, url, fixture("submission_graded.json"))
    connector = make_connector()

    result = connector.push(score())
    connector.push(score(score_given=9.0))

    puts = [r for r in canvas.calls(url) if r.method == "PUT"]
    assert [form(p) for p in puts] == [[("submission[posted_grade]", "16")]] * 2 + [
        [("submission[posted_grade]", "18")]]  # the 502 was retried: a PUT of a grade is idempotent
    assert result.remote_id == "21" and result.detail["score"] == 16.0
    assert len(canvas.calls("/api/v1/courses/101/assignments/802")) - len(puts) == 1  # points fetched once


def test_score_write_with_comment_checks_existing_comments(canvas: CanvasMock, make_connector: Make) -> None:
    url = "/api/v1/courses/101/assignments/802/submissions/601"
    canvas.json(responses.GET, "/api/v1/courses/101/assignments/802", fixture("assignment_802.json"))
    with_comment = {**fixture("submission_graded.json"), "submission_comments": [
        {"id": 1, "author_id": 501, "author_name": "Maria Lopez", "comment": "Mastered: solving equations",
         "created_at": "2024-09-12T15:00:00Z", "edited_at": None}]}
    canvas.json(responses.GET, url, fixture("submission_graded.json"))
    canvas.json(responses.GET, url, with_comment)
    canvas.json(responses.PUT, url, fixture("submission_graded.json"))
    connector = make_connector()

    connector.push(score(comment="Mastered: solving equations"))
    connector.push(score(comment="Mastered: solving equations"))

    first, second = [r for r in canvas.calls(url) if r.method == "PUT"]
    assert ("comment[text_comment]", "Mastered: solving equations") in form(first)
    assert form(second) == [("submission[posted_grade]", "16")]  # already there: not posted twice


def test_score_write_with_comment_is_not_resent_on_failure(canvas: CanvasMock, make_connector: Make) -> None:
    url = "/api/v1/courses/101/assignments/802/submissions/601"
    canvas.json(responses.GET, "/api/v1/courses/101/assignments/802", fixture("assignment_802.json"))
    canvas.json(responses.GET, url, fixture("submission_graded.json"))
    canvas.json(responses.PUT, url, {"errors": [{"message": "internal"}]}, status=500)
    with pytest.raises(UpstreamError):
        make_connector().push(score(comment="Great work"))
    assert len([r for r in canvas.calls(url) if r.method == "PUT"]) == 1


def test_score_write_clears_grade_when_score_is_none(canvas: CanvasMock, make_connector: Make) -> None:
    url = "/api/v1/courses/101/assignments/802/submissions/601"
    canvas.json(responses.PUT, url, fixture("submission_graded.json"))
    make_connector().push(score(score_given=None))
    (put,) = canvas.calls(url)
    assert form(put) == [("submission[posted_grade]", "")]


# --------------------------------------------------------------------------- messages


def test_message_write_sends_private_conversations(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.json(responses.POST, "/api/v1/conversations", fixture("conversations_created.json"))

    result = make_connector().push(MessageWrite(recipient_sourced_ids=("601",), subject="Pace check-in",
                                                body="You are two activities behind the class pace.",
                                                class_sourced_id="101"))

    (post,) = canvas.calls("/api/v1/conversations")
    assert form(post) == [("recipients[]", "601"), ("subject", "Pace check-in"),
                          ("body", "You are two activities behind the class pace."),
                          ("group_conversation", "false"), ("context_code", "course_101")]
    assert result.remote_id == "2001" and result.detail["conversation_ids"] == ["2001"]


def test_message_write_to_more_than_100_people_is_a_bulk_message(canvas: CanvasMock,
                                                                  make_connector: Make) -> None:
    canvas.json(responses.POST, "/api/v1/conversations", [])
    recipients = tuple(str(600 + i) for i in range(101))
    make_connector().push(MessageWrite(recipient_sourced_ids=recipients, subject="s" * 300, body="b"))
    sent = dict(form(canvas.calls("/api/v1/conversations")[0]))
    fields = form(canvas.calls("/api/v1/conversations")[0])
    assert [v for k, v in fields if k == "recipients[]"] == list(recipients)
    assert sent["group_conversation"] == "true" and sent["bulk_message"] == "true"
    assert len(sent["subject"]) == 255 and "context_code" not in sent


def test_message_post_is_not_retried(canvas: CanvasMock, make_connector: Make) -> None:
    canvas.json(responses.POST, "/api/v1/conversations", {"errors": [{"message": "down"}]}, status=503)
    with pytest.raises(UpstreamError):
        make_connector().push(MessageWrite(recipient_sourced_ids=("601",), subject="s", body="b"))
    assert len(canvas.calls("/api/v1/conversations")) == 1


# --------------------------------------------------------------------------- configuration and auth


def test_from_config_builds_a_connector() -> None:
    connector = CanvasConnector.from_config({
        "name": "riverside-canvas", "kind": "canvas", "district": "riverside", "schedule": "0 2 * * *",
        "base_url": BASE, "token": "t", "account_id": 1, "concurrency": 4, "per_page": 50})
    assert connector.name == "riverside-canvas" and connector.account_id == "1"
    assert connector.concurrency == 4 and connector.client.per_page == 50


@pytest.mark.parametrize("change, where", [
    ({"token": None}, "token"),
    ({"base_url": "riverside.instructure.com"}, "base_url"),
    ({"account_id": None}, "account_id"),
    ({"concurrency": 0}, "concurrency"),
    ({"token": None, "oauth": {"client_id": "1", "client_secret": "s"}}, "oauth.refresh_token"),
])
def test_from_config_names_the_bad_key(change: dict[str, object], where: str) -> None:
    cfg = {"name": "riverside-canvas", "kind": "canvas", "base_url": BASE, "token": "t", "account_id": "1"}
    cfg.update(change)
    with pytest.raises(ConfigurationError, match=where):
        CanvasConnector.from_config(cfg)


def test_refused_refresh_token_is_an_auth_error(canvas: CanvasMock, make_connector: Make,
                                                rsps: responses.RequestsMock) -> None:
    rsps.add(responses.POST, f"{BASE}/login/oauth2/token", json=fixture("error_invalid_grant.json"),
             status=400)
    oauth = {"client_id": "1", "client_secret": "dev-key-secret", "refresh_token": "7~refresh"}
    with pytest.raises(AuthError, match="refresh_token not found") as err:
        make_connector(token=None, oauth=oauth).client.get_account("1")
    assert "dev-key-secret" not in str(err.value) and "7~refresh" not in str(err.value)
