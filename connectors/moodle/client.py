"""Moodle Web Services over REST: PHP-style parameters, errors hidden in HTTP 200 bodies, warnings.

Every call is ``POST {base}/webservice/rest/server.php`` with ``wstoken``, ``wsfunction`` and
``moodlewsrestformat=json`` in the form body (never in the URL, so the token stays out of logs and
proxies). Moodle's classic REST server answers failures with HTTP 200 and
``{"exception", "errorcode", "message"}``; ``raise_for_body`` turns those into our typed errors with a
message that names the Moodle admin setting to change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from connectors.base import (
    AuthError,
    ConfigurationError,
    ConnectorError,
    NotFound,
    RemoteRejected,
    UpstreamError,
)
from connectors.http import HttpClient, redact
from connectors.moodle.schemas import MoodleWarning, SiteInfo, SiteInfoSchema, WarningSchema

log = logging.getLogger(__name__)

REST_PATH = "webservice/rest/server.php"

_WS_ADMIN = "Site administration → Server → Web services"

# errorcode → (error class, what to fix); ``{function}`` is filled in.
_ERRORS: dict[str, tuple[type[ConnectorError], str]] = {
    "invalidtoken": (
        AuthError,
        "Moodle does not recognise the web service token (deleted, expired or from another site). "
        f"Create one under {_WS_ADMIN} → Manage tokens and update the source's token.",
    ),
    "accessexception": (
        AuthError,
        "the token may not call {function}. Add the function to the token's external service "
        f"({_WS_ADMIN} → External services → Functions) and check the token's IP restriction and "
        "'Valid until' date (Manage tokens).",
    ),
    "nopermissions": (
        AuthError,
        "the web service user lacks a capability {function} needs. Grant it to that user's role under "
        "Site administration → Users → Permissions → Define roles.",
    ),
    "nopermissiontoviewgrades": (
        AuthError,
        "the web service user may not edit grades ({function}). Give its role moodle/grade:edit "
        "(Site administration → Users → Permissions → Define roles).",
    ),
    "requireloginerror": (
        AuthError,
        "the web service user cannot enter this course. Enrol it, or give it a system role that can see "
        "every course (moodle/course:view and moodle/course:viewhiddencourses).",
    ),
    "errorcoursecontextnotvalid": (
        AuthError,
        "the web service user cannot enter this course. Enrol it, or give it a system role that can see "
        "every course (moodle/course:view and moodle/course:viewhiddencourses).",
    ),
    "webservicesnotenabled": (
        ConfigurationError,
        "web services are switched off. Enable them under Site administration → Advanced features → "
        f"Enable web services, and the REST protocol under {_WS_ADMIN} → Manage protocols.",
    ),
    "servicenotavailable": (
        ConfigurationError,
        "the token's external service is disabled or was deleted. Enable it under "
        f"{_WS_ADMIN} → External services.",
    ),
    "competenciesarenotenabled": (
        ConfigurationError,
        "competencies are switched off. Enable them under Site administration → Advanced features → "
        "Enable competencies.",
    ),
    "invalidrecord": (NotFound, "the record {function} asked for does not exist."),
    "invalidrecordunknown": (NotFound, "the record {function} asked for does not exist."),
    "invalidcoursemodule": (NotFound, "the course module does not exist."),
    "invalidcourseid": (NotFound, "the course does not exist."),
    "invaliduser": (NotFound, "the user does not exist."),
    "invalidparameter": (RemoteRejected, "Moodle refused the parameters of {function}."),
    "errorinvalidparam": (RemoteRejected, "Moodle refused the parameters of {function}."),
    "dmlreadexception": (UpstreamError, "Moodle's database failed while running {function}."),
    "dmlwriteexception": (UpstreamError, "Moodle's database failed while running {function}."),
    "dbconnectionfailed": (UpstreamError, "Moodle could not reach its database."),
    "sitemaintenance": (UpstreamError, "the site is in maintenance mode."),
}

#: Functions never retried: repeating one after a timeout could deliver it twice.
WRITE_FUNCTIONS = frozenset({
    "core_message_send_instant_messages",
    "core_message_send_messages_to_conversation",
})


def encode_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten nested dicts/lists into PHP-style form pairs: ``{"a": [{"b": 1}]}`` → ``a[0][b]=1``."""
    pairs: list[tuple[str, str]] = []

    def walk(key: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}[{k}]", v)
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(f"{key}[{i}]", v)
        elif isinstance(value, bool):
            pairs.append((key, "1" if value else "0"))
        else:
            pairs.append((key, str(value)))

    for name, value in params.items():
        walk(name, value)
    return pairs


def options(**values: Any) -> list[dict[str, Any]]:
    """Build Moodle's ``options[]`` list of ``{name, value}`` pairs, skipping ``None`` values."""
    return [{"name": k, "value": v} for k, v in values.items() if v is not None]


