"""Moodle Web Services connector: translate courses, people, sections, grades and competencies.

Mapping: a Moodle course is a Trailmark Class (and a Course record with the same id); a section is a
Module; a grade item of an activity (or a manual item) is an Activity, keyed by grade item id so
restrict-access grade conditions and grade writes refer to the same thing; a course competency is a
Competency scoped to its course (Moodle rates competencies per course). Moodle user ids are the
people's sourced ids and, since Moodle sends its user id as the LTI ``sub``, their ``lti_sub`` too.
The grade item of an LTI activity that launches one of this Trailmark's mastery checks (its ``toolurl``
under ``tool_url``, read with ``mod_lti_get_ltis_by_courses``) has category ``trailmark-mastery-check``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from connectors.base import (
    Activity,
    Alignment,
    AuthError,
    Capability,
    Class,
    Competency,
    Complete,
    ConfigurationError,
    Course,
    Enrollment,
    GateWrite,
    Item,
    MessageWrite,
    Module,
    NotFound,
    Person,
    PushResult,
    Rejected,
    RemoteRejected,
    Result,
    Scope,
    ScoreWrite,
    Write,
)
from connectors.http import HttpClient
from connectors.mastery_check import CHECK_CATEGORY, custom_params, is_check_link
from connectors.moodle.availability import (
    availability_grade_conditions,
    requires_grade,
    restriction_instructions,
    to_percent,
)
from connectors.moodle.client import MoodleClient
from connectors.moodle.schemas import (
    CompletionStatus,
    CompletionStatusSchema,
    CourseCompetencySchema,
    CourseSchema,
    EnrolledUserSchema,
    Framework,
    FrameworkSchema,
    GradeItem,
    GradeItemSchema,
    LtiInstanceSchema,
    MessageResultSchema,
    ModuleCompetencySchema,
    ModuleSchema,
    MoodleCompetency,
    MoodleCourse,
    MoodleModule,
    MoodleUser,
    MoodleWarning,
    ScaleValueSchema,
    SectionSchema,
    UserCompetencySummaryInCourseSchema,
    UserGrades,
    UserGradesSchema,
    load_each,
    load_one,
    parse_json_text,
)

log = logging.getLogger(__name__)

KIND = "moodle"

#: Moodle role shortname → enrollment role; roles not listed (guest, user, frontpage…) are ignored.
DEFAULT_ROLE_MAP: Mapping[str, str] = {
    "student": "student",
    "editingteacher": "teacher",
    "teacher": "aide",  # Moodle's "Non-editing teacher"
    "manager": "administrator",
    "coursecreator": "administrator",
}
_ROLE_RANK = ("administrator", "teacher", "aide", "proctor", "guardian", "parent", "student")

USER_FIELDS = ("id", "username", "firstname", "lastname", "email", "idnumber", "suspended", "roles")
GRADED_ITEM_TYPES = frozenset({"mod", "manual"})
DUE_DATE_KEYS = ("duedate", "timeclose", "timedue")
NOT_GATED_MODULES = frozenset({"label"})  # text on the course page, nothing to open
FORMAT_PLAIN = 2
GRADE_UPDATE_STATUS = {1: "failed", 2: "the activity has several grade items with that number",
                       3: "the grade item was deleted", 4: "the grade item is locked"}
_CACHED_COURSES = 32
LTI_COURSES_PER_CALL = 50  # courses per mod_lti_get_ltis_by_courses call


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value and value > 0 else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _section_title(number: int) -> str:
    return "General" if number == 0 else f"Section {number}"


def _required_grades(availability: str | None) -> tuple[tuple[str, float], ...]:
    """Return (grade item id, min %) for each grade every way through a restrict-access tree demands."""
    tree = parse_json_text(availability)
    found: dict[str, float] = {}
    for item, low, _high in availability_grade_conditions(tree):
        if low is not None and requires_grade(tree, item, low):
            found[str(item)] = max(low, found.get(str(item), low))
    return tuple(sorted(found.items()))


def _id(value: str, what: str, source: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RemoteRejected(f"{source}: {what} {value!r} is not a Moodle id", source=source) from None


@dataclass(frozen=True, slots=True)
class ActivityCompletion:
    """One person's completion state of one course module (``state``: 0 incomplete … 3 complete-fail)."""

    class_sourced_id: str
    person_sourced_id: str
    cmid: int
    state: int
    completed_at: datetime | None
    tracking: int

    @property
    def complete(self) -> bool:
        return self.state in (1, 2)


@dataclass(frozen=True, slots=True)
class CmRestriction:
    """An activity and its restrict-access tree (``None`` when unrestricted or not shown to the token)."""

    cmid: int
    name: str
    modname: str
    availability: Any

    @property
    def grade_conditions(self) -> list[tuple[int, float | None, float | None]]:
        return availability_grade_conditions(self.availability)


@dataclass(frozen=True, slots=True)
class SectionRestrictions:
    title: str
    activities: tuple[CmRestriction, ...]


