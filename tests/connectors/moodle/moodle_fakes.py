"""A stand-in for one Moodle site's REST endpoint, answering per ``wsfunction`` with named fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import responses

BASE = "https://moodle.north.example"
ENDPOINT = f"{BASE}/webservice/rest/server.php"
TOKEN = "0123456789abcdef0123456789abcdef"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "moodle"

UNKNOWN_FUNCTION = {
    "exception": "dml_missing_record_exception",
    "errorcode": "invalidrecord",
    "message": "Can't find data record in database table external_functions.",
}


def fixture(name: str) -> Any:
    """Load a named Moodle payload from tests/fixtures/moodle."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


class FakeMoodle:
    """Dispatch ``POST /webservice/rest/server.php`` on ``wsfunction``; record every call's form fields."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.handlers: dict[str, Any] = {}
        self.queues: dict[str, list[Any]] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.raw_bodies: list[str] = []
        self.urls: list[str] = []
        rsps.add_callback(responses.POST, ENDPOINT, callback=self._handle)

    def on(self, function: str, answer: Any) -> None:
        """Answer ``function`` with a body or ``callable(params)``.

        A body may be ``(status, body)`` to send a non-200 status; ``str`` bodies are sent verbatim.
        """
        self.handlers[function] = answer

    def queue(self, function: str, *answers: Any) -> None:
        """Answer the next calls of ``function`` in turn; the last answer repeats."""
        self.queues[function] = list(answers)

    def standard_site(self) -> FakeMoodle:
        """Serve the two-course site used across the tests."""
        self.on("core_webservice_get_site_info", fixture("site_info"))
        self.on("core_course_get_courses_by_field", fixture("courses"))
        self.on("core_enrol_get_enrolled_users", self._enrolled)
        self.on("core_course_get_contents", lambda p: fixture(f"contents_{p['courseid']}"))
        self.on("gradereport_user_get_grade_items", lambda p: fixture(f"grade_items_{p['courseid']}"))
        self.on("core_competency_list_course_competencies",
                lambda p: fixture("course_competencies_5") if p["id"] == "5" else [])
        self.on("core_competency_read_competency_framework",
                lambda p: fixture(f"competency_framework_{p['id']}"))
        self.on("core_competency_get_scale_values", lambda p: fixture(f"scale_values_{p['scaleid']}"))
        self.on("core_competency_list_course_module_competencies",
                lambda p: fixture("module_competencies_511") if p["cmid"] == "511" else [])
        self.on("tool_lp_data_for_user_competency_summary_in_course", self._summary)
        return self

    @staticmethod
    def _enrolled(params: dict[str, str]) -> Any:
        if params["courseid"] == "6":
            return fixture("enrolled_users_6")
        start = int(params["options[0][value]"])
        return {0: fixture("enrolled_users_5_page1"), 2: fixture("enrolled_users_5_page2")}.get(start, [])

    @staticmethod
    def _summary(params: dict[str, str]) -> Any:
        if (params["userid"], params["competencyid"]) == ("101", "31"):
            return fixture("user_competency_summary_101_31")
        return fixture("user_competency_summary_unrated")

    def functions(self) -> list[str]:
        return [fn for fn, _ in self.calls]

    def params_of(self, function: str) -> list[dict[str, str]]:
        return [p for fn, p in self.calls if fn == function]

    def _handle(self, request: Any) -> tuple[int, dict[str, str], str]:
        body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
        self.raw_bodies.append(body)
        self.urls.append(request.url)
        params = dict(parse_qsl(body, keep_blank_values=True))
        function = params.get("wsfunction", "")
        self.calls.append((function, params))
        handler = self.handlers.get(function)
        queued = self.queues.get(function)
        if queued:
            answer: Any = queued.pop(0) if len(queued) > 1 else queued[0]
        elif handler is None:
            answer = UNKNOWN_FUNCTION
        elif callable(handler):
            answer = handler(params)
        else:
            answer = handler
        status = 200
        if isinstance(answer, tuple):
            status, answer = answer
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return status, {"Content-Type": "application/json"}, text
