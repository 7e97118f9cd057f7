"""Marshmallow schemas for Moodle Web Services payloads, loaded into small frozen records.

Each list a function returns is validated one element at a time (``load_each``), so one malformed
course, user or grade item becomes a ``Rejected`` in the stream while the rest of the list goes on.
Field sets follow Moodle 3.9–4.x; everything not needed is excluded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, pre_load

from connectors.base import Rejected, first_error

T = TypeVar("T")


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE


def _text(**kw: Any) -> fields.String:
    return fields.String(load_default=None, allow_none=True, **kw)


def _int(**kw: Any) -> fields.Integer:
    return fields.Integer(load_default=None, allow_none=True, **kw)


def _float(**kw: Any) -> fields.Float:
    return fields.Float(load_default=None, allow_none=True, **kw)


# --------------------------------------------------------------------------- site, warnings, errors


@dataclass(frozen=True, slots=True)
class SiteInfo:
    sitename: str
    username: str
    userid: int
    release: str | None
    version: str | None
    functions: frozenset[str]


class _FunctionSchema(_Base):
    name = fields.String(required=True)
    version = _text()


class SiteInfoSchema(_Base):
    sitename = fields.String(load_default="")
    username = fields.String(load_default="")
    userid = fields.Integer(required=True)
    release = _text()
    version = _text()
    functions = fields.List(fields.Nested(_FunctionSchema), load_default=list)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> SiteInfo:
        names = frozenset(f["name"] for f in data.pop("functions"))
        return SiteInfo(functions=names, **data)


@dataclass(frozen=True, slots=True)
class MoodleWarning:
    """One entry of a function's ``warnings[]``: Moodle skipped something instead of failing."""

    function: str
    item: str | None
    itemid: int | None
    warningcode: str | None
    message: str


class WarningSchema(_Base):
    item = _text()
    itemid = _int()
    warningcode = _text()
    message = fields.String(load_default="")


# --------------------------------------------------------------------------- courses and users


@dataclass(frozen=True, slots=True)
class MoodleCourse:
    id: int
    fullname: str
    shortname: str
    idnumber: str | None
    categoryid: int | None
    format: str | None
    visible: bool
    startdate: int | None
    enddate: int | None


class CourseSchema(_Base):
    id = fields.Integer(required=True)
    fullname = fields.String(required=True)
    shortname = fields.String(load_default="")
    idnumber = _text()
    categoryid = _int()
    format = _text()
    visible = fields.Boolean(load_default=True)
    startdate = _int()
    enddate = _int()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> MoodleCourse:
        data["idnumber"] = data["idnumber"] or None
        return MoodleCourse(**data)


@dataclass(frozen=True, slots=True)
class MoodleUser:
    id: int
    username: str | None
    firstname: str
    lastname: str
    email: str | None
    idnumber: str | None
    suspended: bool
    roles: tuple[str, ...]  # role shortnames in the course


class _RoleSchema(_Base):
    roleid = _int()
    name = _text()
    shortname = fields.String(required=True)


class EnrolledUserSchema(_Base):
    id = fields.Integer(required=True)
    username = _text()
    firstname = fields.String(load_default="")
    lastname = fields.String(load_default="")
    email = _text()
    idnumber = _text()
    suspended = fields.Boolean(load_default=False)
    roles = fields.List(fields.Nested(_RoleSchema), load_default=list)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> MoodleUser:
        data["roles"] = tuple(r["shortname"] for r in data["roles"])
        data["idnumber"] = data["idnumber"] or None
        data["email"] = data["email"] or None
        return MoodleUser(**data)


# --------------------------------------------------------------------------- course contents


@dataclass(frozen=True, slots=True)
class MoodleModule:
    """A course module (``cmid``) inside a section."""

    id: int
    name: str
    instance: int | None
    modname: str
    visible: bool
    completion: int
    availability: str | None  # raw restrict-access JSON (returned to editors only)
    dates: tuple[tuple[str, int], ...]  # (dataid, unix time), e.g. ("duedate", 1714000000)


@dataclass(frozen=True, slots=True)
class MoodleSection:
    id: int
    name: str
    section: int
    visible: bool
    modules: tuple[MoodleModule, ...]


class _DateSchema(_Base):
    dataid = _text()
    label = _text()
    timestamp = _int()