def error_from_body(body: Mapping[str, Any], *, function: str, source: str) -> ConnectorError:
    """Translate a Moodle ``{"exception", "errorcode", "message"}`` body into a typed error."""
    code = str(body.get("errorcode") or "")
    message = redact(str(body.get("message") or body.get("exception") or "unknown error"))
    debuginfo = body.get("debuginfo")
    exception = str(body.get("exception") or "")
    if code in ("invalidrecord", "invalidrecordunknown") and "external_functions" in f"{message} {debuginfo}":
        cls: type[ConnectorError] = ConfigurationError
        hint = (f"this Moodle has no web service function {function} (older Moodle, or the plugin that "
                "provides it is not installed).")
    elif code in _ERRORS:
        cls, hint = _ERRORS[code]
        hint = hint.format(function=function)
    elif exception == "invalid_parameter_exception":
        cls, hint = RemoteRejected, f"Moodle refused the parameters of {function}."
    elif exception in ("dml_read_exception", "dml_write_exception", "dml_connection_exception"):
        cls, hint = UpstreamError, f"Moodle's database failed while running {function}."
    else:
        cls, hint = RemoteRejected, ""
    text = f"{source}: Moodle {function} failed ({code or exception}): {message}"
    if hint:
        text += f" — {hint}"
    if debuginfo:
        text += f" [debug: {redact(str(debuginfo))[:300]}]"
    err = cls(text, source=source)
    err.errorcode = code  # type: ignore[attr-defined]
    return err


