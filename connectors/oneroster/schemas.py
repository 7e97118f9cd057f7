"""Marshmallow schemas for OneRoster 1.1/1.2 REST objects and CSV rows, loading into canonical records.

Each entity has a REST schema (references are ``{"href", "sourcedId", "type"}`` objects) and a CSV row schema
(references are ``...SourcedId`` columns, lists are comma-separated cells). Both share their fields and their
``post_load``, so a ``users`` object and a ``users.csv`` row become the same :class:`~connectors.base.Person`.
Attribute names are the canonical record's field names; ``data_key`` is the vendor's name, which is also the
name marshmallow reports in errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from connectors.base import (
    ACTIVE,
    TOBEDELETED,
    AcademicSession,
    Activity,
    Class,
    Course,
    Enrollment,
    Org,
    Person,
    Result,
)

# --------------------------------------------------------------------------- vocabularies

STATUSES: Mapping[str, str] = {
    "": ACTIVE,  # 1.1 bulk files leave status empty
    "active": ACTIVE,
    "tobedeleted": TOBEDELETED,
    "inactive": TOBEDELETED,  # survives in some vendors' data; treated as a soft delete
}

#: OneRoster user roles (1.1 ``users.role``, 1.2 ``roles[].role``) → Person.role.
USER_ROLES: Mapping[str, str] = {
    "student": "student",
    "teacher": "teacher",
    "parent": "parent",
    "guardian": "guardian",
    "relative": "relative",
    "aide": "aide",
    "proctor": "aide",
    "counselor": "aide",
    "staff": "aide",
    "administrator": "administrator",
    "districtAdministrator": "administrator",
    "siteAdministrator": "administrator",
    "systemAdministrator": "administrator",
    "principal": "administrator",
}

#: OneRoster enrollment roles → Enrollment.role.
ENROLLMENT_ROLES: Mapping[str, str] = {
    "student": "student",
    "teacher": "teacher",
    "administrator": "administrator",
    "proctor": "proctor",
    "aide": "aide",
    "guardian": "guardian",
    "parent": "parent",
    "relative": "guardian",
    "counselor": "aide",
    "districtAdministrator": "administrator",
    "siteAdministrator": "administrator",
    "systemAdministrator": "administrator",
    "principal": "administrator",
}

GUARDIAN_ROLES = frozenset({"parent", "guardian", "relative"})

SESSION_TYPES: Mapping[str, str] = {
    "schoolYear": "schoolYear",
    "semester": "semester",
    "term": "term",
    "gradingPeriod": "gradingPeriod",
}

SCORE_STATUSES: Mapping[str, str] = {
    "exempt": "exempt",
    "fully graded": "fully graded",
    "not submitted": "not submitted",
    "partially graded": "partially graded",
    "submitted": "submitted",
}

BOOLEANS: Mapping[str, bool] = {"true": True, "false": False}


def _folded(vocabulary: Mapping[str, str]) -> dict[str, str]:
    """Return ``vocabulary`` keyed case- and space-insensitively."""
    return {k.lower().replace(" ", ""): v for k, v in vocabulary.items() if k}


_USER_ROLES_FOLDED = _folded(USER_ROLES)
_ENROLLMENT_ROLES_FOLDED = _folded(ENROLLMENT_ROLES)
_SESSION_TYPES_FOLDED = _folded(SESSION_TYPES)
_SCORE_STATUSES_FOLDED = _folded(SCORE_STATUSES)


def lookup(vocabulary: Mapping[str, str], folded: Mapping[str, str], value: str) -> str | None:
    """Return the canonical term for ``value``, matching exactly first and then ignoring case and spaces."""
    found = vocabulary.get(value)
    if found is None:
        found = folded.get(value.strip().lower().replace(" ", "").replace("_", ""))
    return found


def normalise_status(value: str | None) -> str | None:
    """Return ``active``/``tobedeleted`` for a OneRoster status, or None if it is not one."""
    if value is None:
        return ACTIVE
    return STATUSES.get(value) or STATUSES.get(value.strip().lower())


def split_ids(value: str) -> tuple[str, ...]:
    """Split a comma-separated CSV cell (``"s1,s2"``) into its non-empty, de-duplicated parts."""
    if "," not in value:
        value = value.strip()
        return (value,) if value else ()
    parts = [part.strip() for part in value.split(",")]
    if all(parts) and len(set(parts)) == len(parts):
        return tuple(parts)
    return tuple(dict.fromkeys(p for p in parts if p))


def parse_date(value: str) -> date:
    """Parse ``YYYY-MM-DD`` (or an ISO datetime, keeping its date); raise ValueError otherwise."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        return parse_datetime(value).date()


