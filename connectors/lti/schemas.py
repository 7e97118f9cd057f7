"""Marshmallow schemas for LTI Advantage payloads: OAuth2 tokens, NRPS members, AGS line items and results."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate

from connectors.base import Rejected, first_error


class _Base(Schema):
    class Meta:
        unknown = EXCLUDE


class IsoDateTime(fields.Field[datetime | None]):
    """ISO 8601 date-time as platforms send it (``Z`` or an offset; naive values taken as UTC)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise ValidationError("not an ISO 8601 date-time")
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError("not an ISO 8601 date-time") from exc
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text() -> fields.String:
    return fields.String(load_default=None, allow_none=True)


# --------------------------------------------------------------------------- OAuth2 token


@dataclass(frozen=True, slots=True)
class AccessToken:
    access_token: str
    token_type: str
    expires_in: int
    scope: str | None


class TokenResponseSchema(_Base):
    access_token = fields.String(required=True, validate=validate.Length(min=1))
    token_type = fields.String(load_default="Bearer")
    expires_in = fields.Integer(load_default=3600)
    scope = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AccessToken:
        return AccessToken(**data)


# --------------------------------------------------------------------------- NRPS


@dataclass(frozen=True, slots=True)
class NrpsContext:
    id: str
    label: str | None
    title: str | None


class ContextSchema(_Base):
    id = fields.String(required=True)
    label = _text()
    title = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> NrpsContext:
        return NrpsContext(**data)


class MembershipContainerSchema(_Base):
    """``application/vnd.ims.lti-nrps.v2.membershipcontainer+json``; members are validated one by one."""

    id = _text()
    context = fields.Nested(ContextSchema, load_default=None, allow_none=True)
    members = fields.List(fields.Raw(), load_default=list)


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    status: str  # Active | Inactive | Deleted
    roles: tuple[str, ...]
    name: str | None
    given_name: str | None
    family_name: str | None
    email: str | None
    lis_person_sourcedid: str | None


class MemberSchema(_Base):
    user_id = fields.String(required=True, validate=validate.Length(min=1))
    status = fields.String(load_default="Active", validate=validate.OneOf(["Active", "Inactive", "Deleted"]))
    roles = fields.List(fields.String(), load_default=list)
    name = _text()
    given_name = _text()
    family_name = _text()
    email = _text()
    lis_person_sourcedid = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> Member:
        data["roles"] = tuple(data["roles"])
        data["email"] = data["email"] or None
        data["lis_person_sourcedid"] = data["lis_person_sourcedid"] or None
        return Member(**data)


# --------------------------------------------------------------------------- AGS


@dataclass(frozen=True, slots=True)
class LineItem:
    id: str
    label: str
    score_maximum: float
    resource_id: str | None
    resource_link_id: str | None
    tag: str | None
    start: datetime | None
    end: datetime | None


class LineItemSchema(_Base):
    """``application/vnd.ims.lis.v2.lineitem+json``."""

    id = fields.String(required=True, validate=validate.Length(min=1))
    label = fields.String(required=True)
    scoreMaximum = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))  # noqa: N815
    resourceId = _text()  # noqa: N815
    resourceLinkId = _text()  # noqa: N815
    tag = _text()
    startDateTime = IsoDateTime(load_default=None, allow_none=True)  # noqa: N815
    endDateTime = IsoDateTime(load_default=None, allow_none=True)  # noqa: N815

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> LineItem:
        return LineItem(
            id=data["id"],
            label=data["label"],
            score_maximum=data["scoreMaximum"],
            resource_id=data["resourceId"] or None,
            resource_link_id=data["resourceLinkId"] or None,
            tag=data["tag"] or None,
            start=data["startDateTime"],
            end=data["endDateTime"],
        )


@dataclass(frozen=True, slots=True)
class AgsResult:
    id: str | None
    user_id: str
    score: float | None
    maximum: float | None
    comment: str | None
    line_item: str | None


class ResultSchema(_Base):
    """One element of ``application/vnd.ims.lis.v2.resultcontainer+json``."""

    id = _text()
    scoreOf = _text()  # noqa: N815
    userId = fields.String(required=True, validate=validate.Length(min=1))  # noqa: N815
    resultScore = fields.Float(load_default=None, allow_none=True)  # noqa: N815
    resultMaximum = fields.Float(load_default=None, allow_none=True)  # noqa: N815
    comment = _text()

    @post_load
    def make(self, data: dict[str, Any], **_: Any) -> AgsResult:
        return AgsResult(id=data["id"], user_id=data["userId"], score=data["resultScore"],
                         maximum=data["resultMaximum"], comment=data["comment"] or None,
                         line_item=data["scoreOf"])


# --------------------------------------------------------------------------- helpers


def load_each(schema: Schema, items: Iterable[Any], kind: str, id_key: str = "id") -> Iterator[Any]:
    """Validate each element; yield the loaded object or a ``Rejected`` naming the element."""
    for raw in items:
        try:
            yield schema.load(raw)
        except ValidationError as exc:
            field, reason = first_error(exc.messages)
            record_id = raw.get(id_key) if isinstance(raw, Mapping) else None
            yield Rejected(kind=kind, record_id=None if record_id is None else str(record_id), field=field,
                           reason=reason)
