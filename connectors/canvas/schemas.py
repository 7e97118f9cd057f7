"""marshmallow schemas for the Canvas REST payloads Trailmark reads; every payload is loaded here first.

Field names and shapes follow the Canvas API documentation (Courses, Enrollments, Modules, Assignments,
Submissions, Outcome Groups, Outcome Results). Only the fields Trailmark uses are declared (loading is the
hot path of a district pull); unknown keys are dropped. A payload that does not fit raises
``ValidationError`` and becomes a ``Rejected`` item in the stream. Schema instances hold no per-load state
and are shared across worker threads.

Each schema is also compiled into a plain-Python loader (``compile_loader``) that returns exactly what
``schema.load`` returns for well-formed rows, at a tenth of the cost, and steps aside for anything else:
a row it does not accept (a missing required key, a wrong type, a value a validator refuses, a date string
marshmallow must parse) is loaded by marshmallow itself, so every rejection keeps marshmallow's field and
reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, missing, validate


class CanvasId(fields.Field):
    """A Canvas id: an integer (or a digit string with ``application/json+canvas-string-ids``), as ``str``."""

    default_error_messages = {"invalid": "Not a valid Canvas id."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value.strip().isdigit():
            return value.strip()
        raise self.make_error("invalid")


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast_load = compile_loader(self)


def _id(*, required: bool = True) -> CanvasId:
    if required:
        return CanvasId(required=True)
    return CanvasId(allow_none=True, load_default=None)


def _text(**kw: Any) -> fields.String:
    return fields.String(allow_none=True, load_default=None, **kw)


def _when() -> fields.DateTime:
    return fields.DateTime(allow_none=True, load_default=None)


def _number() -> fields.Float:
    return fields.Float(allow_none=True, load_default=None)


# --------------------------------------------------------------------------- roster


class AccountSchema(_Base):
    id = _id()
    name = fields.String(required=True)
    parent_account_id = _id(required=False)
    sis_account_id = _text()


class TermSchema(_Base):
    id = _id()
    name = fields.String(required=True)
    start_at = _when()
    end_at = _when()


class CourseSchema(_Base):
    id = _id()
    name = fields.String(required=True, validate=validate.Length(min=1))
    course_code = _text()
    sis_course_id = _text()
    account_id = _id(required=False)
    enrollment_term_id = _id(required=False)
    term = fields.Nested(TermSchema, allow_none=True, load_default=None)


class UserSchema(_Base):
    id = _id()
    name = fields.String(load_default="")
    sortable_name = _text()
    sis_user_id = _text()
    login_id = _text()
    email = _text()


ENROLLMENT_TYPES = (
    "StudentEnrollment", "TeacherEnrollment", "TaEnrollment", "ObserverEnrollment", "DesignerEnrollment",
    "StudentViewEnrollment",
)


class EnrollmentSchema(_Base):
    id = _id()
    course_id = _id()
    user_id = _id()
    type = fields.String(required=True, validate=validate.OneOf(ENROLLMENT_TYPES))
    associated_user_id = _id(required=False)
    start_at = _when()
    end_at = _when()
    user = fields.Nested(UserSchema, allow_none=True, load_default=None)


# --------------------------------------------------------------------------- content


class CompletionRequirementSchema(_Base):
    type = fields.String(required=True)
    min_score = _number()
    completed = fields.Boolean(allow_none=True, load_default=None)


class ModuleItemSchema(_Base):
    id = _id()
    module_id = _id(required=False)
    position = fields.Integer(load_default=0, allow_none=True)
    title = fields.String(load_default="")
    type = fields.String(required=True)
    content_id = _id(required=False)
    completion_requirement = fields.Nested(CompletionRequirementSchema, allow_none=True, load_default=None)
    published = fields.Boolean(allow_none=True, load_default=None)


class ModuleSchema(_Base):
    id = _id()
    name = fields.String(required=True)
    position = fields.Integer(load_default=0, allow_none=True)
    workflow_state = fields.String(load_default="active")
    unlock_at = _when()
    require_sequential_progress = fields.Boolean(allow_none=True, load_default=False)
    requirement_type = _text()
    prerequisite_module_ids = fields.List(CanvasId(), load_default=list, allow_none=True)
    items_count = fields.Integer(load_default=0, allow_none=True)
    items_url = _text()
    items = fields.List(fields.Raw(), allow_none=True, load_default=None)  # validated item by item
    published = fields.Boolean(allow_none=True, load_default=True)


class RubricCriterionSchema(_Base):
    id = _text()
    points = _number()
    description = _text()
    outcome_id = _id(required=False)


class DiscussionTopicSchema(_Base):
    id = _id()


class ExternalToolTagSchema(_Base):
    """``external_tool_tag_attributes`` of an ``external_tool`` assignment (the launch URL it keeps)."""

    url = _text()


class AssignmentSchema(_Base):
    id = _id()
    course_id = _id(required=False)
    name = fields.String(required=True)
    points_possible = _number()
    due_at = _when()
    grading_type = _text()
    workflow_state = _text()
    published = fields.Boolean(allow_none=True, load_default=True)
    quiz_id = _id(required=False)
    discussion_topic = fields.Nested(DiscussionTopicSchema, allow_none=True, load_default=None)
    rubric = fields.List(fields.Nested(RubricCriterionSchema), allow_none=True, load_default=None)
    submission_types = fields.List(fields.String(), allow_none=True, load_default=None)
    external_tool_tag_attributes = fields.Nested(ExternalToolTagSchema, allow_none=True, load_default=None)


class OutcomeRatingSchema(_Base):
    description = fields.String(load_default="")
    points = fields.Float(required=True)


CALCULATION_METHODS = (
    "highest", "latest", "average", "n_mastery", "decaying_average", "weighted_average",
    "standard_decaying_average",
)


class OutcomeSchema(_Base):
    id = _id()
    title = fields.String(required=True)
    display_name = _text()
    description = _text()
    context_type = _text()
    context_id = _id(required=False)
    points_possible = _number()
    mastery_points = _number()
    calculation_method = fields.String(allow_none=True, load_default=None,
                                       validate=validate.OneOf(CALCULATION_METHODS))
    calculation_int = fields.Integer(allow_none=True, load_default=None)
    ratings = fields.List(fields.Nested(OutcomeRatingSchema), allow_none=True, load_default=None)


class OutcomeLinkSchema(_Base):
    context_type = _text()
    context_id = _id(required=False)
    outcome = fields.Nested(OutcomeSchema, required=True)


# --------------------------------------------------------------------------- progress

SUBMISSION_STATES = ("submitted", "unsubmitted", "graded", "pending_review", "deleted")


class SubmissionSchema(_Base):
    id = _id()
    assignment_id = _id()
    user_id = _id()
    score = _number()
    grade = _text()
    submitted_at = _when()
    graded_at = _when()
    workflow_state = fields.String(required=True, validate=validate.OneOf(SUBMISSION_STATES))
    excused = fields.Boolean(allow_none=True, load_default=False)
    late = fields.Boolean(allow_none=True, load_default=False)
    missing = fields.Boolean(allow_none=True, load_default=False)


class OutcomeResultLinksSchema(_Base):
    user = _id()
    learning_outcome = _id()
    alignment = _text()


class OutcomeResultSchema(_Base):
    id = _id()
    score = _number()
    possible = _number()
    percent = _number()
    mastery = fields.Boolean(allow_none=True, load_default=None)
    hidden = fields.Boolean(allow_none=True, load_default=False)
    submitted_or_assessed_at = _when()
    links = fields.Nested(OutcomeResultLinksSchema, required=True)


class TokenSchema(_Base):
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    token_type = fields.String(load_default="Bearer")
    expires_in = fields.Float(allow_none=True, load_default=None)


# --------------------------------------------------------------------------- compiled loaders


class NeedsMarshmallow(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a compiled loader for a row only marshmallow's own path may decide on."""


