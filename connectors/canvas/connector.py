"""The Canvas connector: translate Canvas REST payloads into canonical records and writes back.

Mapping decisions:

- A Canvas **course is a Trailmark Class**: enrollments, modules, assignments, outcomes and the LTI context
  all live on the course. Canvas has no catalog course separate from the running one, so no ``Course``
  records are emitted (``Class.course_sourced_id`` stays empty). **Sections are not read**: they only
  subdivide a course's roster (and cross-listing moves them between courses), while every enrollment
  already names its course; mapping them to Classes would split one gradebook and one set of modules
  across several Classes.
- Terms (``include[]=term`` on the course listing) become AcademicSessions; the configured account is the
  Org. People come from the enrollment listing's embedded user (``sis_user_id`` → ``sis_id``,
  ``login_id`` → ``username``); their role is that of the first enrollment seen, in course order.
- Observer enrollments become ``parent`` enrollments plus a GuardianLink to ``associated_user_id``; the
  Test Student (``StudentViewEnrollment``) is dropped everywhere, results included.
- Modules carry prerequisites and completion requirements; assignments are Activities (placed in the
  module whose item points at them); rubric criteria aligned to outcomes are Alignments; outcomes linked
  into a course are Competencies; submissions and outcome results are Results.
- An ``external_tool`` assignment whose launch URL (``external_tool_tag_attributes.url``) is one of this
  Trailmark's mastery checks (``tool_url``; see connectors/mastery_check.py) is an Activity of category
  ``trailmark-mastery-check``; other assignments have no category.

Courses are worked on by a pool of ``concurrency`` threads; results stream back in course order with at
most ``4 × concurrency`` courses buffered. ``concurrency`` is also the most requests the connector has in
flight at once (the course listing, read on the calling thread, shares those slots with the pool).
``Complete`` markers follow each listing that was read to the end with nothing rejected; whole-account
markers (people, guardian links, competencies) only follow a pull in which every course listing
completed, so one bad course never causes removals elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import chain
from typing import Any, TypeVar

import requests
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from connectors.base import (
    AcademicSession,
    Activity,
    Alignment,
    AuthError,
    Capability,
    Class,
    Competency,
    Complete,
    ConfigurationError,
    ConnectorError,
    Enrollment,
    GateWrite,
    GuardianLink,
    Item,
    MessageWrite,
    Module,
    NotFound,
    Org,
    Person,
    PushResult,
    Rejected,
    RemoteRejected,
    Result,
    Scope,
    ScoreWrite,
    Write,
    first_error,
)
from connectors.canvas import schemas
from connectors.canvas.client import CanvasClient
from connectors.mastery_check import CHECK_CATEGORY, is_check_url

log = logging.getLogger(__name__)

ROLE_BY_TYPE = {
    "StudentEnrollment": "student",
    "TeacherEnrollment": "teacher",
    "TaEnrollment": "aide",
    "ObserverEnrollment": "parent",
}
TEST_STUDENT = "StudentViewEnrollment"
ENROLLMENT_TYPES = (*ROLE_BY_TYPE, TEST_STUDENT)
ENROLLMENT_STATES = ("active", "invited", "completed")  # concluded courses keep their rosters
BULK_THRESHOLD = 100  # Canvas needs bulk_message for more private conversations than this
_END = object()
T = TypeVar("T")


class _OAuthSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    client_id = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    refresh_token = fields.String(required=True, validate=validate.Length(min=1))


class _IdText(fields.String):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return super()._deserialize(value, attr, data, **kwargs)


class CanvasSourceSchema(Schema):
    """The keys of a ``kind = "canvas"`` source in the district file (secrets already resolved)."""

    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True)
    kind = fields.String(load_default="canvas", validate=validate.Equal("canvas"))
    base_url = fields.Url(required=True, require_tld=False, schemes={"http", "https"})
    token = fields.String(load_default=None, allow_none=True)
    account_id = _IdText(required=True, validate=validate.Length(min=1))
    oauth = fields.Nested(_OAuthSchema, load_default=None, allow_none=True)
    concurrency = fields.Integer(load_default=8, validate=validate.Range(1, 32))
    per_page = fields.Integer(load_default=100, validate=validate.Range(1, 100))
    # Trailmark's public base URL as the LMS knows it: its deep-linked mastery checks launch below it
    tool_url = fields.Url(load_default=None, allow_none=True, require_tld=False, schemes={"http", "https"})


@dataclass
class _Batch:
    """Everything one course contributed, in emission order, plus what completed."""

    course_id: str
    items: list[Item] = field(default_factory=list)
    roster_complete: bool = True
    content_complete: bool = True
    progress_complete: bool = True
    test_students: set[str] = field(default_factory=set)
    points: dict[str, float | None] = field(default_factory=dict)  # assignment id → points possible


@dataclass
class _PullState:
    persons: set[int] = field(default_factory=set)
    links: set[tuple[str, str]] = field(default_factory=set)
    competencies: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    roster_complete: bool = True
    content_complete: bool = True
    classes_complete: bool = True


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


def _number(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def _names(user: Mapping[str, Any]) -> tuple[str, str]:
    sortable = user.get("sortable_name") or ""
    if ", " in sortable:
        family, given = sortable.split(", ", 1)
        return given.strip(), family.strip()
    parts = (user.get("name") or "").strip().rsplit(" ", 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")


def _skippable(exc: ConnectorError) -> bool:
    """Whether a failed per-course listing is reported and skipped rather than failing the pull."""
    return isinstance(exc, NotFound) or (isinstance(exc, AuthError) and exc.status == 403)


class CanvasConnector:
    """Canvas REST connector (admin token or OAuth2 refresh token) for one root or sub-account."""

    kind = "canvas"
    capabilities = frozenset({
        Capability.READ_ROSTER,
        Capability.READ_CONTENT,
        Capability.READ_PROGRESS,
        Capability.WRITE_SCORES,
        Capability.WRITE_GATES,
        Capability.WRITE_MESSAGES,
    })

    def __init__(
        self,
        name: str,
        base_url: str,
        *,
        account_id: str | int,
        token: str | None = None,
        oauth: Mapping[str, str] | None = None,
        concurrency: int = 8,
        per_page: int = 100,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] = (5.0, 30.0),
        max_retries: int = 5,
        tool_url: str | None = None,
    ) -> None:
        self.name = name
        self.account_id = str(account_id)
        self.concurrency = max(1, int(concurrency))
        self.tool_url = tool_url
        self.client = CanvasClient(base_url, source=name, token=token, oauth=oauth, per_page=per_page,
                                   pool_size=self.concurrency + 2, sleep=sleep, session=session,
                                   timeout=timeout, max_retries=max_retries, max_in_flight=self.concurrency)
        self._points: dict[tuple[str, str], float | None] = {}
        self._points_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **kw: Any) -> CanvasConnector:
        """Build a connector from a district-file source (secrets already resolved)."""
        try:
            data = CanvasSourceSchema().load(dict(cfg))
        except ValidationError as exc:
            where, why = first_error(exc.messages)
            name = cfg.get("name", "canvas")
            raise ConfigurationError(f"{name}: {where}: {why}", source=str(name)) from None
        if not data["token"] and not data["oauth"]:
            raise ConfigurationError(f"{data['name']}: set token (an admin access token) or oauth "
                                     "(client_id, client_secret, refresh_token)", source=data["name"])
        return cls(data["name"], data["base_url"], account_id=data["account_id"], token=data["token"],
                   oauth=data["oauth"], concurrency=data["concurrency"], per_page=data["per_page"],
                   tool_url=data["tool_url"], **kw)

    def close(self) -> None:
        """Release pooled connections."""
        self.client.close()

    # ================================================================== pull

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream the account's records for ``scope``; ``since`` is ignored (Canvas lists are full)."""
        state = _PullState()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"canvas-{self.name}")
        window: deque[Future[_Batch]] = deque()
        limit = 4 * self.concurrency
        try:
            org_id = self.account_id
            # the account is fetched alongside the first course page; it is still yielded first
            org_future = pool.submit(self._org) if scope.includes(Scope.ROSTER) else None
            for raw in chain(self.client.iter_courses(self.account_id), [_END]):
                if org_future is not None:
                    org = org_future.result()
                    org_future = None
                    yield org
                    if isinstance(org, Org):
                        org_id = org.sourced_id
                        yield Complete("org")
                if raw is _END:
                    break
                course = self._load(schemas.COURSE, raw, "class")
                if isinstance(course, Rejected):
                    state.classes_complete = state.roster_complete = state.content_complete = False
                    yield course
                    continue
                yield from self._class_records(course, org_id, state)
                window.append(pool.submit(self._course_batch, course["id"], scope))
                while len(window) >= limit:
                    yield from self._drain(window.popleft().result(), state)
            if state.classes_complete:
                yield Complete("academic_session")
                yield Complete("class")
            while window:
                yield from self._drain(window.popleft().result(), state)
            if scope.includes(Scope.ROSTER) and state.roster_complete:
                yield Complete("person")
                yield Complete("guardian_link")
            if scope.includes(Scope.CONTENT) and state.content_complete:
                yield Complete("competency")
        finally:
            for pending in window:
                pending.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _org(self) -> Org | Rejected:
        account = self._load(schemas.ACCOUNT, self.client.get_account(self.account_id), "org")
        if isinstance(account, Rejected):
            return account
        return Org(sourced_id=account["id"], name=account["name"], type="district",
                   identifier=account["sis_account_id"], parent_sourced_id=account["parent_account_id"])

    def _class_records(self, course: dict[str, Any], org_id: str, state: _PullState) -> Iterator[Item]:
        term = course["term"]
        term_id = course["enrollment_term_id"] or (term["id"] if term else None)
        if term and term["id"] not in state.sessions:
            state.sessions.add(term["id"])
            yield AcademicSession(sourced_id=term["id"], title=term["name"], type="term",
                                  start_date=_day(term["start_at"]), end_date=_day(term["end_at"]))
        yield Class(
            sourced_id=course["id"],
            title=course["name"],
            school_sourced_id=org_id if course["account_id"] == org_id else None,
            term_sourced_ids=(term_id,) if term_id else (),
            class_code=course["course_code"],
            sis_id=course["sis_course_id"],
        )

    def _drain(self, batch: _Batch, state: _PullState) -> Iterator[Item]:
        """Yield one course's items, dropping people, links and competencies already emitted."""
        state.roster_complete &= batch.roster_complete
        state.content_complete &= batch.content_complete
        for item in batch.items:
            if isinstance(item, Person):
                key = int(item.sourced_id)
                if key in state.persons:
                    continue
                state.persons.add(key)
            elif isinstance(item, GuardianLink):
                pair = (item.guardian_sourced_id, item.student_sourced_id)
                if pair in state.links:
                    continue
                state.links.add(pair)
            elif isinstance(item, Competency):
                if item.sourced_id in state.competencies:
                    continue
                state.competencies.add(item.sourced_id)
            yield item

    def _course_batch(self, course_id: str, scope: Scope) -> _Batch:
        """Read everything ``scope`` needs from one course (runs on a worker thread)."""
        batch = _Batch(course_id)
        if scope.includes(Scope.ROSTER):
            self._guard(batch, "enrollment", "roster_complete", lambda: self._roster(batch))
        if scope.includes(Scope.CONTENT):
            self._guard(batch, "module", "content_complete", lambda: self._content(batch))
        if scope.includes(Scope.PROGRESS):
            if not scope.includes(Scope.ROSTER):
                self._guard(batch, "result", "progress_complete", lambda: self._test_students(batch))
            if batch.progress_complete:
                self._guard(batch, "result", "progress_complete", lambda: self._progress(batch))
        return batch

    def _guard(self, batch: _Batch, kind: str, flag: str, work: Callable[[], None]) -> None:
        try:
            work()
        except ConnectorError as exc:
            if not _skippable(exc):
                raise
            log.warning("%s: course %s: %s", self.name, batch.course_id, exc)
            setattr(batch, flag, False)
            batch.items.append(Rejected(kind, batch.course_id, None, f"listing skipped: {exc}"))

    def _optional(self, batch: _Batch, kind: str, work: Callable[[], T]) -> T | None:
        """Run one listing; report and skip it if Canvas refuses it for this course (403, 404)."""
        try:
            return work()
        except ConnectorError as exc:
            if not _skippable(exc):
                raise
            log.warning("%s: course %s: %s", self.name, batch.course_id, exc)
            batch.items.append(Rejected(kind, batch.course_id, None, f"listing skipped: {exc}"))
            return None

    def _load_all(self, schema: Schema, rows: Iterable[Any], kind: str
                  ) -> Iterator[dict[str, Any] | Rejected]:
        """Load rows one by one (the compiled loader; marshmallow itself for a row it does not accept)."""
        for row in rows:
            yield self._load(schema, row, kind)

    def _load(self, schema: Schema, raw: Any, kind: str) -> dict[str, Any] | Rejected:
        try:
            return schemas.load(schema, raw)
        except ValidationError as exc:
            where, why = first_error(exc.messages)
            log.info("%s: rejected %s %s: %s: %s", self.name, kind, schemas.record_id(raw), where, why)
            return Rejected(kind, schemas.record_id(raw), where, why)

    # ------------------------------------------------------------------ roster

    def _roster(self, batch: _Batch) -> None:
        cid = batch.course_id
        persons: dict[str, Person] = {}
        enrollments: list[Enrollment] = []
        observed: dict[tuple[str, str], str] = {}
        rejected: list[Item] = []
        listing = self.client.iter_enrollments(cid, types=ENROLLMENT_TYPES, states=ENROLLMENT_STATES)
        for row in self._load_all(schemas.ENROLLMENT, listing, "enrollment"):
            if isinstance(row, Rejected):
                rejected.append(row)
                continue
            if row["type"] == TEST_STUDENT:
                batch.test_students.add(row["user_id"])
                continue
            role = ROLE_BY_TYPE.get(row["type"])
            if role is None:
                continue
            user = row["user"]
            if user is None:
                rejected.append(Rejected("enrollment", row["id"], "user", "enrollment without its user"))
                continue
            uid = row["user_id"]
            if uid not in persons:
                given, family = _names(user)
                persons[uid] = Person(sourced_id=uid, role=role, given_name=given, family_name=family,
                                      email=user["email"], username=user["login_id"],
                                      sis_id=user["sis_user_id"])
            enrollments.append(Enrollment(sourced_id=row["id"], class_sourced_id=cid, person_sourced_id=uid,
                                          role=role, begin_date=_day(row["start_at"]),
                                          end_date=_day(row["end_at"])))
            if row["type"] == "ObserverEnrollment" and row["associated_user_id"]:
                observed.setdefault((uid, row["associated_user_id"]), row["id"])
        batch.items.extend(rejected)
        batch.items.extend(persons.values())
        batch.items.extend(enrollments)
        for (guardian, student), enrollment_id in observed.items():
            if student in batch.test_students:
                continue
            if student in persons:
                batch.items.append(GuardianLink(guardian_sourced_id=guardian, student_sourced_id=student))
            else:
                batch.items.append(Rejected("guardian_link", f"{guardian}>{student}", "associated_user_id",
                                            f"observed user is not listed in course {cid} "
                                            f"(enrollment {enrollment_id})"))
        if rejected:
            batch.roster_complete = False
        else:
            batch.items.append(Complete("enrollment", within=cid, within_kind="class"))

    def _test_students(self, batch: _Batch) -> None:
        cid = batch.course_id
        for raw in self.client.iter_enrollments(cid, types=(TEST_STUDENT,), states=ENROLLMENT_STATES):
            if isinstance(raw, dict) and raw.get("user_id") is not None:
                batch.test_students.add(str(raw["user_id"]))

    # ------------------------------------------------------------------ content

    def _content(self, batch: _Batch) -> None:
        cid = batch.course_id
        complete = {"module": True, "activity": True, "competency": True, "alignment": True}
        rejected: list[Item] = []

        module_schema, item_schema = schemas.MODULE, schemas.MODULE_ITEM
        modules: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for raw in self.client.iter_modules(cid):
            module = self._load(module_schema, raw, "module")
            if isinstance(module, Rejected):
                rejected.append(module)
                complete["module"] = False
                continue
            items_raw: Iterable[Any] = module["items"] if module["items"] is not None else (
                self.client.iter_module_items(cid, module["id"]) if module["items_count"] else ())
            items = []
            for raw_item in items_raw:
                item = self._load(item_schema, raw_item, "module_item")
                if isinstance(item, Rejected):
                    rejected.append(item)
                    continue
                items.append(item)
            modules.append((module, items))
        modules.sort(key=lambda pair: pair[0]["position"] or 0)

        competencies: list[Competency] = []
        linked: set[str] = set()
        links = self._optional(batch, "competency", lambda: list(self.client.iter_outcome_links(cid)))
        if links is None:  # outcomes not readable with this token: keep modules and assignments
            complete["competency"] = complete["alignment"] = False
        for raw in links or ():
            link = self._load(schemas.OUTCOME_LINK, raw, "competency")
            if isinstance(link, Rejected):
                rejected.append(link)
                complete["competency"] = False
                continue
            outcome = link["outcome"]
            if outcome["id"] in linked:
                continue
            linked.add(outcome["id"])
            competencies.append(Competency(
                sourced_id=outcome["id"],
                title=outcome["display_name"] or outcome["title"],
                class_sourced_id=outcome["context_id"] if outcome["context_type"] == "Course" else None,
                description=outcome["description"] or "",
                points_possible=outcome["points_possible"] or 0.0,
                mastery_points=outcome["mastery_points"] or 0.0,
                ratings=tuple((r["points"], r["description"]) for r in outcome["ratings"] or ()),
                calculation_method=outcome["calculation_method"] or "highest",
                calculation_int=outcome["calculation_int"],
            ))

        assignments: list[dict[str, Any]] = []
        by_content: dict[tuple[str, str], str] = {}
        assignment_schema = schemas.ASSIGNMENT
        for raw in self.client.iter_assignments(cid):
            assignment = self._load(assignment_schema, raw, "activity")
            if isinstance(assignment, Rejected):
                rejected.append(assignment)
                complete["activity"] = complete["alignment"] = False
                continue
            assignments.append(assignment)
            by_content[("Assignment", assignment["id"])] = assignment["id"]
            if assignment["quiz_id"]:
                by_content[("Quiz", assignment["quiz_id"])] = assignment["id"]
            if assignment["discussion_topic"]:
                by_content[("Discussion", assignment["discussion_topic"]["id"])] = assignment["id"]

        module_of: dict[str, str] = {}
        records: list[Item] = []
        for module, items in modules:
            requirements = []
            for item in sorted(items, key=lambda i: i["position"] or 0):
                activity = by_content.get((item["type"], item["content_id"] or ""))
                if activity:
                    module_of.setdefault(activity, module["id"])
                req = item["completion_requirement"]
                if req:
                    requirements.append((activity, req["type"], req["min_score"]))
            records.append(Module(
                sourced_id=module["id"], class_sourced_id=cid, title=module["name"],
                position=module["position"] or 0,
                prerequisite_sourced_ids=tuple(module["prerequisite_module_ids"] or ()),
                published=bool(module["published"]) if module["published"] is not None else True,
                unlock_at=module["unlock_at"], completion_requirements=tuple(requirements),
            ))
        records.extend(competencies)
        alignments: list[Item] = []
        batch.points = {a["id"]: a["points_possible"] for a in assignments}
        for assignment in assignments:
            records.append(Activity(
                sourced_id=assignment["id"], class_sourced_id=cid, title=assignment["name"],
                module_sourced_id=module_of.get(assignment["id"]),
                score_maximum=assignment["points_possible"], due_at=assignment["due_at"],
                category=CHECK_CATEGORY if self._is_check(assignment) else None,
            ))
            aligned = (c["outcome_id"] for c in assignment["rubric"] or () if c["outcome_id"])
            for outcome_id in dict.fromkeys(aligned) if links is not None else ():
                if outcome_id in linked:
                    alignments.append(Alignment(activity_sourced_id=assignment["id"],
                                                competency_sourced_id=outcome_id))
                else:
                    alignments.append(Rejected("alignment", f"{assignment['id']}~{outcome_id}", "outcome_id",
                                               f"outcome {outcome_id} is not linked into course {cid}"))
        batch.items.extend(rejected)
        batch.items.extend(records)
        batch.items.extend(alignments)
        for kind in ("module", "activity", "alignment"):
            if complete[kind]:
                batch.items.append(Complete(kind, within=cid, within_kind="class"))
        batch.content_complete = all(complete.values())

    def _is_check(self, assignment: Mapping[str, Any]) -> bool:
        """Tell whether an assignment is one of this Trailmark's deep-linked mastery checks (by its launch URL)."""
        tag = assignment.get("external_tool_tag_attributes")
        return bool(tag) and "external_tool" in (assignment.get("submission_types") or ()) and \
            is_check_url(tag["url"], self.tool_url)

    # ------------------------------------------------------------------ progress

    def _progress(self, batch: _Batch) -> None:
        cid = batch.course_id
        complete = True
        points = batch.points
        items: list[Item] = []
        for sub in self._load_all(schemas.SUBMISSION, self.client.iter_submissions(cid), "result"):
            if isinstance(sub, Rejected):
                items.append(sub)
                complete = False
                continue
            if sub["user_id"] in batch.test_students or sub["workflow_state"] == "deleted":
                continue
            status = self._score_status(sub)
            if status is None:
                continue
            items.append(Result(
                sourced_id=f"submission:{sub['id']}", person_sourced_id=sub["user_id"],
                activity_sourced_id=sub["assignment_id"], score=sub["score"],
                score_maximum=points.get(sub["assignment_id"]),
                scored_at=sub["graded_at"] or sub["submitted_at"], score_status=status,
            ))
        results = self._optional(batch, "result", lambda: list(self.client.iter_outcome_results(cid)))
        if results is None:  # outcome results not readable with this token: keep the submissions
            complete = False
        for res in self._load_all(schemas.OUTCOME_RESULT, results or (), "result"):
            if isinstance(res, Rejected):
                items.append(res)
                complete = False
                continue
            links = res["links"]
            if links["user"] in batch.test_students:
                continue
            items.append(Result(
                sourced_id=f"outcome_result:{res['id']}", person_sourced_id=links["user"],
                competency_sourced_id=links["learning_outcome"], score=res["score"],
                score_maximum=res["possible"], scored_at=res["submitted_or_assessed_at"],
            ))
        batch.items.extend(items)
        if complete:
            batch.items.append(Complete("result", within=cid, within_kind="class"))
        batch.progress_complete = complete

    @staticmethod
    def _score_status(sub: Mapping[str, Any]) -> str | None:
        """Map a submission to a OneRoster score status; ``None`` for an untouched placeholder."""
        if sub["excused"]:
            return "exempt"
        if sub["workflow_state"] == "pending_review":
            return "partially graded"
        if sub["score"] is not None:
            return "fully graded"
        if sub["workflow_state"] in ("submitted", "graded"):
            return "submitted"
        if sub["missing"]:
            return "not submitted"
        return None

    # ================================================================== push

    def push(self, write: Write) -> PushResult:
        """Apply one write to Canvas (idempotent for scores and gates)."""
        if isinstance(write, ScoreWrite):
            return self._push_score(write)
        if isinstance(write, GateWrite):
            return self._push_gate(write)
        if isinstance(write, MessageWrite):
            return self._push_message(write)
        raise ConfigurationError(f"{self.name}: Canvas cannot apply {type(write).__name__}", source=self.name)

    def _points_possible(self, course_id: str, assignment_id: str) -> float | None:
        key = (course_id, assignment_id)
        with self._points_lock:
            if key in self._points:
                return self._points[key]
        raw = self.client.get_assignment(course_id, assignment_id)
        assignment = self._load(schemas.ASSIGNMENT, raw, "activity")
        if isinstance(assignment, Rejected):
            raise RemoteRejected(f"{self.name}: assignment {assignment_id}: {assignment.field}: "
                                 f"{assignment.reason}", source=self.name)
        with self._points_lock:
            if len(self._points) > 50_000:
                self._points.clear()
            self._points[key] = assignment["points_possible"]
        return assignment["points_possible"]

    def _push_score(self, write: ScoreWrite) -> PushResult:
        cid, aid, uid = write.class_sourced_id, write.activity_sourced_id, write.person_sourced_id
        if write.score_given is None:
            grade = ""
        else:
            possible = self._points_possible(cid, aid)
            if possible and write.score_maximum:
                grade = _number(write.score_given * possible / write.score_maximum)
            elif write.score_maximum:
                grade = f"{_number(write.score_given * 100 / write.score_maximum)}%"
            else:
                grade = _number(write.score_given)
        form = [("submission[posted_grade]", grade)]
        retry: bool | None = None
        if write.comment:
            existing = self.client.get_submission(cid, aid, uid)
            comments = existing.get("submission_comments") or [] if isinstance(existing, dict) else []
            if not any(isinstance(c, dict) and c.get("comment") == write.comment for c in comments):
                form.append(("comment[text_comment]", write.comment))
                retry = False  # a resent comment would post twice; the outbox retries after re-checking
        submission = self.client.grade_submission(cid, aid, uid, form, retry=retry)
        if not isinstance(submission, dict):
            raise RemoteRejected(f"{self.name}: grading {aid}/{uid}: unexpected response", source=self.name)
        return PushResult(remote_id=str(submission.get("id")) if submission.get("id") is not None else None,
                          detail={"posted_grade": grade, "score": submission.get("score"),
                                  "grade": submission.get("grade"),
                                  "workflow_state": submission.get("workflow_state")})

    def _push_gate(self, write: GateWrite) -> PushResult:
        cid, mid = write.class_sourced_id, write.module_sourced_id
        modules: dict[str, dict[str, Any]] = {}
        for raw in self.client.iter_modules(cid):
            module = self._load(schemas.MODULE, raw, "module")
            if not isinstance(module, Rejected):
                modules[module["id"]] = module
        target = modules.get(mid)
        if target is None:
            raise NotFound(f"{self.name}: module {mid} is not in course {cid}", source=self.name)
        prerequisites = tuple(dict.fromkeys(write.prerequisite_module_sourced_ids))
        for pid in prerequisites:
            prerequisite = modules.get(pid)
            if prerequisite is None:
                raise NotFound(f"{self.name}: prerequisite module {pid} is not in course {cid}",
                               source=self.name)
            if (prerequisite["position"] or 0) >= (target["position"] or 0):
                raise RemoteRejected(
                    f"{self.name}: module {pid} (position {prerequisite['position']}) cannot be a "
                    f"prerequisite of module {mid} (position {target['position']}): Canvas requires "
                    "prerequisites to come first and silently drops the others", source=self.name)
        form: list[tuple[str, str]] = [("module[prerequisite_module_ids][]", pid) for pid in prerequisites]
        if not form:
            form = [("module[prerequisite_module_ids]", "")]  # blank clears them
        updated = self.client.update_module(cid, mid, form)
        kept_ids = updated.get("prerequisite_module_ids") if isinstance(updated, dict) else None
        kept = {str(p) for p in kept_ids or []}
        if kept != set(prerequisites):
            raise RemoteRejected(f"{self.name}: Canvas kept prerequisites {sorted(kept)} of module {mid}, "
                                 f"not {sorted(prerequisites)}", source=self.name)
        detail: dict[str, object] = {"prerequisite_module_ids": list(prerequisites)}
        if write.check_activity_sourced_id is not None and write.min_score is not None:
            # the check sits in the module itself or, as Trailmark places it, in a module it waits for
            holder, item_id = self._check_item(cid, [target, *(modules[p] for p in reversed(prerequisites))],
                                               write.check_activity_sourced_id)
            form = [("module_item[completion_requirement][type]", "min_score"),
                    ("module_item[completion_requirement][min_score]", _number(write.min_score))]
            item = self.client.update_module_item(cid, holder, item_id, form)
            req = item.get("completion_requirement") if isinstance(item, dict) else None
            applied = isinstance(req, dict) and req.get("type") == "min_score" and \
                req.get("min_score") is not None and abs(float(req["min_score"]) - write.min_score) < 1e-9
            if not applied:
                kind = item.get("type") if isinstance(item, dict) else "?"
                raise RemoteRejected(f"{self.name}: Canvas ignored the min_score requirement on item "
                                     f"{item_id} ({kind} items may not be scoreable)", source=self.name)
            detail.update(item_id=item_id, min_score=write.min_score)
        return PushResult(remote_id=mid, detail=detail)

    def _check_item(self, cid: str, modules: Sequence[Mapping[str, Any]], activity_id: str) -> tuple[str, str]:
        """Return (module id, module item id) of the first item of ``modules`` that presents ``activity_id``."""
        listed: list[tuple[Mapping[str, Any], list[dict[str, Any]]]] = []
        for module in modules:
            raw_items: Iterable[Any] = module["items"] if module["items"] is not None else \
                self.client.iter_module_items(cid, module["id"])
            items = [i for i in (self._load(schemas.MODULE_ITEM, r, "module_item") for r in raw_items)
                     if not isinstance(i, Rejected)]
            for item in items:
                if item["type"] == "Assignment" and item["content_id"] == activity_id:
                    return str(module["id"]), str(item["id"])
            listed.append((module, items))
        raw = self.client.get_assignment(cid, activity_id)
        assignment = self._load(schemas.ASSIGNMENT, raw, "activity")
        if not isinstance(assignment, Rejected):
            wanted = {("Quiz", assignment["quiz_id"])}
            if assignment["discussion_topic"]:
                wanted.add(("Discussion", assignment["discussion_topic"]["id"]))
            for module, items in listed:
                for item in items:
                    if (item["type"], item["content_id"]) in wanted:
                        return str(module["id"]), str(item["id"])
        names = ", ".join(str(module["id"]) for module in modules)
        raise NotFound(f"{self.name}: assignment {activity_id} is not an item of module {names}", source=self.name)

    def _push_message(self, write: MessageWrite) -> PushResult:
        recipients = tuple(dict.fromkeys(write.recipient_sourced_ids))
        if not recipients:
            raise RemoteRejected(f"{self.name}: a message needs at least one recipient", source=self.name)
        form: list[tuple[str, str]] = [("recipients[]", r) for r in recipients]
        form += [("subject", write.subject[:255]), ("body", write.body)]
        if len(recipients) > BULK_THRESHOLD:
            form += [("group_conversation", "true"), ("bulk_message", "true")]
        else:
            form += [("group_conversation", "false")]
        if write.class_sourced_id:
            form.append(("context_code", f"course_{write.class_sourced_id}"))
        created = self.client.create_conversation(form)
        rows = created if isinstance(created, list) else []
        ids = [str(c["id"]) for c in rows if isinstance(c, dict) and "id" in c]
        return PushResult(remote_id=ids[0] if ids else None,
                          detail={"conversation_ids": ids, "recipients": len(recipients)})
