"""SQLAlchemy models: tenancy and LTI, the canonical (OneRoster-shaped) model, learning state, operations.

Every row that holds district data carries ``district_id``; queries always filter by it.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
PK = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json}


def _pk() -> Mapped[int]:
    return mapped_column(PK, primary_key=True, autoincrement=True)


def _district(*, index: bool = True) -> Mapped[int]:
    """The owning district; ``index=False`` where a composite index already leads with it."""
    return mapped_column(ForeignKey("district.id", ondelete="CASCADE"), index=index)


# ============================================================================ tenancy & LTI


class District(Base):
    __tablename__ = "district"
    id: Mapped[int] = _pk()
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Platform(Base):
    """An LMS registration, keyed by (issuer, client_id): Canvas Cloud shares one issuer."""

    __tablename__ = "platform"
    __table_args__ = (UniqueConstraint("issuer", "client_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    issuer: Mapped[str] = mapped_column(String(255))
    client_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255), default="")
    product_family: Mapped[str] = mapped_column(String(64), default="")  # canvas | moodle | sandbox | …
    auth_login_url: Mapped[str] = mapped_column(Text)
    auth_token_url: Mapped[str] = mapped_column(Text)
    auth_audience: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_set_url: Mapped[str] = mapped_column(Text)
    registered_via: Mapped[str] = mapped_column(String(32), default="manual")  # manual | dynamic | config
    registration: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what the platform returned
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Deployment(Base):
    __tablename__ = "deployment"
    __table_args__ = (UniqueConstraint("platform_id", "deployment_id"),)
    id: Mapped[int] = _pk()
    platform_id: Mapped[int] = mapped_column(ForeignKey("platform.id", ondelete="CASCADE"), index=True)
    deployment_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PlatformKeySet(Base):
    """A platform's JWKS, cached with the expiry its HTTP cache headers allow."""

    __tablename__ = "platform_key_set"
    platform_id: Mapped[int] = mapped_column(ForeignKey("platform.id", ondelete="CASCADE"), primary_key=True)
    jwks: Mapped[dict[str, Any]] = mapped_column()
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RegistrationInvite(Base):
    """A one-time code that lets one platform complete Dynamic Registration."""

    __tablename__ = "registration_invite"
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    code_hash: Mapped[str] = mapped_column(String(128), unique=True)
    note: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    used_by_platform_id: Mapped[int | None] = mapped_column(
        ForeignKey("platform.id", ondelete="SET NULL"), nullable=True
    )


class ToolKey(Base):
    """Trailmark's RSA signing keys. ``active`` signs; ``retiring`` stays in the JWKS; ``retired`` is gone."""

    __tablename__ = "tool_key"
    id: Mapped[int] = _pk()
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    private_pem: Mapped[bytes] = mapped_column(LargeBinary)
    public_jwk: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LoginState(Base):
    """One OIDC login in flight: the state and nonce we issued, bound to a platform. Single use."""

    __tablename__ = "login_state"
    state: Mapped[str] = mapped_column(String(128), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(128), unique=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platform.id", ondelete="CASCADE"))
    target_link_uri: Mapped[str] = mapped_column(Text)
    storage: Mapped[str] = mapped_column(String(16), default="cookie")  # cookie | platform
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class UsedNonce(Base):
    """Nonces already accepted in an id_token; a replay finds its row and is refused."""

    __tablename__ = "used_nonce"
    nonce: Mapped[str] = mapped_column(String(128), primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platform.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class AppSession(Base):
    """Trailmark's own session after a launch, bound to (platform, deployment, context, user, roles)."""

    __tablename__ = "app_session"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the bearer secret
    district_id: Mapped[int] = _district()
    platform_id: Mapped[int | None] = mapped_column(ForeignKey("platform.id", ondelete="CASCADE"), nullable=True)
    deployment_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    context_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    user_sub: Mapped[str] = mapped_column(String(255))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), nullable=True)
    class_id: Mapped[int | None] = mapped_column(ForeignKey("class.id", ondelete="SET NULL"), nullable=True)
    view: Mapped[str] = mapped_column(String(16))  # teacher | student | parent | admin
    roles: Mapped[list[Any]] = mapped_column(default=list)
    claims: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the few launch facts panels use
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# ============================================================================ canonical model