@dataclass(slots=True)
class _Scale:
    ratings: tuple[tuple[float, str], ...] = ()
    points_possible: float = 0.0
    mastery_points: float = 0.0


@dataclass(slots=True)
class _CourseGrades:
    items: dict[int, GradeItem] = field(default_factory=dict)  # metadata from the first row seen
    rows: list[tuple[UserGrades, list[GradeItem]]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class MoodleConnector:
    """Pull a Moodle site's courses, rosters, structure, grades and competencies; push grades and messages."""

    kind = KIND
    capabilities = frozenset({
        Capability.READ_ROSTER,
        Capability.READ_CONTENT,
        Capability.READ_PROGRESS,
        Capability.WRITE_SCORES,  # activity grade items, through core_grades_update_grades
        Capability.WRITE_MESSAGES,
    })

    def __init__(
        self,
        name: str,
        client: MoodleClient,
        *,
        course_ids: Iterable[int] = (),
        category_ids: Iterable[int] = (),
        page_size: int = 100,
        role_map: Mapping[str, str] | None = None,
        grade_source: str = "trailmark",
        tool_url: str | None = None,
    ) -> None:
        self.name = name
        self.client = client
        self.tool_url = tool_url  # Trailmark's public base URL: its mastery checks launch below it
        self.course_ids = tuple(int(c) for c in course_ids)
        self.category_ids = tuple(int(c) for c in category_ids)
        self.page_size = max(1, int(page_size))
        self.role_map = dict(DEFAULT_ROLE_MAP if role_map is None else role_map)
        self.grade_source = grade_source
        self._grade_items: OrderedDict[int, dict[int, GradeItem]] = OrderedDict()
        self._frameworks: dict[int, Framework | None] = {}
        self._scales: dict[int, list[tuple[int, str]]] = {}
        self._last_score: dict[tuple[int, int], datetime] = {}

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> MoodleConnector:
        """Build from a district-file source entry (``token`` already resolved to its secret value)."""
        name = str(cfg.get("name") or "")
        if not name:
            raise ConfigurationError("a Moodle source needs a 'name'")
        if cfg.get("kind", KIND) != KIND:
            raise ConfigurationError(f"{name}: kind is {cfg.get('kind')!r}, expected 'moodle'", source=name)
        base_url = str(cfg.get("base_url") or "")
        if not base_url:
            raise ConfigurationError(f"{name}: 'base_url' is required (the Moodle site root, e.g. "
                                     "https://moodle.district.org)", source=name)
        token = cfg.get("token")
        if not token or not isinstance(token, str):
            raise ConfigurationError(f"{name}: 'token' is required (a web service token from Site "
                                     "administration → Server → Web services → Manage tokens)", source=name)

        def ids(key: str) -> tuple[int, ...]:
            raw = cfg.get(key) or ()
            try:
                return tuple(int(v) for v in raw)
            except (TypeError, ValueError):
                raise ConfigurationError(f"{name}: '{key}' must be a list of Moodle ids",
                                         source=name) from None

        timeout = cfg.get("timeout", (5.0, 120.0))  # big courses answer slowly: Moodle has no paging there
        if isinstance(timeout, int | float):
            timeout = (5.0, float(timeout))
        http = HttpClient(
            base_url,
            source=name,
            timeout=tuple(timeout),
            max_retries=int(cfg.get("max_retries", 5)),
            sleep=sleep,
            session=session,
        )
        return cls(
            name,
            MoodleClient(http, token),
            course_ids=ids("course_ids"),
            category_ids=ids("category_ids"),
            page_size=int(cfg.get("page_size", 100)),
            role_map=cfg.get("role_map"),
            tool_url=str(cfg["tool_url"]) if cfg.get("tool_url") else None,
        )

    @property
    def warnings(self) -> list[MoodleWarning]:
        """Warnings Moodle returned (skipped items) since this connector was built."""
        return self.client.warnings

    # ================================================================== pull

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream courses, then per course: people, enrollments, modules, activities, competencies, results.

        Moodle web services have no change feed, so ``since`` is ignored and every pull is complete.
        """
        roster = scope.includes(Scope.ROSTER)
        courses: list[MoodleCourse] = []
        listing_ok = True
        for course in self._iter_courses():
            if isinstance(course, Rejected):
                listing_ok = False
                yield course
                continue
            courses.append(course)
            if roster:
                cid = str(course.id)
                yield Course(sourced_id=cid, title=course.fullname, course_code=course.shortname or None,
                             sis_id=course.idnumber)
                yield Class(sourced_id=cid, title=course.fullname, course_sourced_id=cid,
                            class_code=course.shortname or None, sis_id=course.idnumber, lti_context_id=cid)
        if roster and listing_ok:
            yield Complete("course")
            yield Complete("class")
        people: set[int] = set()
        checks: dict[int, frozenset[int]] | None = {}
        if scope.includes(Scope.CONTENT) and courses:
            checks, problems = self._check_instances(courses)
            yield from problems
        for course in courses:
            try:
                yield from self._pull_course(course, scope, people,
                                             None if checks is None else checks.get(course.id, frozenset()))
            except (NotFound, AuthError) as exc:
                if getattr(exc, "errorcode", "") == "invalidtoken":
                    raise
                # One course the token cannot read: report it and go on; its listings stay incomplete,
                # so nothing in it is removed.
                yield Rejected(kind="class", record_id=str(course.id), field=None, reason=str(exc))

    def _iter_courses(self) -> Iterator[MoodleCourse | Rejected]:
        """Yield the configured courses (by id, by category, or every course but the front page).

        :calls: POST /webservice/rest/server.php core_course_get_courses_by_field
        """
        queries: list[tuple[str, str | int]]
        if self.course_ids:
            queries = [("ids", ",".join(str(c) for c in self.course_ids[i:i + 100]))
                       for i in range(0, len(self.course_ids), 100)]
        elif self.category_ids:
            queries = [("category", c) for c in self.category_ids]
        else:
            queries = [("", "")]
        seen: set[int] = set()
        for field_name, value in queries:
            body = self.client.get_courses_by_field(field_name, value)
            raw = body.get("courses") if isinstance(body, Mapping) else None
            if not isinstance(raw, list):
                yield Rejected("class", None, "courses",
                               "core_course_get_courses_by_field returned no course list")
                continue
            for course in load_each(CourseSchema(), raw, "class"):
                if isinstance(course, Rejected):
                    yield course
                    continue
                if course.format == "site" or course.id in seen:
                    continue
                seen.add(course.id)
                yield course

    def _pull_course(self, course: MoodleCourse, scope: Scope, people: set[int],
                     checks: frozenset[int] | None = frozenset()) -> Iterator[Item]:
        cid = str(course.id)
        if scope.includes(Scope.ROSTER):
            yield from self._pull_roster(course, people)
        content = scope.includes(Scope.CONTENT)
        progress = scope.includes(Scope.PROGRESS)
        if not (content or progress):
            return
        cm_section: dict[int, int] = {}
        cms: dict[int, MoodleModule] = {}
        if content:
            yield from self._pull_modules(course, cm_section, cms)
        grades = self._load_grades(course)
        yield from grades.rejected
        if content:
            yield from self._activities(course, grades, cm_section, cms, checks)
        comps, comps_complete = self._course_competencies(course)
        if content:
            for comp, scale in comps:
                yield Competency(
                    sourced_id=f"{cid}:{comp.id}",
                    title=comp.shortname,
                    class_sourced_id=cid,
                    description=comp.description,
                    points_possible=scale.points_possible,
                    mastery_points=scale.mastery_points,
                    ratings=scale.ratings,
                    calculation_method="latest",
                )
            if comps_complete:
                yield Complete("competency", cid, "class")
            yield from self._alignments(course, grades, {c.id for c, _ in comps})
        if progress:
            complete = comps_complete and not grades.rejected
            for item in self._grade_results(grades):
                yield item
            for item in self._competency_results(course, grades, comps):
                if isinstance(item, Rejected):
                    complete = False
                yield item
            if complete:
                yield Complete("result", cid, "class")

    # ------------------------------------------------------------------ roster

    def _roles(self, user: MoodleUser) -> list[str]:
        roles = {self.role_map[r] for r in user.roles if r in self.role_map}
        return sorted(roles, key=lambda r: _ROLE_RANK.index(r) if r in _ROLE_RANK else len(_ROLE_RANK))

    def _pull_roster(self, course: MoodleCourse, people: set[int]) -> Iterator[Item]:
        """Yield people and enrollments of one course, a page at a time.

        :calls: POST /webservice/rest/server.php core_enrol_get_enrolled_users
        """
        cid = str(course.id)
        offset = 0
        seen: set[int] = set()
        complete = True
        while True:
            page = self.client.get_enrolled_users(course.id, limit_from=offset, limit_number=self.page_size,
                                                  user_fields=USER_FIELDS)
            if not isinstance(page, list):
                yield Rejected("enrollment", cid, None, "core_enrol_get_enrolled_users did not return a list")
                return
            raw_ids = {raw.get("id") for raw in page if isinstance(raw, Mapping)}
            repeated = bool(raw_ids) and raw_ids <= seen
            for user in load_each(EnrolledUserSchema(), page, "person"):
                if isinstance(user, Rejected):
                    complete = False
                    yield user
                    continue
                if user.id in seen:
                    continue
                seen.add(user.id)
                roles = self._roles(user)
                if not roles:
                    continue
                if user.id not in people:
                    people.add(user.id)
                    yield self._person(user, roles[0])
                for role in roles:
                    yield Enrollment(sourced_id=f"{cid}:{user.id}:{role}", class_sourced_id=cid,
                                     person_sourced_id=str(user.id), role=role)
            if len(page) < self.page_size or repeated:
                break  # a short page ends the list; a page of repeats means limitfrom is ignored
            offset += len(page)
        if complete:
            yield Complete("enrollment", cid, "class")

    @staticmethod
    def _person(user: MoodleUser, role: str) -> Person:
        return Person(
            sourced_id=str(user.id),
            role=role,
            given_name=user.firstname,
            family_name=user.lastname,
            email=user.email,
            username=user.username,
            sis_id=user.idnumber,
            lti_sub=str(user.id),
            enabled=not user.suspended,
        )

    # ------------------------------------------------------------------ structure

    def _pull_modules(self, course: MoodleCourse, cm_section: dict[int, int],
                      cms: dict[int, MoodleModule]) -> Iterator[Item]:
        """Yield sections as Modules, in course order, and remember each activity's section.

        :calls: POST /webservice/rest/server.php core_course_get_contents
        """
        cid = str(course.id)
        sections = self.client.get_contents(course.id)
        if not isinstance(sections, list):
            yield Rejected("module", cid, None, "core_course_get_contents did not return a list")
            return
        complete = True
        for section in load_each(SectionSchema(), sections, "module"):
            if isinstance(section, Rejected):
                complete = False
                yield section
                continue
            if section["id"] <= 0:
                continue  # -1: the pseudo-section of stealth activities
            title = section["name"] or _section_title(section["section"])
            loaded = list(load_each(ModuleSchema(), section["modules"], "activity"))
            yield Module(sourced_id=str(section["id"]), class_sourced_id=cid, title=title,
                         position=section["section"], published=section["visible"],
                         access_conditions=tuple((cm.name, _required_grades(cm.availability)) for cm in loaded
                                                 if not isinstance(cm, Rejected)
                                                 and cm.modname not in NOT_GATED_MODULES))
            for cm in loaded:
                if isinstance(cm, Rejected):
                    yield cm
                    continue
                cm_section[cm.id] = section["id"]
                cms[cm.id] = cm
        if complete:
            yield Complete("module", cid, "class")

    def restrictions(self, class_sourced_id: str) -> dict[str, SectionRestrictions]:
        """Return each section's activities with their parsed restrict-access trees, by section id.

        Lets a later check warn when a gated module is not actually restricted in Moodle.

        :calls: POST /webservice/rest/server.php core_course_get_contents
        """
        course_id = _id(class_sourced_id, "class", self.name)
        sections = self.client.get_contents(course_id)
        result: dict[str, SectionRestrictions] = {}
        for section in load_each(SectionSchema(), sections if isinstance(sections, list) else [], "module"):
            if isinstance(section, Rejected):
                continue
            activities = tuple(
                CmRestriction(cm.id, cm.name, cm.modname, parse_json_text(cm.availability))
                for cm in load_each(ModuleSchema(), section["modules"], "activity")
                if not isinstance(cm, Rejected)
            )
            title = section["name"] or _section_title(section["section"])
            result[str(section["id"])] = SectionRestrictions(title, activities)
        return result

    # ------------------------------------------------------------------ mastery checks

    def _check_instances(self, courses: list[MoodleCourse]
                         ) -> tuple[dict[int, frozenset[int]] | None, list[Rejected]]:
        """Return each course's LTI instance ids that launch Trailmark's mastery checks (``None``: unreadable).

        A deep-linked check keeps the content item's URL as its ``toolurl`` and its custom parameters as
        ``instructorcustomparameters``; only a URL on ``tool_url``'s scheme, host and path counts.

        :calls: POST /webservice/rest/server.php mod_lti_get_ltis_by_courses
        """
        function = "mod_lti_get_ltis_by_courses"
        if not self.tool_url:
            return {}, []
        if not self.client.has_function(function):
            log.warning("%s: %s is not in the web service, so Trailmark's mastery checks in Moodle are not "
                        "recognised; add it to the service", self.name, function)
            return {}, []
        rows: list[Any] = []
        for start in range(0, len(courses), LTI_COURSES_PER_CALL):
            chunk = [c.id for c in courses[start:start + LTI_COURSES_PER_CALL]]
            try:
                body = self.client.get_ltis_by_courses(chunk)
            except (AuthError, NotFound, RemoteRejected, ConfigurationError) as exc:
                if getattr(exc, "errorcode", "") == "invalidtoken":
                    raise
                return None, [Rejected("activity", None, function, f"LTI activities not read: {exc}")]
            raw = body.get("ltis") if isinstance(body, Mapping) else None
            if not isinstance(raw, list):
                return None, [Rejected("activity", None, function, f"{function} returned no ltis list")]
            rows.extend(raw)
        found: dict[int, set[int]] = {}
        rejected: list[Rejected] = []
        hidden = 0
        for lti in load_each(LtiInstanceSchema(), rows, "activity"):
            if isinstance(lti, Rejected):
                rejected.append(lti)
                continue
            if lti.toolurl is None and lti.securetoolurl is None:
                hidden += 1
                continue
            custom = custom_params(lti.instructorcustomparameters)
            if any(is_check_link(url, self.tool_url, custom) for url in (lti.toolurl, lti.securetoolurl)):
                found.setdefault(lti.course, set()).add(lti.id)
        if rejected:
            return None, rejected
        if hidden:
            log.warning("%s: the web service user cannot see the tool URL of %d LTI activities (it needs "
                        "moodle/course:manageactivities), so mastery checks among them are not recognised",
                        self.name, hidden)
        return {course: frozenset(ids) for course, ids in found.items()}, []

    # ------------------------------------------------------------------ grades

    def _load_grades(self, course: MoodleCourse) -> _CourseGrades:
        """Read every gradable user's grade report row for a course.

        :calls: POST /webservice/rest/server.php gradereport_user_get_grade_items
        """
        grades = _CourseGrades()
        body = self.client.get_grade_items(course.id, 0)
        raw_rows = body.get("usergrades") if isinstance(body, Mapping) else None
        if not isinstance(raw_rows, list):
            grades.rejected.append(Rejected("result", str(course.id), "usergrades",
                                            "gradereport_user_get_grade_items returned no usergrades"))
            return grades
        item_schema = GradeItemSchema()
        for row in load_each(UserGradesSchema(), raw_rows, "result"):
            if isinstance(row, Rejected):
                grades.rejected.append(row)
                continue
            items: list[GradeItem] = []
            for item in load_each(item_schema, row.gradeitems, "activity"):
                if isinstance(item, Rejected):
                    grades.rejected.append(item)
                    continue
                items.append(item)
                grades.items.setdefault(item.id, item)
            grades.rows.append((row, items))
        self._remember_items(course.id, grades.items)
        return grades

    def _remember_items(self, course_id: int, items: Mapping[int, GradeItem]) -> None:
        if not items:
            return
        self._grade_items[course_id] = dict(items)
        self._grade_items.move_to_end(course_id)
        while len(self._grade_items) > _CACHED_COURSES:
            self._grade_items.popitem(last=False)

    @staticmethod
    def _is_activity(item: GradeItem) -> bool:
        return item.itemtype in GRADED_ITEM_TYPES and item.outcomeid is None

    @staticmethod
    def _is_check(item: GradeItem, checks: frozenset[int]) -> bool:
        """Tell whether a grade item is the activity grade of one of Trailmark's mastery-check LTI instances."""
        return item.itemtype == "mod" and item.itemmodule == "lti" and item.iteminstance in checks and \
            not item.itemnumber

    def _activities(self, course: MoodleCourse, grades: _CourseGrades, cm_section: Mapping[int, int],
                    cms: Mapping[int, MoodleModule], checks: frozenset[int] | None = frozenset()
                    ) -> Iterator[Item]:
        """Yield the course's graded items; ``checks`` None (unreadable) leaves its LTI activities as they are."""
        cid = str(course.id)
        kept_back = False
        for item in grades.items.values():
            if not self._is_activity(item):
                continue
            if checks is None and item.itemmodule == "lti":
                kept_back = True  # a mastery check or not: unknown this time, so the store keeps what it has
                continue
            cm = cms.get(item.cmid) if item.cmid else None
            section = cm_section.get(item.cmid) if item.cmid else None
            dates = dict(cm.dates) if cm else {}
            due = next((_ts(dates[key]) for key in DUE_DATE_KEYS if key in dates), None)
            yield Activity(
                sourced_id=str(item.id),
                class_sourced_id=cid,
                title=item.itemname or (cm.name if cm else "") or f"Grade item {item.id}",
                module_sourced_id=str(section) if section is not None else None,
                score_maximum=item.grademax,
                due_at=due,
                category=CHECK_CATEGORY if checks and self._is_check(item, checks) else
                item.itemmodule or item.itemtype,
            )
        # An empty report (no gradable users yet) says nothing about which items exist.
        if grades.rows and not grades.rejected and not kept_back:
            yield Complete("activity", cid, "class")

    def _grade_results(self, grades: _CourseGrades) -> Iterator[Item]:
        for row, items in grades.rows:
            for item in items:
                if not self._is_activity(item):
                    continue
                if item.graderaw is not None:
                    status, when = "fully graded", item.gradedategraded or item.gradedatesubmitted
                elif item.gradedatesubmitted:
                    status, when = "submitted", item.gradedatesubmitted
                else:
                    continue
                yield Result(
                    sourced_id=f"{item.id}:{row.userid}",
                    person_sourced_id=str(row.userid),
                    activity_sourced_id=str(item.id),
                    score=item.graderaw,
                    score_maximum=item.grademax,
                    scored_at=_ts(when),
                    score_status=status,
                    comment=item.feedback,
                )

    # ------------------------------------------------------------------ competencies

    def _competencies_readable(self) -> bool:
        return self.client.has_function("core_competency_list_course_competencies")

    def _course_competencies(
        self, course: MoodleCourse
    ) -> tuple[list[tuple[MoodleCompetency, _Scale]], bool]:
        """Return the course's competencies with their scales, and whether the list is complete.

        A site without competencies (switched off, or the function not in the service) has none.

        :calls: POST /webservice/rest/server.php core_competency_list_course_competencies
        """
        if not self.client.has_function("core_competency_list_course_competencies"):
            return [], True
        try:
            raw = self.client.list_course_competencies(course.id)
        except ConfigurationError as exc:
            if getattr(exc, "errorcode", "") == "competenciesarenotenabled":
                log.info("%s: competencies are disabled on this Moodle site; skipping them", self.name)
                return [], True
            raise
        if not isinstance(raw, list):
            return [], False
        found: list[tuple[MoodleCompetency, _Scale]] = []
        complete = True
        for entry in load_each(CourseCompetencySchema(), raw, "competency"):
            if isinstance(entry, Rejected):
                log.warning("%s: course %s: competency %s rejected: %s", self.name, course.id,
                            entry.record_id, entry.reason)
                complete = False
                continue
            comp: MoodleCompetency = entry["competency"]
            found.append((comp, self._scale_for(comp)))
        return found, complete

    def _framework(self, framework_id: int) -> Framework | None:
        """Return a competency framework (cached).

        :calls: POST /webservice/rest/server.php core_competency_read_competency_framework
        """
        if framework_id not in self._frameworks:
            framework = None
            if self.client.has_function("core_competency_read_competency_framework"):
                loaded = load_one(FrameworkSchema(), self.client.read_competency_framework(framework_id),
                                  "competency")
                framework = None if isinstance(loaded, Rejected) else loaded
            self._frameworks[framework_id] = framework
        return self._frameworks[framework_id]

    def _scale_values(self, scale_id: int) -> list[tuple[int, str]]:
        """Return a scale's ``(value, name)`` pairs, 1-based (cached).

        :calls: POST /webservice/rest/server.php core_competency_get_scale_values
        """
        if scale_id not in self._scales:
            values: list[tuple[int, str]] = []
            if self.client.has_function("core_competency_get_scale_values"):
                raw = self.client.get_scale_values(scale_id)
                for value in load_each(ScaleValueSchema(), _list(raw), "competency"):
                    if not isinstance(value, Rejected):
                        values.append((value["id"], value["name"]))
            self._scales[scale_id] = values
        return self._scales[scale_id]

    def _scale_for(self, comp: MoodleCompetency) -> _Scale:
        scale_id, config = comp.scaleid, comp.scaleconfiguration
        if scale_id is None:
            framework = self._framework(comp.frameworkid)
            if framework is None:
                return _Scale()
            scale_id, config = framework.scaleid, framework.scaleconfiguration
        values = self._scale_values(scale_id)
        if not values:
            return _Scale()
        proficient = sorted(
            int(entry["id"]) for entry in (parse_json_text(config) or [])
            if isinstance(entry, Mapping) and entry.get("proficient") and "id" in entry
        )
        top = max(v for v, _ in values)
        return _Scale(
            ratings=tuple(sorted(((float(v), name) for v, name in values), reverse=True)),
            points_possible=float(top),
            mastery_points=float(proficient[0] if proficient else top),
        )

    def _alignments(self, course: MoodleCourse, grades: _CourseGrades, comp_ids: set[int]) -> Iterator[Item]:
        """Yield activity ↔ competency links of the course's graded activities.

        :calls: POST /webservice/rest/server.php core_competency_list_course_module_competencies
        """
        if not self.client.has_function("core_competency_list_course_module_competencies"):
            return
        cid = str(course.id)
        by_cm: dict[int, list[GradeItem]] = {}
        for item in grades.items.values():
            if self._is_activity(item) and item.cmid:
                by_cm.setdefault(item.cmid, []).append(item)
        complete = bool(grades.rows) and not grades.rejected
        for cmid, items in by_cm.items():
            raw = self.client.list_course_module_competencies(cmid)
            for entry in load_each(ModuleCompetencySchema(), _list(raw), "alignment"):
                if isinstance(entry, Rejected):
                    complete = False
                    yield entry
                    continue
                comp_id = entry["competency"].id
                if comp_id not in comp_ids:
                    continue
                for item in items:
                    yield Alignment(activity_sourced_id=str(item.id),
                                    competency_sourced_id=f"{cid}:{comp_id}")
        if complete:
            yield Complete("alignment", cid, "class")

    def _competency_results(self, course: MoodleCourse, grades: _CourseGrades,
                            comps: list[tuple[MoodleCompetency, _Scale]]) -> Iterator[Item]:
        """Yield each gradable user's course rating of each course competency.

        :calls: POST /webservice/rest/server.php tool_lp_data_for_user_competency_summary_in_course
        """
        if not self.client.has_function("tool_lp_data_for_user_competency_summary_in_course"):
            return
        cid = str(course.id)
        schema = UserCompetencySummaryInCourseSchema()
        for row, _items in grades.rows:
            for comp, scale in comps:
                try:
                    raw = self.client.user_competency_summary_in_course(row.userid, comp.id, course.id)
                except NotFound:
                    continue
                rating = load_one(schema, raw, "result")
                if isinstance(rating, Rejected):
                    yield Rejected("result", f"{cid}:{comp.id}:{row.userid}", rating.field, rating.reason)
                    continue
                if rating is None or rating.grade is None:
                    continue
                yield Result(
                    sourced_id=f"{cid}:{comp.id}:{row.userid}",
                    person_sourced_id=str(row.userid),
                    competency_sourced_id=f"{cid}:{comp.id}",
                    score=float(rating.grade),
                    score_maximum=scale.points_possible or None,
                    scored_at=_ts(rating.timemodified),
                    comment=rating.gradename,
                )

    # ------------------------------------------------------------------ completion

    def iter_completion(
        self, class_sourced_id: str, person_sourced_id: str
    ) -> Iterator[ActivityCompletion | Rejected]:
        """Yield one person's completion state of each tracked activity in a course.

        :calls: POST /webservice/rest/server.php core_completion_get_activities_completion_status
        """
        course_id = _id(class_sourced_id, "class", self.name)
        user_id = _id(person_sourced_id, "person", self.name)
        body = self.client.get_activities_completion_status(course_id, user_id)
        raw = body.get("statuses") if isinstance(body, Mapping) else None
        for status in load_each(CompletionStatusSchema(), raw if isinstance(raw, list) else [], "completion"):
            if isinstance(status, Rejected):
                yield status
                continue
            yield self._completion(class_sourced_id, person_sourced_id, status)

    @staticmethod
    def _completion(class_id: str, person_id: str, status: CompletionStatus) -> ActivityCompletion:
        return ActivityCompletion(class_sourced_id=class_id, person_sourced_id=person_id, cmid=status.cmid,
                                  state=status.state, completed_at=_ts(status.timecompleted),
                                  tracking=status.tracking)

    # ================================================================== push

    def push(self, write: Write) -> PushResult:
        """Apply one write: a grade, a message, or the check that a gate is set up in Moodle."""
        if isinstance(write, ScoreWrite):
            return self._push_score(write)
        if isinstance(write, MessageWrite):
            return self._push_message(write)
        if isinstance(write, GateWrite):
            return self._push_gate(write)
        raise RemoteRejected(f"{self.name}: Moodle cannot apply {type(write).__name__}", source=self.name)

    def _grade_item(self, course_id: int, item_id: int, user_id: int = 0) -> GradeItem | None:
        """Return a grade item's definition, from the cache or the grade report.

        :calls: POST /webservice/rest/server.php gradereport_user_get_grade_items
        """
        cached = self._grade_items.get(course_id, {}).get(item_id)
        if cached is not None:
            return cached
        body = self.client.get_grade_items(course_id, user_id)
        rows = body.get("usergrades") if isinstance(body, Mapping) else None
        items: dict[int, GradeItem] = {}
        for row in load_each(UserGradesSchema(), rows if isinstance(rows, list) else [], "result"):
            if isinstance(row, Rejected):
                continue
            for item in load_each(GradeItemSchema(), row.gradeitems, "activity"):
                if not isinstance(item, Rejected):
                    items.setdefault(item.id, item)
            break  # item definitions are the same in every row
        self._remember_items(course_id, items)
        return items.get(item_id)

    def _push_score(self, write: ScoreWrite) -> PushResult:
        """Set a person's grade on an activity's grade item.

        :calls: POST /webservice/rest/server.php core_grades_update_grades
        """
        course_id = _id(write.class_sourced_id, "class", self.name)
        item_id = _id(write.activity_sourced_id, "activity", self.name)
        user_id = _id(write.person_sourced_id, "person", self.name)
        if write.score_given is None:
            raise RemoteRejected(f"{self.name}: Moodle web services cannot clear a grade (item {item_id}, "
                                 f"user {user_id}); clear it in the gradebook", source=self.name)
        stamp = write.timestamp if write.timestamp.tzinfo else write.timestamp.replace(tzinfo=UTC)
        last = self._last_score.get((item_id, user_id))
        if last is not None and stamp < last:
            return PushResult(remote_id=f"{item_id}:{user_id}",
                              detail={"skipped": "a newer score was already written"})
        self.client.require_function("core_grades_update_grades", "writing grades")
        item = self._grade_item(course_id, item_id, user_id)
        if item is None:
            raise NotFound(f"{self.name}: course {course_id} has no grade item {item_id}", source=self.name)
        if item.itemtype != "mod" or not item.itemmodule or not item.cmid:
            raise RemoteRejected(
                f"{self.name}: “{item.itemname or item_id}” is a {item.itemtype} grade item; Moodle web "
                "services can write grades only to an activity's grade item. Score an LTI activity instead "
                "(its grades arrive through LTI Assignment and Grade Services).",
                source=self.name,
            )
        if item.gradeislocked:
            raise RemoteRejected(f"{self.name}: grade item “{item.itemname or item_id}” is locked in Moodle",
                                 source=self.name)
        grade = self._raw_grade(write, item)
        entry: dict[str, Any] = {"studentid": user_id, "grade": grade}
        if write.comment:
            entry["str_feedback"] = write.comment
        status = self.client.update_grades(
            source=self.grade_source,
            course_id=course_id,
            component=f"mod_{item.itemmodule}",
            cmid=item.cmid,
            item_number=item.itemnumber or 0,
            grades=[entry],
        )
        if status not in (0, "0", None):
            reason = GRADE_UPDATE_STATUS.get(int(status), f"status {status}")
            raise RemoteRejected(f"{self.name}: Moodle did not store the grade for item {item_id}: {reason}",
                                 source=self.name)
        self._last_score[(item_id, user_id)] = stamp
        return PushResult(remote_id=f"{item_id}:{user_id}", detail={"grade": grade})

    @staticmethod
    def _raw_grade(write: ScoreWrite, item: GradeItem) -> float:
        """Rescale a score onto the item's range (scale items get the nearest scale value)."""
        low = item.grademin or 0.0
        high = item.grademax if item.grademax is not None else write.score_maximum
        given = float(write.score_given or 0.0)
        if write.score_maximum and write.score_maximum > 0 and high != write.score_maximum:
            grade = low + given / write.score_maximum * (high - low)
        else:
            grade = given
        if item.scaleid:
            grade = float(min(max(round(grade), low or 1), high))
        return round(grade, 5)

    def _push_message(self, write: MessageWrite) -> PushResult:
        """Send one message to each recipient as the token's user; never repeated automatically.

        :calls: POST /webservice/rest/server.php core_message_send_instant_messages
        """
        recipients = [_id(r, "recipient", self.name) for r in write.recipient_sourced_ids]
        if not recipients:
            raise RemoteRejected(f"{self.name}: a message needs at least one recipient", source=self.name)
        self.client.require_function("core_message_send_instant_messages", "sending messages")
        text = f"{write.subject}\n\n{write.body}" if write.subject else write.body
        key = f"{write.class_sourced_id}\x1f{write.subject}\x1f{write.body}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        messages = [{"touserid": uid, "text": text, "textformat": FORMAT_PLAIN,
                     "clientmsgid": f"tm{digest[:24]}-{uid}"} for uid in recipients]
        raw = self.client.send_instant_messages(messages)
        sent: list[str] = []
        failed: dict[str, str] = {}
        by_client_id = {m["clientmsgid"]: str(m["touserid"]) for m in messages}
        for n, result in enumerate(load_each(MessageResultSchema(), _list(raw), "message")):
            if isinstance(result, Rejected):
                continue
            fallback = str(recipients[n]) if n < len(recipients) else "?"
            who = by_client_id.get(result.clientmsgid or "", fallback)
            if result.msgid > 0:
                sent.append(str(result.msgid))
            else:
                failed[who] = result.errormessage or "not delivered"
        if not sent:
            reasons = "; ".join(f"user {who}: {why}" for who, why in failed.items()) or "no result returned"
            raise RemoteRejected(f"{self.name}: Moodle delivered no message ({reasons})", source=self.name)
        return PushResult(remote_id=",".join(sent), detail={"sent": len(sent), "failed": failed})

    def _push_gate(self, write: GateWrite) -> PushResult:
        """Confirm a gate is set in Moodle; if not, refuse with the one-time set-up a teacher must do.

        No core web service writes restrict-access rules, so this never changes Moodle.

        :calls: POST /webservice/rest/server.php core_course_get_contents
        """
        course_id = _id(write.class_sourced_id, "class", self.name)
        if not write.check_activity_sourced_id or write.min_score is None:
            raise RemoteRejected(f"{self.name}: a Moodle gate needs a check activity and a minimum score",
                                 source=self.name)
        item_id = _id(write.check_activity_sourced_id, "activity", self.name)
        item = self._grade_item(course_id, item_id)
        maximum = item.grademax if item else None
        minimum = (item.grademin or 0.0) if item else 0.0
        percent = to_percent(write.min_score, maximum, minimum)
        section = self.restrictions(write.class_sourced_id).get(write.module_sourced_id)
        if section is None:
            raise NotFound(f"{self.name}: course {course_id} has no section {write.module_sourced_id}",
                           source=self.name)
        activities = [a for a in section.activities
                      if a.modname not in NOT_GATED_MODULES and not (item and item.cmid == a.cmid)]
        if activities and all(requires_grade(a.availability, item_id, percent) for a in activities):
            return PushResult(remote_id=write.module_sourced_id,
                              detail={"verified": True, "activities": len(activities)})
        unrestricted = [a.name for a in activities if not requires_grade(a.availability, item_id, percent)]
        module = Module(sourced_id=write.module_sourced_id, class_sourced_id=write.class_sourced_id,
                        title=section.title)
        check = Activity(sourced_id=str(item_id), class_sourced_id=write.class_sourced_id,
                         title=(item.itemname if item and item.itemname else f"grade item {item_id}"),
                         score_maximum=maximum)
        steps = restriction_instructions(module, check, write.min_score)
        detail = f" Not yet restricted: {', '.join(unrestricted)}." if unrestricted else ""
        raise RemoteRejected(
            f"{self.name}: Moodle web services cannot set restrict-access rules; a teacher sets this gate "
            f"once in Moodle.{detail}\n{steps.as_text()}",
            source=self.name,
        )


__all__ = [
    "ActivityCompletion",
    "CmRestriction",
    "SectionRestrictions",
    "DEFAULT_ROLE_MAP",
    "MoodleConnector",
    "availability_grade_conditions",
    "restriction_instructions",
]
