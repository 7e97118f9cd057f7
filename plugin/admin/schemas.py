"""marshmallow schemas of the admin console: form and request bodies in, API answers out (and in OpenAPI)."""

from __future__ import annotations

from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate


def first_error(exc: ValidationError) -> str:
    """The first problem of a failed load, as "Label: message"."""
    messages = exc.messages
    if isinstance(messages, dict) and messages:
        key, value = next(iter(messages.items()))
        while isinstance(value, dict) and value:
            value = next(iter(value.values()))
        text = value[0] if isinstance(value, list) and value else str(value)
        label = PlatformForm.LABELS.get(str(key), str(key).replace("_", " ").capitalize())
        return f"{label}: {text}"
    return str(messages)


# --------------------------------------------------------------------------- input


class PlatformForm(Schema):
    """A platform registered by hand (the HTML form and ``POST /api/admin/platforms``)."""

    class Meta:
        unknown = EXCLUDE

    LABELS: ClassVar[dict[str, str]] = {
        "issuer": "Issuer", "client_id": "Client id", "deployment_ids": "Deployment ids",
        "auth_login_url": "OIDC authorization URL", "auth_token_url": "Token URL", "key_set_url": "Key set URL",
        "auth_audience": "Token audience", "name": "Name", "product_family": "LMS", "hours": "Valid for",
        "note": "Note", "confirm": "Confirmation",
    }

    issuer = fields.String(required=True, validate=validate.Length(1, 255))
    client_id = fields.String(required=True, validate=validate.Length(1, 255))
    deployment_ids = fields.List(fields.String(validate=validate.Length(1, 255)), required=True,
                                 validate=validate.Length(min=1, max=50))
    auth_login_url = fields.String(required=True, validate=validate.Length(1, 2000))
    auth_token_url = fields.String(required=True, validate=validate.Length(1, 2000))
    key_set_url = fields.String(required=True, validate=validate.Length(1, 2000))
    auth_audience = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=2000))
    name = fields.String(load_default="", validate=validate.Length(max=255))
    product_family = fields.String(load_default="", validate=validate.Length(max=64))

    @pre_load
    def _from_form(self, data: Any, **_: Any) -> Any:
        """Accept a form (deployment ids one per line or comma separated) as well as JSON."""
        if hasattr(data, "getlist"):
            out = {k: v.strip() for k, v in data.items() if isinstance(v, str)}
            raw = " ".join(data.getlist("deployment_ids"))
            out["deployment_ids"] = [d for d in raw.replace(",", " ").split() if d]
            return {k: v for k, v in out.items() if v != "" or k == "deployment_ids"}
        return data


class InviteForm(Schema):
    class Meta:
        unknown = EXCLUDE

    hours = fields.Integer(load_default=72, validate=validate.Range(1, 24 * 30))
    note = fields.String(load_default="", validate=validate.Length(max=255))


class EraseRequest(Schema):
    class Meta:
        unknown = EXCLUDE

    confirm = fields.Boolean(required=True, metadata={"description": "Must be true: erasure cannot be undone."})


# --------------------------------------------------------------------------- output


class ErrorOut(Schema):
    error = fields.String(required=True)
    message = fields.String(required=True)


class DistrictOut(Schema):
    id = fields.Integer(required=True)
    slug = fields.String(required=True)
    name = fields.String(required=True)


class PlatformOut(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    issuer = fields.String(required=True)
    client_id = fields.String(required=True)
    deployment_ids = fields.List(fields.String(), required=True)
    product_family = fields.String(required=True)
    registered_via = fields.String(required=True, metadata={"description": "manual, dynamic, config or sandbox"})
    auth_login_url = fields.String(required=True)
    auth_token_url = fields.String(required=True)
    key_set_url = fields.String(required=True)
    created_at = fields.String(allow_none=True, metadata={"format": "date-time"})


class InviteOut(Schema):
    url = fields.String(required=True, metadata={"description": "The one-time Dynamic Registration URL"})
    hours = fields.Integer(required=True)


class TotalsOut(Schema):
    added = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    tombstoned = fields.Integer()
    rejected = fields.Integer()


class SyncRunOut(Schema):
    id = fields.Integer(required=True)
    source = fields.String(required=True)
    scope = fields.String(required=True)
    full = fields.Boolean(required=True)
    dry_run = fields.Boolean(required=True)
    status = fields.String(required=True, metadata={"description": "running, succeeded, failed, needs_confirm, "
                                                                   "skipped"})
    started_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    finished_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    duration_seconds = fields.Float(allow_none=True)
    totals = fields.Nested(TotalsOut, required=True)
    error_count = fields.Integer(required=True)
    first_error = fields.String(allow_none=True)


class SyncErrorOut(Schema):
    type = fields.String()
    source = fields.String(allow_none=True)
    kind = fields.String(allow_none=True)
    record_id = fields.String(allow_none=True)
    field = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)