class Source(Base):
    """A configured feed (Canvas, Moodle, OneRoster REST/CSV, LTI NRPS/AGS) of one district."""

    __tablename__ = "source"
    __table_args__ = (UniqueConstraint("district_id", "name"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    schedule: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cursor: Mapped[dict[str, Any]] = mapped_column(default=dict)  # delta watermarks, resume points
    paused_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the sync lease: one run per source at a time, across processes (taken with a conditional UPDATE)
    lock_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lock_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # a run asked for from the admin console: the scheduler's next poll starts it and clears the request
    sync_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sync_requested_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sync_requested_full: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Canonical:
    """Columns shared by canonical rows."""

    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district(index=False)  # led by unique (district_id, sourced_id)
    sourced_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | tobedeleted
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Org(_Canonical, Base):
    __tablename__ = "org"
    __table_args__ = (UniqueConstraint("district_id", "sourced_id"),)
    name: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(32), default="school")
    identifier: Mapped[str | None] = mapped_column(String(255), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("org.id"), nullable=True)


class AcademicSession(_Canonical, Base):
    __tablename__ = "academic_session"
    __table_args__ = (UniqueConstraint("district_id", "sourced_id"),)
    title: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(32), default="term")
    start_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    end_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("academic_session.id"), nullable=True)
    school_year: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Course(_Canonical, Base):
    __tablename__ = "course"
    __table_args__ = (
        UniqueConstraint("district_id", "sourced_id"),
        Index("ix_course_sis_id", "district_id", "sis_id"),
    )
    title: Mapped[str] = mapped_column(String(255))
    course_code: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sis_id: Mapped[str | None] = mapped_column(String(255), nullable=True)  # one course across sources
    org_id: Mapped[int | None] = mapped_column(ForeignKey("org.id"), nullable=True)


class Class(_Canonical, Base):
    __tablename__ = "class"
    __table_args__ = (
        UniqueConstraint("district_id", "sourced_id"),
        Index("ix_class_lti_context", "district_id", "lti_context_id"),
        Index("ix_class_sis_id", "district_id", "sis_id"),
    )
    title: Mapped[str] = mapped_column(String(255))
    class_code: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sis_id: Mapped[str | None] = mapped_column(String(255), nullable=True)  # one class across sources
    course_id: Mapped[int | None] = mapped_column(ForeignKey("course.id"), nullable=True)
    school_id: Mapped[int | None] = mapped_column(ForeignKey("org.id"), nullable=True)
    term_id: Mapped[int | None] = mapped_column(ForeignKey("academic_session.id"), nullable=True)
    lti_context_id: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Person(_Canonical, Base):
    __tablename__ = "person"
    __table_args__ = (
        UniqueConstraint("district_id", "sourced_id"),
        Index("ix_person_sis_id", "district_id", "sis_id"),
    )
    role: Mapped[str] = mapped_column(String(32))
    given_name: Mapped[str] = mapped_column(String(255), default="")
    family_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(255), nullable=True, index=True)
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    sis_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)

    @property
    def display_name(self) -> str:
        return f"{self.given_name} {self.family_name}".strip() or self.sourced_id


class ExternalRef(Base):
    """Maps one system's id for a canonical row to that row (a source name, or ``lti:<platform id>``)."""

    __tablename__ = "external_ref"
    __table_args__ = (
        UniqueConstraint("district_id", "kind", "namespace", "external_id"),
        Index("ix_external_ref_entity", "kind", "entity_id"),
    )
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district(index=False)  # led by the unique key
    kind: Mapped[str] = mapped_column(String(32))
    namespace: Mapped[str] = mapped_column(String(96))
    external_id: Mapped[str] = mapped_column(String(255))
    entity_id: Mapped[int] = mapped_column(PK)
    fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the last applied record
    status: Mapped[str] = mapped_column(String(16), default="active")
    last_seen_run_id: Mapped[int | None] = mapped_column(PK, nullable=True)