def parse_datetime(value: str) -> datetime:
    """Parse an ISO 8601 datetime or date into an aware UTC datetime; raise ValueError otherwise."""
    text = value.strip()
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """Format ``value`` as OneRoster writes datetimes: UTC, milliseconds, ``Z``."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- fields


class Status(fields.Field):
    """``active`` | ``tobedeleted`` (``inactive`` counts as ``tobedeleted``; empty as ``active``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        status = normalise_status(value) if isinstance(value, str) else None
        if status is None:
            raise ValidationError(f"unknown status {value!r}; expected active or tobedeleted")
        return status


class Term(fields.Field):
    """A value from a closed vocabulary, matched ignoring case; unknown terms are an error."""

    def __init__(self, vocabulary: Mapping[str, str], noun: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocabulary = vocabulary
        self.folded = _folded(vocabulary)
        self.noun = noun

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        found = lookup(self.vocabulary, self.folded, value) if isinstance(value, str) else None
        if found is None:
            raise ValidationError(f"unknown {self.noun} {value!r}")
        return found


class LenientDate(fields.Field):
    """A ``YYYY-MM-DD`` date; a datetime (1.2 providers send them) keeps its date."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if isinstance(value, date) and not isinstance(value, datetime):
            return value
        try:
            return parse_date(value)
        except (TypeError, ValueError, AttributeError):
            raise ValidationError(f"not a valid date {value!r}; expected YYYY-MM-DD") from None


class LenientDateTime(fields.Field):
    """An ISO 8601 datetime (a bare date means midnight UTC), returned timezone-aware in UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        try:
            return parse_datetime(value)
        except (TypeError, ValueError, AttributeError):
            raise ValidationError(f"not a valid datetime {value!r}; expected ISO 8601") from None


class RefId(fields.Field):
    """A REST reference object ``{"href", "sourcedId", "type"}``, loaded as its sourcedId."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, Mapping):
            sourced_id = value.get("sourcedId")
            if isinstance(sourced_id, str) and sourced_id:
                return sourced_id
        raise ValidationError("expected a reference object with a sourcedId")


class RefIds(fields.Field):
    """A list of REST reference objects, loaded as a tuple of sourcedIds."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValidationError("expected a list of reference objects")
        ref = RefId()
        return tuple(dict.fromkeys(ref.deserialize(item) for item in value))


class IdList(fields.Field):
    """A CSV multi-valued cell (``"a,b"``) or a JSON list of strings, loaded as a tuple."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return split_ids(value)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(dict.fromkeys(v for v in value if v))
        raise ValidationError("expected a comma-separated list")


class Text(fields.String):
    """A string field that also accepts numbers (``schoolYear: 2026``)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        return super()._deserialize(value, attr, data, **kwargs)


class Number(fields.Float):
    """A float that also accepts numeric strings, as OneRoster 1.1 JSON sends them."""


def _bool(**kwargs: Any) -> fields.Boolean:
    return fields.Boolean(
        truthy={True, "true", "True", "TRUE", "1"}, falsy={False, "false", "False", "FALSE", "0"}, **kwargs
    )


# --------------------------------------------------------------------------- loaded shapes


@dataclass(frozen=True, slots=True)
class LoadedUser:
    """A user and the sourcedIds of their agents (a student's parents, or a parent's students)."""

    person: Person
    agents: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Category:
    """A gradebook category; it has no canonical record and only names activities."""

    sourced_id: str
    title: str
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Demographics:
    """A user's demographics, read only where the district has granted them."""

    sourced_id: str
    birth_date: date | None = None
    sex: str | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class UserRole:
    """One entry of a 1.2 user's ``roles`` (or a ``roles.csv`` row)."""

    user_sourced_id: str
    role: str
    role_type: str = "primary"
    org_sourced_id: str | None = None


# --------------------------------------------------------------------------- bases


class _Schema(Schema):
    class Meta:
        unknown = EXCLUDE

    sourced_id = fields.String(data_key="sourcedId", required=True, validate=validate.Length(min=1))
    status = Status(load_default=ACTIVE)


class _Row(_Schema):
    """A CSV row: an empty cell is a missing value."""

    @pre_load
    def _drop_empty(self, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if v != "" and v is not None}


# --------------------------------------------------------------------------- orgs


class _OrgFields(_Schema):
    name = fields.String(required=True, validate=validate.Length(min=1))
    type = fields.String(load_default="school")
    identifier = fields.String(load_default=None)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Org:
        return Org(**data)


class OrgSchema(_OrgFields):
    parent_sourced_id = RefId(data_key="parent", load_default=None, allow_none=True)


class OrgRowSchema(_OrgFields, _Row):
    parent_sourced_id = fields.String(data_key="parentSourcedId", load_default=None)


# --------------------------------------------------------------------------- academicSessions


class _SessionFields(_Schema):
    title = fields.String(required=True, validate=validate.Length(min=1))
    type = Term(SESSION_TYPES, "session type", required=True)
    start_date = LenientDate(data_key="startDate", load_default=None, allow_none=True)
    end_date = LenientDate(data_key="endDate", load_default=None, allow_none=True)
    school_year = Text(data_key="schoolYear", load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> AcademicSession:
        return AcademicSession(**data)


class AcademicSessionSchema(_SessionFields):
    parent_sourced_id = RefId(data_key="parent", load_default=None, allow_none=True)


class AcademicSessionRowSchema(_SessionFields, _Row):
    parent_sourced_id = fields.String(data_key="parentSourcedId", load_default=None)


# --------------------------------------------------------------------------- courses


class _CourseFields(_Schema):
    title = fields.String(required=True, validate=validate.Length(min=1))
    course_code = fields.String(data_key="courseCode", load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Course:
        return Course(sis_id=data["sourced_id"], **data)


class CourseSchema(_CourseFields):
    org_sourced_id = RefId(data_key="org", load_default=None, allow_none=True)


class CourseRowSchema(_CourseFields, _Row):
    org_sourced_id = fields.String(data_key="orgSourcedId", load_default=None)


# --------------------------------------------------------------------------- classes


class _ClassFields(_Schema):
    title = fields.String(required=True, validate=validate.Length(min=1))
    class_code = fields.String(data_key="classCode", load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Class:
        return Class(sis_id=data["sourced_id"], **data)


class ClassSchema(_ClassFields):
    course_sourced_id = RefId(data_key="course", required=True)
    school_sourced_id = RefId(data_key="school", required=True)
    term_sourced_ids = RefIds(data_key="terms", load_default=())


class ClassRowSchema(_ClassFields, _Row):
    course_sourced_id = fields.String(data_key="courseSourcedId", required=True)
    school_sourced_id = fields.String(data_key="schoolSourcedId", required=True)
    term_sourced_ids = IdList(data_key="termSourcedIds", load_default=())


# --------------------------------------------------------------------------- users


class RoleSchema(Schema):
    """A 1.2 ``roles[]`` entry: ``{"roleType", "role", "org", "userProfile", "beginDate", "endDate"}``."""

    class Meta:
        unknown = EXCLUDE

    role_type = fields.String(data_key="roleType", load_default="primary")
    role = Term(USER_ROLES, "role", required=True)
    org_sourced_id = RefId(data_key="org", load_default=None, allow_none=True)


class _UserFields(_Schema):
    given_name = fields.String(data_key="givenName", load_default="")
    family_name = fields.String(data_key="familyName", load_default="")
    email = fields.String(load_default=None, allow_none=True)
    username = fields.String(load_default=None, allow_none=True)
    grades = IdList(load_default=())
    enabled = _bool(data_key="enabledUser", load_default=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> LoadedUser:
        agents = data.pop("agents", ())
        roles = data.pop("roles", None)
        role = data.pop("role", None)
        if roles:
            primary = [r for r in roles if r["role_type"] == "primary"]
            role = (primary or roles)[0]["role"]
        data["email"] = data["email"] or None
        data["username"] = data["username"] or None
        return LoadedUser(Person(role=role, sis_id=data["sourced_id"], **data), agents)


class UserSchema(_UserFields):
    """A REST ``user``: 1.1 carries ``role``; 1.2 carries ``roles[]`` (the primary one wins)."""

    role = Term(USER_ROLES, "role", load_default=None, allow_none=True)
    roles = fields.List(fields.Nested(RoleSchema), load_default=None)
    agents = RefIds(load_default=())

    @validates_schema
    def _has_role(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        if not data.get("role") and not data.get("roles"):
            raise ValidationError("a user needs a role (1.1) or roles (1.2)", "role")


class UserRowSchema(_UserFields, _Row):
    """A ``users.csv`` row; for 1.2 packages the reader fills ``role`` from ``roles.csv``."""

    role = Term(USER_ROLES, "role", required=True)
    agents = IdList(data_key="agentSourcedIds", load_default=())


class RoleRowSchema(Schema):
    """A 1.2 ``roles.csv`` row."""

    class Meta:
        unknown = EXCLUDE

    sourced_id = fields.String(data_key="sourcedId", load_default=None)
    status = Status(load_default=ACTIVE)
    user_sourced_id = fields.String(data_key="userSourcedId", required=True, validate=validate.Length(min=1))
    role_type = fields.String(data_key="roleType", load_default="primary")
    role = Term(USER_ROLES, "role", required=True)
    org_sourced_id = fields.String(data_key="orgSourcedId", load_default=None)

    @pre_load
    def _drop_empty(self, data: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if v != "" and v is not None}

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> UserRole | None:
        if data["status"] != ACTIVE:
            return None
        return UserRole(data["user_sourced_id"], data["role"], data["role_type"], data["org_sourced_id"])


# --------------------------------------------------------------------------- enrollments


class _EnrollmentFields(_Schema):
    role = Term(ENROLLMENT_ROLES, "enrollment role", required=True)
    primary = _bool(load_default=False)
    begin_date = LenientDate(data_key="beginDate", load_default=None, allow_none=True)
    end_date = LenientDate(data_key="endDate", load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Enrollment:
        return Enrollment(**data)


class EnrollmentSchema(_EnrollmentFields):
    class_sourced_id = RefId(data_key="class", required=True)
    person_sourced_id = RefId(data_key="user", required=True)


class EnrollmentRowSchema(_EnrollmentFields, _Row):
    class_sourced_id = fields.String(data_key="classSourcedId", required=True)
    person_sourced_id = fields.String(data_key="userSourcedId", required=True)


# --------------------------------------------------------------------------- demographics


class _DemographicsFields(_Schema):
    birth_date = LenientDate(data_key="birthDate", load_default=None, allow_none=True)
    sex = fields.String(load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Demographics:
        return Demographics(**data)


class DemographicsSchema(_DemographicsFields):
    pass


class DemographicsRowSchema(_DemographicsFields, _Row):
    pass


# --------------------------------------------------------------------------- gradebook


class _CategoryFields(_Schema):
    title = fields.String(required=True, validate=validate.Length(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Category:
        return Category(**data)


class CategorySchema(_CategoryFields):
    pass


class CategoryRowSchema(_CategoryFields, _Row):
    pass


class _LineItemFields(_Schema):
    title = fields.String(required=True, validate=validate.Length(min=1))
    due_at = LenientDateTime(data_key="dueDate", load_default=None, allow_none=True)
    score_maximum = Number(data_key="resultValueMax", load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Activity:
        return Activity(**data)


class LineItemSchema(_LineItemFields):
    class_sourced_id = RefId(data_key="class", required=True)
    category = RefId(load_default=None, allow_none=True)


class LineItemRowSchema(_LineItemFields, _Row):
    class_sourced_id = fields.String(data_key="classSourcedId", required=True)
    category = fields.String(data_key="categorySourcedId", load_default=None)


class _ResultFields(_Schema):
    score = Number(load_default=None, allow_none=True)
    scored_at = LenientDateTime(data_key="scoreDate", load_default=None, allow_none=True)
    score_status = Term(SCORE_STATUSES, "scoreStatus", data_key="scoreStatus", required=True)
    comment = fields.String(load_default=None, allow_none=True)

    @post_load
    def _make(self, data: dict[str, Any], **kwargs: Any) -> Result:
        data["comment"] = data["comment"] or None
        return Result(**data)


class ResultSchema(_ResultFields):
    activity_sourced_id = RefId(data_key="lineItem", required=True)
    person_sourced_id = RefId(data_key="student", required=True)


class ResultRowSchema(_ResultFields, _Row):
    activity_sourced_id = fields.String(data_key="lineItemSourcedId", required=True)
    person_sourced_id = fields.String(data_key="studentSourcedId", required=True)