class SyncRunDetailOut(SyncRunOut):
    counts = fields.Dict(keys=fields.String(), values=fields.Dict(keys=fields.String(), values=fields.Integer()))
    errors = fields.List(fields.Nested(SyncErrorOut))


class SourceOut(Schema):
    name = fields.String(required=True)
    kind = fields.String(required=True)
    configured = fields.Boolean(required=True)
    enabled = fields.Boolean(required=True)
    schedule = fields.String(allow_none=True)
    last_run = fields.Nested(SyncRunOut, allow_none=True)
    next_run_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    paused_until = fields.String(allow_none=True, metadata={"format": "date-time"})
    consecutive_failures = fields.Integer(required=True)
    last_error = fields.String(allow_none=True)
    errors = fields.List(fields.Nested(SyncErrorOut))
    sync_requested = fields.Nested("SyncRequestOut", allow_none=True,
                                   metadata={"description": "a sync asked for and not started yet"})


class OutboxItemOut(Schema):
    id = fields.Integer(required=True)
    kind = fields.String(required=True, metadata={"description": "score, gate or message"})
    target = fields.String(required=True)
    status = fields.String(required=True)
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    last_error = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True, metadata={"format": "date-time"})


class OutboxCountsOut(Schema):
    pending = fields.Integer(required=True)
    sent = fields.Integer(required=True)
    dead = fields.Integer(required=True)
    cancelled = fields.Integer(required=True)


class OutboxOut(Schema):
    counts = fields.Nested(OutboxCountsOut, required=True)
    oldest_pending_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    oldest_pending_age_seconds = fields.Integer(allow_none=True)
    dead = fields.List(fields.Nested(OutboxItemOut), required=True)
    pending = fields.List(fields.Nested(OutboxItemOut), required=True)
    cancelled = fields.List(fields.Nested(OutboxItemOut), required=True)


class SyncRequestOut(Schema):
    at = fields.String(required=True, metadata={"format": "date-time"})
    by = fields.String(allow_none=True)
    full = fields.Boolean(required=True)


class SyncRequestedOut(SyncRequestOut):
    source = fields.String(required=True)


class SyncRequestIn(Schema):
    full = fields.Boolean(load_default=False, metadata={"description": "a full reconciliation instead of a delta"})


class RetriedOut(Schema):
    retried = fields.Integer(required=True)


class KeyOut(Schema):
    kid = fields.String(required=True)
    status = fields.String(required=True, metadata={"description": "active, retiring or retired"})
    created_at = fields.String(allow_none=True, metadata={"format": "date-time"})
    retired_at = fields.String(allow_none=True, metadata={"format": "date-time"})


class RotatedOut(Schema):
    active = fields.String(required=True)
    retiring = fields.List(fields.String(), required=True)


class CheckOut(Schema):
    name = fields.String(required=True)
    ok = fields.Boolean(required=True)
    warning = fields.Boolean(required=True)
    detail = fields.String(required=True)


class ConfigCheckOut(Schema):
    ok = fields.Boolean(required=True)
    checks = fields.List(fields.Nested(CheckOut), required=True)


class AuditEventOut(Schema):
    id = fields.Integer(required=True)
    at = fields.String(allow_none=True, metadata={"format": "date-time"})
    actor = fields.String(required=True)
    action = fields.String(required=True)
    subject = fields.String(allow_none=True)
    detail = fields.Dict()


class ErasureOut(Schema):
    person_id = fields.Integer(required=True)
    already_erased = fields.Boolean(required=True)
    deleted = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    references_marked = fields.Integer(required=True)


class ExportOut(Schema):
    """Everything Trailmark holds about one person (see plugin/privacy.py ``export_person``)."""

    exported_at = fields.String(required=True, metadata={"format": "date-time"})
    person = fields.Dict(required=True)
    identifiers = fields.List(fields.Dict())
    enrollments = fields.List(fields.Dict())
    guardian_links = fields.List(fields.Dict())
    results = fields.List(fields.Dict())
    mastery = fields.List(fields.Dict())
    modules = fields.List(fields.Dict())
    module_overrides = fields.List(fields.Dict())
    pace = fields.List(fields.Dict())
    accommodations = fields.List(fields.Dict())
    alerts = fields.List(fields.Dict())
    profile_entries = fields.List(fields.Dict())
    profile_snapshots = fields.List(fields.Dict())
    access_log = fields.List(fields.Dict())
