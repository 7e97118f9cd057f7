"""Form schemas for the panels: every POST is loaded through one of these before anything is written.

Messages are written for the person filling in the form; :func:`first_error` turns a ValidationError into one
sentence that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates_schema

TEXT_MAX = 500
NOTE_MAX = 1000
EXTRA_DAYS_MAX = 365

_DATE_ERRORS = {"invalid": "Enter a date as YYYY-MM-DD, for example 2026-03-14."}
_INT_ERRORS = {"invalid": "Choose from the list.", "required": "Choose from the list."}


class _Form(Schema):
    """Strips text, treats an empty optional field as missing, ignores fields it does not know."""

    class Meta:
        unknown = EXCLUDE

    optional: tuple[str, ...] = ()

    @pre_load
    def _clean(self, data: Mapping[str, Any], **_kwargs: Any) -> dict[str, Any]:
        cleaned: dict[str, Any] = {}
        for key in data:
            value = data.get(key)
            if isinstance(value, str):
                value = value.strip()
                if value == "" and key in self.optional:
                    continue
            cleaned[key] = value
        return cleaned


class _Text(fields.String):
    """Text with distinct messages for empty and too long."""

    def __init__(self, maximum: int, *, required: bool = True, **kwargs: Any) -> None:
        self.maximum = maximum
        self.must = required
        if not required:
            kwargs["load_default"] = ""
        super().__init__(required=required,
                         error_messages={"required": "Write something before saving.", "invalid": "Write some text."},
                         **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if self.must and not text:
            raise ValidationError("Write something before saving.")
        if len(text) > self.maximum:
            raise ValidationError(f"Keep it to {self.maximum} characters or fewer (this has {len(text)}).")
        return text


class OverrideForm(_Form):
    """A teacher opens or closes one module for one student."""

    optional = ("note",)
    student_id = fields.Integer(required=True, strict=False, error_messages=_INT_ERRORS)
    module_id = fields.Integer(required=True, strict=False, error_messages=_INT_ERRORS)
    kind = fields.String(required=True, validate=validate.OneOf(
        ("shown_mastery", "accommodation", "closed_by_teacher"), error="Choose what to do with the module."),
        error_messages={"required": "Choose what to do with the module."})
    note = _Text(NOTE_MAX, required=False)
    return_to = fields.String(load_default="class", validate=validate.OneOf(("class", "student")))


class RemoveOverrideForm(_Form):
    return_to = fields.String(load_default="class", validate=validate.OneOf(("class", "student")))


class EntryForm(_Form):
    """Something added to a learner profile: an interest, aspiration, goal, or a teacher's note."""

    optional = ("target_date", "status", "competency_id")
    kind = fields.String(required=True, validate=validate.OneOf(("interest", "aspiration", "goal", "note"),
                                                                error="Choose what kind of entry this is."))
    text = _Text(TEXT_MAX)
    target_date = fields.Date(load_default=None, allow_none=True, error_messages=_DATE_ERRORS)
    status = fields.String(load_default=None, allow_none=True,
                           validate=validate.OneOf(("active", "achieved", "dropped"), error="Choose a status."))
    competency_id = fields.Integer(load_default=None, allow_none=True, error_messages=_INT_ERRORS)


class EntryEditForm(_Form):
    """Changes to an entry: its text, and for goals the target date and status."""

    optional = ("target_date", "status")
    text = _Text(TEXT_MAX)
    target_date = fields.Date(load_default=None, allow_none=True, error_messages=_DATE_ERRORS)
    status = fields.String(load_default=None, allow_none=True,
                           validate=validate.OneOf(("active", "achieved", "dropped"), error="Choose a status."))


class AccommodationForm(_Form):
    """Extra days on every due date for one student."""

    optional = ("note",)
    student_id = fields.Integer(required=True, error_messages=_INT_ERRORS)
    extra_days = fields.Integer(required=True, validate=validate.Range(
        min=0, max=EXTRA_DAYS_MAX, error=f"Enter a whole number of days from 0 to {EXTRA_DAYS_MAX}."),
        error_messages={"invalid": f"Enter a whole number of days from 0 to {EXTRA_DAYS_MAX}.",
                        "required": "Enter the number of extra days."})
    note = _Text(TEXT_MAX, required=False)


class StudentChoiceForm(_Form):
    student_id = fields.Integer(required=True, error_messages=_INT_ERRORS)


class PacePlanForm(_Form):
    """The class's plan: term dates, whether weekends count, and a due date per module (``due_<module id>``)."""

    optional = ("start_date", "end_date")
    action = fields.String(load_default="save", validate=validate.OneOf(("save", "reset")))
    start_date = fields.Date(load_default=None, allow_none=True, error_messages=_DATE_ERRORS)
    end_date = fields.Date(load_default=None, allow_none=True, error_messages=_DATE_ERRORS)
    skip_weekends = fields.Boolean(load_default=False, truthy={"on", "1", "true", "yes"},
                                   falsy={"", "off", "0", "false", "no"})
    due = fields.Dict(keys=fields.Integer(), values=fields.Date(allow_none=True, error_messages=_DATE_ERRORS),
                      load_default=dict)

    @pre_load
    def _collect_dues(self, data: Mapping[str, Any], **_kwargs: Any) -> dict[str, Any]:
        out = {k: v for k, v in data.items() if not k.startswith("due_")}
        dues: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("due_"):
                value = value.strip() if isinstance(value, str) else value
                dues[key[4:]] = value or None
        out["due"] = dues
        return out

    @validates_schema
    def _term(self, data: Mapping[str, Any], **_kwargs: Any) -> None:
        start, end = data.get("start_date"), data.get("end_date")
        if isinstance(start, date) and isinstance(end, date) and end <= start:
            raise ValidationError("The term must end after it starts.", "end_date")


FIELD_NAMES = {
    "text": "Text", "target_date": "Target date", "status": "Status", "kind": "Kind", "note": "Note",
    "student_id": "Student", "module_id": "Module", "extra_days": "Extra days", "start_date": "Term start",
    "end_date": "Term end", "due": "Due dates", "competency_id": "Competency", "return_to": "Form",
    "action": "Action", "skip_weekends": "Weekends",
}


def first_error(error: ValidationError) -> tuple[str, str]:
    """Return (field, sentence) for the first problem in a ValidationError."""
    messages = error.messages
    if isinstance(messages, dict):
        for key, value in messages.items():
            text = _flatten(value)
            label = FIELD_NAMES.get(str(key), str(key).replace("_", " ").capitalize())
            return str(key), f"{label}: {text}"
    return "", _flatten(messages)


def _flatten(value: Any) -> str:
    if isinstance(value, list | tuple):
        return _flatten(value[0]) if value else ""
    if isinstance(value, dict):
        for inner in value.values():
            return _flatten(inner)
        return ""
    return str(value)