Loader = Callable[[dict[str, Any]], dict[str, Any]]
Convert = Callable[[Any, dict[str, Any]], Any]


def _checked(convert: Convert, field: fields.Field) -> Convert:
    """Wrap ``convert`` so the field's validators run on its output, as marshmallow runs them."""
    if not field.validators:
        return convert
    check = validate.And(*field.validators)

    def run(value: Any, data: dict[str, Any]) -> Any:
        out = convert(value, data)
        try:
            check(out)
        except ValidationError:
            raise NeedsMarshmallow from None
        return out

    return run


def _string(value: Any, data: dict[str, Any]) -> Any:
    if type(value) is not str:
        raise NeedsMarshmallow
    return value


def _integer(value: Any, data: dict[str, Any]) -> Any:
    if type(value) is not int:
        raise NeedsMarshmallow
    return value


def _float(value: Any, data: dict[str, Any]) -> Any:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise NeedsMarshmallow
        return value
    if kind is int and -(2 ** 53) <= value <= 2 ** 53:
        return float(value)
    raise NeedsMarshmallow


def _boolean(value: Any, data: dict[str, Any]) -> Any:
    if value is True or value is False:
        return value
    raise NeedsMarshmallow


def _canvas_id(value: Any, data: dict[str, Any]) -> Any:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is str and value.isdigit():
        return value
    raise NeedsMarshmallow


def _raw(value: Any, data: dict[str, Any]) -> Any:
    return value


def _processed(field: fields.Field) -> bool:
    """Whether the field has its own pre- or post-load functions (marshmallow 4)."""
    return bool(getattr(field, "pre_load", None) or getattr(field, "post_load", None))


def _by_field(field: fields.Field, key: str) -> Convert:
    """Defer to the field's own ``deserialize`` (types this module does not specialise)."""

    def run(value: Any, data: dict[str, Any]) -> Any:
        try:
            return field.deserialize(value, key, data)
        except ValidationError:
            raise NeedsMarshmallow from None

    return run