class ModuleSchema(_Base):
    id = fields.Integer(required=True)
    name = fields.String(load_default="")
    instance = _int()
    modname = fields.String(required=True)
    visible = fields.Boolean(load_default=True)
    completion = fields.Integer(load_default=0, allow_none=True)
    availability = _text()
    dates = fields.List(fields.Nested(_DateSchema), load_default=list)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> MoodleModule:
        data["dates"] = tuple(
            (d["dataid"], d["timestamp"]) for d in data["dates"] if d.get("dataid") and d.get("timestamp")
        )
        data["completion"] = data["completion"] or 0
        return MoodleModule(**data)


class SectionSchema(_Base):
    id = fields.Integer(required=True)
    name = fields.String(load_default="")
    section = fields.Integer(required=True)
    visible = fields.Boolean(load_default=True)
    modules = fields.List(fields.Raw(), load_default=list)  # validated one by one

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return data


# --------------------------------------------------------------------------- completion


@dataclass(frozen=True, slots=True)
class CompletionStatus:
    cmid: int
    modname: str | None
    instance: int | None
    state: int  # 0 incomplete, 1 complete, 2 complete-pass, 3 complete-fail
    timecompleted: int | None
    tracking: int  # 0 none, 1 manual, 2 automatic
    overrideby: int | None


class CompletionStatusSchema(_Base):
    cmid = fields.Integer(required=True)
    modname = _text()
    instance = _int()
    state = fields.Integer(required=True)
    timecompleted = _int()
    tracking = fields.Integer(load_default=0)
    overrideby = _int()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> CompletionStatus:
        data["timecompleted"] = data["timecompleted"] or None
        return CompletionStatus(**data)


# --------------------------------------------------------------------------- grades


@dataclass(frozen=True, slots=True)
class GradeItem:
    """One grade item as seen in one user's grade report row (``graderaw`` is that user's grade)."""

    id: int
    itemname: str | None
    itemtype: str  # course | category | mod | manual
    itemmodule: str | None
    iteminstance: int | None
    itemnumber: int | None
    idnumber: str | None
    cmid: int | None
    outcomeid: int | None
    scaleid: int | None
    grademin: float | None
    grademax: float | None
    graderaw: float | None
    gradedatesubmitted: int | None
    gradedategraded: int | None
    gradeislocked: bool
    feedback: str | None


@dataclass(frozen=True, slots=True)
class UserGrades:
    courseid: int
    userid: int
    useridnumber: str | None
    gradeitems: tuple[Any, ...]  # raw items, validated one by one with GradeItemSchema


class GradeItemSchema(_Base):
    id = fields.Integer(required=True)
    itemname = _text()
    itemtype = fields.String(required=True)
    itemmodule = _text()
    iteminstance = _int()
    itemnumber = _int()
    idnumber = _text()
    cmid = _int()
    outcomeid = _int()
    scaleid = _int()
    grademin = _float()
    grademax = _float()
    graderaw = _float()
    gradedatesubmitted = _int()
    gradedategraded = _int()
    gradeislocked = fields.Boolean(load_default=False)
    feedback = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> GradeItem:
        data["idnumber"] = data["idnumber"] or None
        data["feedback"] = data["feedback"] or None
        return GradeItem(**data)


class UserGradesSchema(_Base):
    courseid = fields.Integer(required=True)
    userid = fields.Integer(required=True)
    useridnumber = _text()
    gradeitems = fields.List(fields.Raw(), load_default=list)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UserGrades:
        data["gradeitems"] = tuple(data["gradeitems"])
        data["useridnumber"] = data["useridnumber"] or None
        return UserGrades(**data)


# --------------------------------------------------------------------------- LTI activities


@dataclass(frozen=True, slots=True)
class LtiInstance:
    """One mod_lti activity (``mod_lti_get_ltis_by_courses``); the tool fields need a course editor's token."""

    id: int  # the instance: a grade item's ``iteminstance``
    coursemodule: int  # the cmid: a grade item's ``cmid``
    course: int
    name: str
    toolurl: str | None
    securetoolurl: str | None
    instructorcustomparameters: str | None  # "name=value" lines (the content item's custom parameters)


class LtiInstanceSchema(_Base):
    id = fields.Integer(required=True)
    coursemodule = fields.Integer(required=True)
    course = fields.Integer(required=True)
    name = fields.String(load_default="")
    toolurl = _text()
    securetoolurl = _text()
    instructorcustomparameters = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> LtiInstance:
        return LtiInstance(**data)


# --------------------------------------------------------------------------- competencies


@dataclass(frozen=True, slots=True)
class MoodleCompetency:
    id: int
    shortname: str
    idnumber: str | None
    description: str
    frameworkid: int
    scaleid: int | None  # None: inherits the framework's scale
    scaleconfiguration: str | None


