"""marshmallow schemas for the Canvas REST payloads Trailmark reads; every payload is loaded here first.

Field names and shapes follow the Canvas API documentation (Courses, Enrollments, Modules, Assignments,
Submissions, Outcome Groups, Outcome Results). Only the fields Trailmark uses are declared (loading is the
hot path of a district pull); unknown keys are dropped. A payload that does not fit raises
``ValidationError`` and becomes a ``Rejected`` item in the stream. Schema instances hold no per-load state
and are shared across worker threads.
"""

from __future__ import annotations

from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate


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


def first_error(messages: Any, prefix: str = "") -> tuple[str | None, str]:
    """Return ``(dotted field, reason)`` for the first problem in a marshmallow error tree."""
    if isinstance(messages, dict):
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                name = prefix
            return first_error(value, name)
    if isinstance(messages, list) and messages:
        if all(isinstance(m, str) for m in messages):
            return (prefix or None), "; ".join(messages)
        return first_error(messages[0], prefix)
    return (prefix or None), str(messages)


def load(schema: Schema, payload: Any) -> dict[str, Any]:
    """Load one payload or raise ``ValidationError`` (also when it is not an object at all)."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": [f"expected an object, got {type(payload).__name__}"]})
    result: dict[str, Any] = schema.load(payload)
    return result


def record_id(payload: Any) -> str | None:
    """Return the payload's ``id`` as text, if it has one."""
    if isinstance(payload, dict) and payload.get("id") is not None:
        return str(payload["id"])
    return None