class Enrollment(_Canonical, Base):
    __tablename__ = "enrollment"
    __table_args__ = (
        UniqueConstraint("district_id", "sourced_id"),
        Index("ix_enrollment_class", "class_id", "role"),
        Index("ix_enrollment_person", "person_id"),
    )
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32))
    primary: Mapped[bool] = mapped_column(Boolean, default=False)
    begin_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    end_date: Mapped[date | None] = mapped_column(Date, nullable=True)


class GuardianLink(_Canonical, Base):
    __tablename__ = "guardian_link"
    __table_args__ = (
        UniqueConstraint("district_id", "sourced_id"),
        Index("ix_guardian_link_guardian", "guardian_id"),
        Index("ix_guardian_link_student", "student_id"),
    )
    guardian_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    student_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    relation: Mapped[str] = mapped_column(String(32), default="parent")


class Module(_Canonical, Base):
    __tablename__ = "module"
    __table_args__ = (UniqueConstraint("district_id", "sourced_id"), Index("ix_module_class", "class_id"))
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer, default=0)
    prerequisite_ids: Mapped[list[Any]] = mapped_column(default=list)  # canonical module ids
    published: Mapped[bool] = mapped_column(Boolean, default=True)
    # what the LMS itself demands before each item opens: [[item title, [[activity sourced id, min %], …]], …]
    access_conditions: Mapped[list[Any]] = mapped_column(default=list)


class Activity(_Canonical, Base):
    __tablename__ = "activity"
    __table_args__ = (UniqueConstraint("district_id", "sourced_id"), Index("ix_activity_class", "class_id"))
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    module_id: Mapped[int | None] = mapped_column(ForeignKey("module.id", ondelete="SET NULL"), nullable=True)
    title: Mapped[str] = mapped_column(String(255))
    score_maximum: Mapped[float | None] = mapped_column(Float, nullable=True)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    category: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Competency(_Canonical, Base):
    __tablename__ = "competency"
    __table_args__ = (UniqueConstraint("district_id", "sourced_id"), Index("ix_competency_class", "class_id"))
    class_id: Mapped[int | None] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"), nullable=True)
    title: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    points_possible: Mapped[float] = mapped_column(Float, default=0.0)
    mastery_points: Mapped[float] = mapped_column(Float, default=0.0)
    ratings: Mapped[list[Any]] = mapped_column(default=list)
    calculation_method: Mapped[str] = mapped_column(String(32), default="highest")
    calculation_int: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Alignment(_Canonical, Base):
    __tablename__ = "alignment"
    __table_args__ = (UniqueConstraint("district_id", "sourced_id"),)
    activity_id: Mapped[int] = mapped_column(ForeignKey("activity.id", ondelete="CASCADE"), index=True)
    competency_id: Mapped[int] = mapped_column(ForeignKey("competency.id", ondelete="CASCADE"), index=True)


class Result(_Canonical, Base):
    """Evidence: a score on an activity, or an outcome result on a competency."""

    __tablename__ = "result"
    __table_args__ = (
        UniqueConstraint("district_id", "sourced_id"),
        Index("ix_result_person", "person_id"),
        Index("ix_result_activity", "activity_id"),
    )
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    activity_id: Mapped[int | None] = mapped_column(ForeignKey("activity.id", ondelete="CASCADE"), nullable=True)
    competency_id: Mapped[int | None] = mapped_column(
        ForeignKey("competency.id", ondelete="CASCADE"), nullable=True
    )
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_maximum: Mapped[float | None] = mapped_column(Float, nullable=True)
    scored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    score_status: Mapped[str] = mapped_column(String(32), default="fully graded")
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    origin: Mapped[str] = mapped_column(String(32), default="sync")  # sync | ags | teacher