class CompetencySchema(_Base):
    id = fields.Integer(required=True)
    shortname = fields.String(required=True)
    idnumber = _text()
    description = fields.String(load_default="", allow_none=True)
    competencyframeworkid = fields.Integer(required=True, data_key="competencyframeworkid")
    scaleid = _int()
    scaleconfiguration = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> MoodleCompetency:
        return MoodleCompetency(
            id=data["id"],
            shortname=data["shortname"],
            idnumber=data["idnumber"] or None,
            description=data["description"] or "",
            frameworkid=data["competencyframeworkid"],
            scaleid=data["scaleid"] or None,
            scaleconfiguration=data["scaleconfiguration"] or None,
        )


class CourseCompetencySchema(_Base):
    """One element of ``core_competency_list_course_competencies``: ``{competency, coursecompetency}``."""

    competency = fields.Nested(CompetencySchema, required=True)


@dataclass(frozen=True, slots=True)
class Framework:
    id: int
    shortname: str
    scaleid: int
    scaleconfiguration: str | None


class FrameworkSchema(_Base):
    id = fields.Integer(required=True)
    shortname = fields.String(load_default="")
    scaleid = fields.Integer(required=True)
    scaleconfiguration = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Framework:
        return Framework(**data)


class ScaleValueSchema(_Base):
    id = fields.Integer(required=True)  # 1-based position in the scale
    name = fields.String(required=True)


@dataclass(frozen=True, slots=True)
class UserCompetencyCourse:
    userid: int
    courseid: int
    competencyid: int
    proficiency: bool | None
    grade: int | None
    gradename: str | None
    timemodified: int | None


class UserCompetencyCourseSchema(_Base):
    userid = fields.Integer(required=True)
    courseid = fields.Integer(required=True)
    competencyid = fields.Integer(required=True)
    proficiency = fields.Boolean(load_default=None, allow_none=True)
    grade = _int()
    gradename = _text()
    timemodified = _int()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UserCompetencyCourse:
        return UserCompetencyCourse(**data)


class _UserCompetencySummary(_Base):
    usercompetencycourse = fields.Nested(UserCompetencyCourseSchema, load_default=None, allow_none=True)


class UserCompetencySummaryInCourseSchema(_Base):
    """``tool_lp_data_for_user_competency_summary_in_course``: the rating sits in ``usercompetencycourse``."""

    usercompetencysummary = fields.Nested(_UserCompetencySummary, required=True)

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> UserCompetencyCourse | None:
        rating: UserCompetencyCourse | None = data["usercompetencysummary"].get("usercompetencycourse")
        return rating


class ModuleCompetencySchema(_Base):
    """One element of ``core_competency_list_course_module_competencies``."""

    competency = fields.Nested(CompetencySchema, required=True)


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class MessageResult:
    msgid: int
    clientmsgid: str | None
    errormessage: str | None


class MessageResultSchema(_Base):
    msgid = fields.Integer(required=True)
    clientmsgid = _text()
    errormessage = _text()

    @pre_load
    def blank(self, data: Any, **_: Any) -> Any:
        if isinstance(data, Mapping) and data.get("errormessage") == "":
            data = {**data, "errormessage": None}
        return data

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> MessageResult:
        return MessageResult(**data)


# --------------------------------------------------------------------------- helpers


def rejection(kind: str, record_id: object, error: ValidationError) -> Rejected:
    """Turn a validation error into the ``Rejected`` item the stream reports."""
    field, reason = first_error(error.messages)
    return Rejected(kind=kind, record_id=None if record_id is None else str(record_id), field=field,
                    reason=reason)


def load_each(schema: Schema, items: Iterable[Any], kind: str) -> Iterator[Any]:
    """Validate each element; yield the loaded object or a ``Rejected`` naming the element."""
    for raw in items:
        try:
            yield schema.load(raw)
        except ValidationError as exc:
            yield rejection(kind, raw.get("id") if isinstance(raw, Mapping) else None, exc)


def load_one(schema: Schema, raw: Any, kind: str) -> Any:
    """Validate one payload; return the loaded object or a ``Rejected``."""
    try:
        return schema.load(raw)
    except ValidationError as exc:
        return rejection(kind, raw.get("id") if isinstance(raw, Mapping) else None, exc)


def parse_json_text(value: str | None) -> Any:
    """Decode JSON embedded in a string field (availability, scaleconfiguration); None if blank or bad."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None