def _converter(field: fields.Field, key: str) -> Convert:
    """Return the converter for a present, non-null value of ``field``."""
    if _processed(field):
        return _by_field(field, key)
    kind = type(field)
    convert: Convert
    if kind is CanvasId:
        convert = _canvas_id
    elif kind is fields.String:
        convert = _string
    elif kind is fields.Integer:
        convert = _integer
    elif kind is fields.Float and not field.allow_nan:  # type: ignore[attr-defined]
        convert = _float
    elif kind is fields.Boolean:
        convert = _boolean
    elif kind is fields.Raw:
        convert = _raw
    elif kind is fields.Nested and not field.many and field.unknown in (None, EXCLUDE):  # type: ignore[attr-defined]
        inner = compile_loader(field.schema)  # type: ignore[attr-defined]
        if inner is None:
            return _by_field(field, key)
        nested = inner

        def convert(value: Any, data: dict[str, Any]) -> Any:
            if type(value) is not dict:
                raise NeedsMarshmallow
            return nested(value)
    elif kind is fields.List:
        item = _value(field.inner, key)  # type: ignore[attr-defined]

        def convert(value: Any, data: dict[str, Any]) -> Any:
            if type(value) is not list:
                raise NeedsMarshmallow
            return [item(v, data) for v in value]
    else:
        return _by_field(field, key)
    return _checked(convert, field)


_NULL_REFUSED, _NULL_KEPT, _NULL_CONVERTED = 0, 1, 2


def _nulls(field: fields.Field) -> int:
    """How ``field`` treats ``null``: refused, kept as ``None``, or handed to its own pre-load functions."""
    if _processed(field):
        return _NULL_CONVERTED
    return _NULL_KEPT if field.allow_none else _NULL_REFUSED


def _value(field: fields.Field, key: str) -> Convert:
    """Return the converter for a present value of ``field``, ``None`` included."""
    convert = _converter(field, key)
    nulls = _nulls(field)
    if nulls == _NULL_CONVERTED:
        return convert

    def run(value: Any, data: dict[str, Any]) -> Any:
        if value is None:
            if nulls == _NULL_KEPT:
                return None
            raise NeedsMarshmallow
        return convert(value, data)

    return run


def compile_loader(schema: Schema) -> Loader | None:
    """Return a plain-Python loader equal to ``schema.load`` on the rows it accepts, or ``None``.

    ``None`` when the schema needs what only marshmallow does (hooks, ``many``, ``partial``, unknown keys
    kept or refused, dotted attributes). The loader raises ``NeedsMarshmallow`` for a row it does not accept.
    """
    if schema.many or schema.partial or schema.unknown != EXCLUDE or any(schema._hooks.values()):
        return None
    plan: list[tuple[str, str, Convert, int, bool, Any, bool]] = []
    for name, field in schema.load_fields.items():
        key = field.data_key if field.data_key is not None else name
        target = field.attribute or name
        if "." in target:
            return None
        default = field.load_default
        plan.append((key, target, _converter(field, key), _nulls(field), field.required, default,
                     callable(default)))

    def load_row(data: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        get = data.get
        for key, target, convert, nulls, required, default, call in plan:
            value = get(key, missing)
            if value is None:
                if nulls == _NULL_KEPT:
                    out[target] = None
                elif nulls == _NULL_REFUSED:
                    raise NeedsMarshmallow
                else:
                    out[target] = convert(value, data)
            elif value is missing:
                if required:
                    raise NeedsMarshmallow
                if default is not missing:
                    out[target] = default() if call else default
            else:
                out[target] = convert(value, data)
        return out

    return load_row


# --------------------------------------------------------------------------- shared instances

ACCOUNT = AccountSchema()
COURSE = CourseSchema()
ENROLLMENT = EnrollmentSchema()
MODULE = ModuleSchema()
MODULE_ITEM = ModuleItemSchema()
ASSIGNMENT = AssignmentSchema()
OUTCOME_LINK = OutcomeLinkSchema()
SUBMISSION = SubmissionSchema()
OUTCOME_RESULT = OutcomeResultSchema()
TOKEN = TokenSchema()


# --------------------------------------------------------------------------- helpers


def load(schema: Schema, payload: Any) -> dict[str, Any]:
    """Load one payload or raise ``ValidationError`` (also when it is not an object at all)."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": [f"expected an object, got {type(payload).__name__}"]})
    fast: Loader | None = getattr(schema, "fast_load", None)
    if fast is not None:
        try:
            return fast(payload)
        except NeedsMarshmallow:
            pass
    result: dict[str, Any] = schema.load(payload)
    return result


def record_id(payload: Any) -> str | None:
    """Return the payload's ``id`` as text, if it has one."""
    if isinstance(payload, dict) and payload.get("id") is not None:
        return str(payload["id"])
    return None