class MoodleClient:
    """Calls Moodle web service functions through the shared HTTP layer."""

    def __init__(self, http: HttpClient, token: str) -> None:
        if not token:
            raise ConfigurationError(f"{http.source}: the Moodle web service token is empty",
                                     source=http.source)
        self.http = http
        self.source = http.source
        self._token = token
        self._site_info: SiteInfo | None = None
        self._functions_known = False
        self.warnings: list[MoodleWarning] = []

    # ------------------------------------------------------------------ transport

    def call(self, function: str, params: Mapping[str, Any] | None = None, *,
             retry: bool | None = None) -> Any:
        """Call one function and return its decoded result; raise a typed error for an error body.

        :calls: POST /webservice/rest/server.php
        """
        if retry is None:
            retry = function not in WRITE_FUNCTIONS
        form = [("wstoken", self._token), ("wsfunction", function), ("moodlewsrestformat", "json")]
        form += encode_params(params or {})
        response = self.http.request("POST", REST_PATH, data=form, retry=retry)
        try:
            body = response.json()
        except ValueError as exc:
            snippet = redact(response.text.strip()[:200])
            raise UpstreamError(
                f"{self.source}: Moodle {function} did not answer JSON ({snippet!r}) — check that the REST "
                "protocol is enabled (Site administration → Server → Web services → Manage protocols) "
                "and that base_url points at the Moodle site root",
                source=self.source,
                status=response.status_code,
            ) from exc
        if isinstance(body, Mapping) and body.get("exception"):
            raise error_from_body(body, function=function, source=self.source)
        if isinstance(body, Mapping):
            self._note_warnings(function, body.get("warnings"))
        return body

    def _note_warnings(self, function: str, raw: Any) -> None:
        if not raw or not isinstance(raw, list):
            return
        schema = WarningSchema()
        for item in raw:
            try:
                data = schema.load(item)
            except Exception:  # noqa: BLE001 - a malformed warning is still worth reporting
                data = {"item": None, "itemid": None, "warningcode": None, "message": str(item)[:300]}
            warning = MoodleWarning(function=function, **data)
            self.warnings.append(warning)
            log.warning("%s: Moodle %s warning %s (%s %s): %s", self.source, function, warning.warningcode,
                        warning.item, warning.itemid, warning.message)

    # ------------------------------------------------------------------ feature detection

    def site_info(self) -> SiteInfo:
        """Return the site, the token's user and the functions it may call (cached).

        :calls: POST /webservice/rest/server.php core_webservice_get_site_info
        """
        if self._site_info is None:
            body = self.call("core_webservice_get_site_info")
            self._site_info = SiteInfoSchema().load(body)
            self._functions_known = bool(self._site_info.functions)
        return self._site_info

    def has_function(self, function: str) -> bool:
        """Return whether the token's service lists ``function`` (True when Moodle does not say)."""
        try:
            info = self.site_info()
        except (AuthError, RemoteRejected) as exc:
            if isinstance(exc, AuthError) and getattr(exc, "errorcode", "") == "invalidtoken":
                raise
            return True
        return function in info.functions if self._functions_known else True

    def require_function(self, function: str, purpose: str) -> None:
        """Raise ConfigurationError naming the admin setting when ``function`` is not in the service."""
        if not self.has_function(function):
            raise ConfigurationError(
                f"{self.source}: {purpose} needs the Moodle function {function}; add it to the token's "
                "external service (Site administration → Server → Web services → External services → "
                "Functions)",
                source=self.source,
            )

    # ------------------------------------------------------------------ reads

    def get_courses_by_field(self, field: str = "", value: str | int = "") -> Any:
        """Return ``{courses, warnings}`` for courses matching ``field``/``value`` (all when blank).

        :calls: POST /webservice/rest/server.php core_course_get_courses_by_field
        """
        return self.call("core_course_get_courses_by_field", {"field": field, "value": value})

    def get_enrolled_users(self, course_id: int, *, limit_from: int, limit_number: int,
                           only_active: bool = True, user_fields: Sequence[str] | None = None) -> Any:
        """Return one page of a course's enrolled users.

        :calls: POST /webservice/rest/server.php core_enrol_get_enrolled_users
        """
        opts = options(
            limitfrom=limit_from,
            limitnumber=limit_number,
            onlyactive=1 if only_active else None,
            userfields=",".join(user_fields) if user_fields else None,
        )
        return self.call("core_enrol_get_enrolled_users", {"courseid": course_id, "options": opts})

    def get_contents(self, course_id: int, *, exclude_contents: bool = True) -> Any:
        """Return a course's sections with their modules (and raw availability JSON for editors).

        :calls: POST /webservice/rest/server.php core_course_get_contents
        """
        opts = options(excludecontents=1 if exclude_contents else None)
        return self.call("core_course_get_contents", {"courseid": course_id, "options": opts})

    def get_activities_completion_status(self, course_id: int, user_id: int) -> Any:
        """Return ``{statuses, warnings}``: one user's completion state of each tracked activity.

        :calls: POST /webservice/rest/server.php core_completion_get_activities_completion_status
        """
        return self.call("core_completion_get_activities_completion_status",
                         {"courseid": course_id, "userid": user_id})

    def get_grade_items(self, course_id: int, user_id: int = 0) -> Any:
        """Return ``{usergrades, warnings}``: grade items with each user's grade (``user_id=0``: everyone).

        :calls: POST /webservice/rest/server.php gradereport_user_get_grade_items
        """
        return self.call("gradereport_user_get_grade_items", {"courseid": course_id, "userid": user_id})

    def get_ltis_by_courses(self, course_ids: Iterable[int]) -> Any:
        """Return ``{ltis, warnings}``: the courses' LTI activities (``toolurl`` only for course editors).

        :calls: POST /webservice/rest/server.php mod_lti_get_ltis_by_courses
        """
        return self.call("mod_lti_get_ltis_by_courses", {"courseids": list(course_ids)})

    def list_course_competencies(self, course_id: int) -> Any:
        """Return ``[{competency, coursecompetency}]`` for a course.

        :calls: POST /webservice/rest/server.php core_competency_list_course_competencies
        """
        return self.call("core_competency_list_course_competencies", {"id": course_id})

    def list_course_module_competencies(self, cmid: int) -> Any:
        """Return ``[{competency, coursemodulecompetency}]`` linked to one activity.

        :calls: POST /webservice/rest/server.php core_competency_list_course_module_competencies
        """
        return self.call("core_competency_list_course_module_competencies", {"cmid": cmid})

    def read_competency_framework(self, framework_id: int) -> Any:
        """Return one competency framework (scale and scale configuration).

        :calls: POST /webservice/rest/server.php core_competency_read_competency_framework
        """
        return self.call("core_competency_read_competency_framework", {"id": framework_id})

    def get_scale_values(self, scale_id: int) -> Any:
        """Return ``[{id, name}]`` of a scale, ids 1-based in scale order.

        :calls: POST /webservice/rest/server.php core_competency_get_scale_values
        """
        return self.call("core_competency_get_scale_values", {"scaleid": scale_id})

    def user_competency_summary_in_course(self, user_id: int, competency_id: int, course_id: int) -> Any:
        """Return one user's rating of one competency in a course, with evidence.

        :calls: POST /webservice/rest/server.php tool_lp_data_for_user_competency_summary_in_course
        """
        return self.call("tool_lp_data_for_user_competency_summary_in_course",
                         {"userid": user_id, "competencyid": competency_id, "courseid": course_id})

    # ------------------------------------------------------------------ writes

    def send_instant_messages(self, messages: Iterable[Mapping[str, Any]]) -> Any:
        """Send messages as the token's user; never retried (a repeat would be a second message).

        :calls: POST /webservice/rest/server.php core_message_send_instant_messages
        """
        return self.call("core_message_send_instant_messages", {"messages": list(messages)}, retry=False)

    def update_grades(self, *, source: str, course_id: int, component: str, cmid: int, item_number: int,
                      grades: Iterable[Mapping[str, Any]]) -> Any:
        """Set raw grades on an activity's grade item; returns 0 on success.

        Setting a grade is idempotent (the same value twice leaves one grade), so it is retried.

        :calls: POST /webservice/rest/server.php core_grades_update_grades
        """
        params = {
            "source": source,
            "courseid": course_id,
            "component": component,
            "activityid": cmid,
            "itemnumber": item_number,
            "grades": list(grades),
        }
        return self.call("core_grades_update_grades", params, retry=True)