# ============================================================================ operations


class SyncRun(Base):
    __tablename__ = "sync_run"
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    source_id: Mapped[int] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(16))
    full: Mapped[bool] = mapped_column(Boolean, default=False)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed | needs_confirm | skipped
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)  # kind → {added, updated, …}
    errors: Mapped[list[Any]] = mapped_column(default=list)


class OutboxItem(Base):
    """A durable write to an LMS or SIS, retried with backoff until acknowledged."""

    __tablename__ = "outbox_item"
    __table_args__ = (
        UniqueConstraint("district_id", "idempotency_key"),
        Index("ix_outbox_due", "status", "next_attempt_at"),
    )
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    source_id: Mapped[int | None] = mapped_column(ForeignKey("source.id", ondelete="CASCADE"), nullable=True)
    platform_id: Mapped[int | None] = mapped_column(ForeignKey("platform.id", ondelete="CASCADE"), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))  # score | gate | message
    idempotency_key: Mapped[str] = mapped_column(String(255))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    remote_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_district_time", "district_id", "at"),
                      Index("ix_audit_subject", "district_id", "subject"))
    id: Mapped[int] = _pk()
    district_id: Mapped[int | None] = mapped_column(
        ForeignKey("district.id", ondelete="CASCADE"), nullable=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))  # "person:12", "cli", "platform:3"
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Erasure(Base):
    """One erasure on request: the anonymised person it left, and whether the family has since lifted it."""

    __tablename__ = "erasure"
    __table_args__ = (Index("ix_erasure_person", "person_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"), nullable=True)
    role_group: Mapped[str] = mapped_column(String(16))  # learner | staff | family: e-mail matches stay within it
    sis_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a different SIS id is someone else
    key_id: Mapped[str] = mapped_column(String(16))  # which secret keyed the digests
    ref_ids: Mapped[list[Any]] = mapped_column(default=list)  # external_ref rows marked erased, freed on lifting
    erased_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    erased_by: Mapped[str] = mapped_column(String(255))
    lifted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    lifted_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ErasedIdentifier(Base):
    """A keyed hash (HMAC-SHA256) of one identifier of an erased person, never the identifier itself."""

    __tablename__ = "erased_identifier"
    __table_args__ = (Index("ix_erased_identifier_digest", "district_id", "digest"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district(index=False)  # led by the digest index
    erasure_id: Mapped[int] = mapped_column(ForeignKey("erasure.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # sis_id | email | username | ref
    digest: Mapped[str] = mapped_column(String(64))


# ============================================================================ sandbox LMS


class SandboxResourceLink(Base):
    """A Trailmark link placed in the sandbox course (by deep linking or at seeding)."""

    __tablename__ = "sandbox_resource_link"
    id: Mapped[int] = _pk()
    context_id: Mapped[str] = mapped_column(String(255), index=True)
    title: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text)
    custom: Mapped[dict[str, Any]] = mapped_column(default=dict)
    line_item_id: Mapped[int | None] = mapped_column(ForeignKey("sandbox_line_item.id", ondelete="SET NULL"),
                                                     nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SandboxLineItem(Base):
    """A gradebook column of the sandbox course (AGS line item)."""

    __tablename__ = "sandbox_line_item"
    id: Mapped[int] = _pk()
    context_id: Mapped[str] = mapped_column(String(255), index=True)
    label: Mapped[str] = mapped_column(String(255))
    score_maximum: Mapped[float] = mapped_column(Float)
    resource_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    resource_link_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tag: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SandboxScore(Base):
    """The latest score a tool posted for one user on one sandbox line item."""

    __tablename__ = "sandbox_score"
    __table_args__ = (UniqueConstraint("line_item_id", "user_id"),)
    id: Mapped[int] = _pk()
    line_item_id: Mapped[int] = mapped_column(ForeignKey("sandbox_line_item.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255))
    score_given: Mapped[float | None] = mapped_column(Float, nullable=True)
    score_maximum: Mapped[float | None] = mapped_column(Float, nullable=True)
    activity_progress: Mapped[str] = mapped_column(String(32))
    grading_progress: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SignInLink(Base):
    """An emailed, expiring, single-use sign-in link (parents whose LMS sends no Mentor launch)."""

    __tablename__ = "sign_in_link"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token in the link
    district_id: Mapped[int] = _district()
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# ============================================================================ learning state


class MasteryRecord(Base):
    """A student's current score on a competency in a class (recomputed after every sync and score)."""

    __tablename__ = "mastery"
    __table_args__ = (UniqueConstraint("class_id", "person_id", "competency_id"),
                      Index("ix_mastery_person", "person_id"))
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    competency_id: Mapped[int] = mapped_column(ForeignKey("competency.id", ondelete="CASCADE"))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    evidence_count: Mapped[int] = mapped_column(Integer, default=0)
    mastered: Mapped[bool] = mapped_column(Boolean, default=False)
    level: Mapped[str | None] = mapped_column(String(64), nullable=True)
    latest_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GateRecord(Base):
    """Whether a module is open for a student, why, and when it first opened."""

    __tablename__ = "gate_state"
    __table_args__ = (UniqueConstraint("person_id", "module_id"), Index("ix_gate_class", "class_id"))
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    module_id: Mapped[int] = mapped_column(ForeignKey("module.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # locked | open | complete
    reason: Mapped[str] = mapped_column(String(32))
    missing: Mapped[list[Any]] = mapped_column(default=list)
    opened_by_mastery: Mapped[bool] = mapped_column(Boolean, default=False)
    opened_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GateOverrideRecord(Base):
    """A teacher's decision about one student's module: shown mastery another way, accommodation, or closed."""

    __tablename__ = "gate_override"
    __table_args__ = (Index("ix_gate_override_class", "class_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    module_id: Mapped[int] = mapped_column(ForeignKey("module.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    author_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class PacePlanRecord(Base):
    """A class's pace plan: term dates and the teacher's edits to module due dates (evenly spread otherwise)."""

    __tablename__ = "pace_plan"
    __table_args__ = (UniqueConstraint("class_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    start_date: Mapped[date | None] = mapped_column(Date, nullable=True)  # None: the term's dates
    end_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    due_edits: Mapped[dict[str, Any]] = mapped_column(default=dict)  # module id → ISO date
    skip_weekends: Mapped[bool] = mapped_column(Boolean, default=True)
    skip_dates: Mapped[list[Any]] = mapped_column(default=list)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"), nullable=True)


class AccommodationRecord(Base):
    """Per-student pace accommodation (extended dates)."""

    __tablename__ = "pace_accommodation"
    __table_args__ = (UniqueConstraint("class_id", "person_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    extra_days: Mapped[int] = mapped_column(Integer, default=0)
    factor: Mapped[float] = mapped_column(Float, default=1.0)
    note: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PaceRecord(Base):
    """A student's pace in a class against the minimum-pace line."""

    __tablename__ = "pace_status"
    __table_args__ = (UniqueConstraint("class_id", "person_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))  # on_track | behind | ahead | …
    phase: Mapped[str] = mapped_column(String(16))
    completed: Mapped[int] = mapped_column(Integer, default=0)
    expected: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    modules_behind: Mapped[int] = mapped_column(Integer, default=0)
    days_behind: Mapped[int] = mapped_column(Integer, default=0)
    modules_ahead: Mapped[int] = mapped_column(Integer, default=0)
    days_ahead: Mapped[int] = mapped_column(Integer, default=0)
    next_due: Mapped[date | None] = mapped_column(Date, nullable=True)
    projected_finish: Mapped[date | None] = mapped_column(Date, nullable=True)
    accommodated: Mapped[bool] = mapped_column(Boolean, default=False)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertRecord(Base):
    """A pace or mastery alert: one open alert per (student, class, kind), escalating, resolved when cleared."""

    __tablename__ = "alert"
    __table_args__ = (Index("ix_alert_open", "class_id", "resolved_at"), Index("ix_alert_person", "person_id"))
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[int] = mapped_column(Integer, default=1)
    detail: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    notified_level: Mapped[int] = mapped_column(Integer, default=0)


class ProfileEntryRecord(Base):
    """What a student (or a teacher with them) writes in the profile: interests, aspirations, goals, notes."""

    __tablename__ = "profile_entry"
    __table_args__ = (Index("ix_profile_entry_person", "person_id"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # interest | aspiration | goal | strength | weakness | note
    text: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"), nullable=True)
    author_role: Mapped[str] = mapped_column(String(16))
    target_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    competency_id: Mapped[int | None] = mapped_column(ForeignKey("competency.id", ondelete="SET NULL"),
                                                      nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProfileSnapshotRecord(Base):
    """The learner profile as it stood on one day (one row per student, class and day): growth over a term."""

    __tablename__ = "profile_snapshot"
    __table_args__ = (UniqueConstraint("class_id", "person_id", "taken_on"),)
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    taken_on: Mapped[date] = mapped_column(Date)
    data: Mapped[dict[str, Any]] = mapped_column()


class CheckPostRecord(Base):
    """The last mastery-check score queued for a student, so a gate is never re-posted or lowered by mistake."""

    __tablename__ = "check_post"
    __table_args__ = (UniqueConstraint("person_id", "activity_id"), Index("ix_check_post_class", "class_id"))
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"))
    activity_id: Mapped[int] = mapped_column(ForeignKey("activity.id", ondelete="CASCADE"))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LmsGateRecord(Base):
    """How far a mastery gate is set up in the LMS itself: one row per gated module and mastery check."""

    __tablename__ = "lms_gate"
    __table_args__ = (UniqueConstraint("module_id", "check_activity_id"), Index("ix_lms_gate_class", "class_id"),
                      Index("ix_lms_gate_outbox", "outbox_key"))
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    class_id: Mapped[int] = mapped_column(ForeignKey("class.id", ondelete="CASCADE"))
    module_id: Mapped[int] = mapped_column(ForeignKey("module.id", ondelete="CASCADE"))  # the module that opens
    after_module_id: Mapped[int] = mapped_column(ForeignKey("module.id", ondelete="CASCADE"))  # holds the check
    check_activity_id: Mapped[int] = mapped_column(ForeignKey("activity.id", ondelete="CASCADE"))
    lms: Mapped[str] = mapped_column(String(16))  # canvas | moodle
    status: Mapped[str] = mapped_column(String(16))  # queued | applied | failed | needs_teacher
    detail: Mapped[str] = mapped_column(Text, default="")
    setup: Mapped[dict[str, Any]] = mapped_column(default=dict)  # what was asked of the LMS, or of the teacher
    outbox_key: Mapped[str | None] = mapped_column(String(255), nullable=True)  # the GateWrite's idempotency key
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# ============================================================================ admin console


class AdminUser(Base):
    """A local administrator of one district (district IT) who signs in at /admin/login with a password."""

    __tablename__ = "admin_user"
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    username: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))  # werkzeug.security (scrypt)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiToken(Base):
    """A bearer token for the admin JSON API of one district; only its SHA-256 is stored."""

    __tablename__ = "api_token"
    id: Mapped[int] = _pk()
    district_id: Mapped[int] = _district()
    name: Mapped[str] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell tokens apart in lists
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RateLimit(Base):
    """A fixed-window counter shared by every worker (failed admin sign-ins per account and per address)."""

    __tablename__ = "rate_limit"
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    count: Mapped[int] = mapped_column(Integer, default=0)
