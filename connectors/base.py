"""The connector contract: canonical records, capabilities, write items and typed errors.

Every connector translates its vendor's payloads into these frozen records (OneRoster-shaped) and
back. Ids inside a record are the *source's own* ids (``sourced_id``); the sync engine maps them to
canonical rows through per-source external references, and uses ``sis_id`` (the cross-system key:
OneRoster sourcedId = Canvas ``sis_user_id`` = Moodle ``idnumber``) to recognise one person, class or
course across sources.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Protocol, runtime_checkable

ACTIVE = "active"
TOBEDELETED = "tobedeleted"


class Scope(enum.StrEnum):
    """What a pull covers."""

    ROSTER = "roster"  # orgs, sessions, courses, classes, people, enrollments, guardians
    CONTENT = "content"  # modules, activities (line items), competencies, alignments
    PROGRESS = "progress"  # results / evidence, completion
    ALL = "all"

    def includes(self, other: Scope) -> bool:
        return self is Scope.ALL or self is other


class Capability(enum.StrEnum):
    """What a connector can do; the engine only asks for what is declared."""

    READ_ROSTER = "read:roster"
    READ_CONTENT = "read:content"
    READ_PROGRESS = "read:progress"
    READ_DELTA = "read:delta"  # pull(since=...) returns only changes
    WRITE_SCORES = "write:scores"
    WRITE_GATES = "write:gates"
    WRITE_MESSAGES = "write:messages"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Org:
    sourced_id: str
    name: str
    type: str = "school"  # district | school | department | local | state | national
    identifier: str | None = None
    parent_sourced_id: str | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class AcademicSession:
    sourced_id: str
    title: str
    type: str = "term"  # schoolYear | semester | term | gradingPeriod
    start_date: date | None = None
    end_date: date | None = None
    parent_sourced_id: str | None = None
    school_year: str | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Course:
    sourced_id: str
    title: str
    course_code: str | None = None
    org_sourced_id: str | None = None
    sis_id: str | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Class:
    sourced_id: str
    title: str
    course_sourced_id: str | None = None
    school_sourced_id: str | None = None
    term_sourced_ids: tuple[str, ...] = ()
    class_code: str | None = None
    sis_id: str | None = None
    lti_context_id: str | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Person:
    sourced_id: str
    role: str  # student | teacher | parent | guardian | relative | aide | administrator
    given_name: str = ""
    family_name: str = ""
    email: str | None = None
    username: str | None = None
    sis_id: str | None = None
    lti_sub: str | None = None
    grades: tuple[str, ...] = ()
    enabled: bool = True
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Enrollment:
    sourced_id: str
    class_sourced_id: str
    person_sourced_id: str
    role: str  # student | teacher | aide | administrator | proctor | guardian | parent
    primary: bool = False
    begin_date: date | None = None
    end_date: date | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class GuardianLink:
    guardian_sourced_id: str
    student_sourced_id: str
    relation: str = "parent"  # parent | guardian | relative
    status: str = ACTIVE

    @property
    def sourced_id(self) -> str:
        return f"{self.guardian_sourced_id}>{self.student_sourced_id}"


@dataclass(frozen=True, slots=True)
class Module:
    sourced_id: str
    class_sourced_id: str
    title: str
    position: int = 0
    prerequisite_sourced_ids: tuple[str, ...] = ()
    published: bool = True
    unlock_at: datetime | None = None
    status: str = ACTIVE
    # (activity sourced id, or None for an ungraded item; requirement type; min score) per item with a
    # completion requirement, e.g. ("812", "min_score", 8.0) or (None, "must_view", None)
    completion_requirements: tuple[tuple[str | None, str, float | None], ...] = ()
    # what the LMS itself demands before each item of the module opens (Moodle restrict access), per item that
    # can be restricted: (item title, ((activity sourced id, minimum percent of its range), …)), e.g.
    # ("Systems quiz", (("9001", 100.0),)); read back to confirm that a mastery gate is really enforced
    access_conditions: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class Activity:
    """A graded item (OneRoster lineItem, Canvas assignment, Moodle grade item)."""

    sourced_id: str
    class_sourced_id: str
    title: str
    module_sourced_id: str | None = None
    score_maximum: float | None = None
    due_at: datetime | None = None
    category: str | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Competency:
    """An outcome/standard with its scale and calculation method (Canvas's vocabulary)."""

    sourced_id: str
    title: str
    class_sourced_id: str | None = None
    description: str = ""
    points_possible: float = 0.0
    mastery_points: float = 0.0
    ratings: tuple[tuple[float, str], ...] = ()
    calculation_method: str = "highest"
    calculation_int: int | None = None
    status: str = ACTIVE


@dataclass(frozen=True, slots=True)
class Alignment:
    activity_sourced_id: str
    competency_sourced_id: str
    status: str = ACTIVE

    @property
    def sourced_id(self) -> str:
        return f"{self.activity_sourced_id}~{self.competency_sourced_id}"


@dataclass(frozen=True, slots=True)
class Result:
    """A score for one person on one activity, or directly on a competency (outcome result)."""

    sourced_id: str
    person_sourced_id: str
    activity_sourced_id: str | None = None
    competency_sourced_id: str | None = None
    score: float | None = None
    score_maximum: float | None = None
    scored_at: datetime | None = None
    score_status: str = "fully graded"
    comment: str | None = None
    status: str = ACTIVE


Record = (
    Org | AcademicSession | Course | Class | Person | Enrollment | GuardianLink | Module | Activity
    | Competency | Alignment | Result
)

RECORD_KINDS: Mapping[type, str] = {
    Org: "org",
    AcademicSession: "academic_session",
    Course: "course",
    Class: "class",
    Person: "person",
    Enrollment: "enrollment",
    GuardianLink: "guardian_link",
    Module: "module",
    Activity: "activity",
    Competency: "competency",
    Alignment: "alignment",
    Result: "result",
}


def kind_of(record: Record) -> str:
    """Return the record kind name used in counts, refs and reports."""
    return RECORD_KINDS[type(record)]


# --------------------------------------------------------------------------- stream markers


@dataclass(frozen=True, slots=True)
class Complete:
    """Marks that every record of ``kind`` within ``within`` has been listed.

    The engine tombstones only rows a completed listing did not mention; a pull that fails before
    the marker removes nothing. ``within`` is a parent's sourced id (e.g. the class of an enrollment
    listing) or ``None`` for the whole source.
    """

    kind: str
    within: str | None = None
    within_kind: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A vendor payload that did not pass its schema; reported, never written."""

    kind: str
    record_id: str | None
    field: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Tombstone:
    """An explicit removal (OneRoster CSV delta ``tobedeleted``, Canvas ``deleted`` state)."""

    kind: str
    sourced_id: str


Item = Record | Complete | Rejected | Tombstone


# --------------------------------------------------------------------------- writes


@dataclass(frozen=True, slots=True)
class ScoreWrite:
    """Post a score for a person on an activity (AGS score or submission grade)."""

    class_sourced_id: str
    activity_sourced_id: str
    person_sourced_id: str
    score_given: float | None
    score_maximum: float
    timestamp: datetime
    comment: str | None = None
    activity_progress: str = "Completed"
    grading_progress: str = "FullyGraded"


@dataclass(frozen=True, slots=True)
class GateWrite:
    """Make a module require a minimum score on a mastery-check item before the next opens."""

    class_sourced_id: str
    module_sourced_id: str
    prerequisite_module_sourced_ids: tuple[str, ...]
    check_activity_sourced_id: str | None = None
    min_score: float | None = None


@dataclass(frozen=True, slots=True)
class MessageWrite:
    """Send a message through the LMS to people (Canvas Conversations, Moodle messages)."""

    recipient_sourced_ids: tuple[str, ...]
    subject: str
    body: str
    class_sourced_id: str | None = None


Write = ScoreWrite | GateWrite | MessageWrite


@dataclass(frozen=True, slots=True)
class PushResult:
    """What the remote system acknowledged for a write."""

    remote_id: str | None = None
    detail: Mapping[str, object] = field(default_factory=dict)


# --------------------------------------------------------------------------- errors


class ConnectorError(Exception):
    """Base class: something went wrong talking to a source."""

    retryable = False

    def __init__(self, message: str, *, source: str | None = None, status: int | None = None):
        super().__init__(message)
        self.source = source
        self.status = status


class ConfigurationError(ConnectorError):
    """The source's settings are wrong (missing token, bad URL); fix the district file."""


class AuthError(ConnectorError):
    """Credentials were refused (401, invalid token, missing permission)."""


class NotFound(ConnectorError):
    """The remote object does not exist."""


class RateLimited(ConnectorError):
    """The remote asked us to slow down."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object):
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UpstreamError(ConnectorError):
    """The remote failed (5xx, timeout, connection refused); worth retrying later."""

    retryable = True


class RemoteRejected(ConnectorError):
    """The remote understood and refused a write (4xx with a reason); retrying will not help."""


# --------------------------------------------------------------------------- protocol


@runtime_checkable
class Connector(Protocol):
    """One adapter per vendor; only it knows that vendor's quirks."""

    name: str
    kind: str
    capabilities: frozenset[Capability]

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream canonical records (parents before children), markers and rejections."""
        ...

    def push(self, write: Write) -> PushResult:
        """Apply one write remotely; raise a ConnectorError subclass on failure. Must be idempotent."""
        ...


def first_error(messages: object, prefix: str = "") -> tuple[str | None, str]:
    """Return ``(dotted field, reason)`` for the first problem in a marshmallow error tree (for ``Rejected``)."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            path = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            return first_error(value, path)
    if isinstance(messages, list) and messages:
        if all(isinstance(m, str) for m in messages):
            return (prefix or None), "; ".join(messages)
        return first_error(messages[0], prefix)
    return (prefix or None), str(messages)
