"""LTI Advantage connector for platforms without API credentials: NRPS rosters, AGS line items and scores.

One connector covers one LTI context (a course): its ``context_memberships_url`` (NRPS) and
``lineitems`` URL (AGS) come from a launch's service claims. People are keyed by the platform's
``sub`` (``user_id``), which is what AGS scores address; line items are keyed by their URL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import requests

from connectors.base import (
    ACTIVE,
    TOBEDELETED,
    Activity,
    Capability,
    Class,
    Complete,
    ConfigurationError,
    Enrollment,
    Item,
    Person,
    PushResult,
    Rejected,
    RemoteRejected,
    Result,
    Scope,
    ScoreWrite,
    Write,
)
from connectors.http import parse_link_header
from connectors.lti.client import Clock, LtiServiceClient, PlatformSettings, Signer, _utcnow
from connectors.lti.schemas import (
    AgsResult,
    LineItem,
    LineItemSchema,
    Member,
    MemberSchema,
    MembershipContainerSchema,
    NrpsContext,
    ResultSchema,
    load_each,
)

log = logging.getLogger(__name__)

KIND = "lti"

_MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership"

#: LIS context role (or sub-role) → enrollment role; ``None`` means the role grants no enrollment.
CONTEXT_ROLES: Mapping[str, str | None] = {
    "Learner": "student",
    "Learner#NonCreditLearner": "student",
    "Learner#GuestLearner": "student",
    "Instructor": "teacher",
    "Instructor#PrimaryInstructor": "teacher",
    "Instructor#Lecturer": "teacher",
    "Instructor#SecondaryInstructor": "aide",
    "Instructor#TeachingAssistant": "aide",
    "Instructor#Grader": "aide",
    "TeachingAssistant": "aide",
    "ContentDeveloper": "aide",
    "Mentor": "guardian",
    "Administrator": "administrator",
    "Manager": "administrator",
    "Member": "student",
    "Officer": None,
}
_ROLE_RANK = ("administrator", "teacher", "aide", "guardian", "student")


def context_role(uri: str) -> str | None:
    """Map one LIS role URI (full, sub-role or short form) to an enrollment role, or None."""
    if uri.startswith(_MEMBERSHIP + "#"):
        name = uri[len(_MEMBERSHIP) + 1:]
    elif uri.startswith(_MEMBERSHIP + "/"):
        name = uri[len(_MEMBERSHIP) + 1:]  # "Instructor#TeachingAssistant"
    elif "://" in uri or uri.startswith("urn:"):
        return None  # institution and system roles say nothing about this course
    else:
        name = uri
    if name in CONTEXT_ROLES:
        return CONTEXT_ROLES[name]
    return CONTEXT_ROLES.get(name.split("#", 1)[0])


def enrollment_roles(uris: tuple[str, ...]) -> list[str]:
    """Return the distinct enrollment roles in ``uris``, most senior first."""
    roles = {r for r in (context_role(u) for u in uris) if r}
    return sorted(roles, key=_ROLE_RANK.index)


def iso_timestamp(when: datetime) -> str:
    """Format an AGS timestamp: ISO 8601 with milliseconds and an explicit offset (naive = UTC)."""
    aware = when if when.tzinfo else when.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds")


class LtiAdvantageConnector:
    """Roster (NRPS), graded items and results (AGS) of one LTI context; scores written back through AGS."""

    kind = KIND
    capabilities = frozenset({
        Capability.READ_ROSTER,
        Capability.READ_CONTENT,
        Capability.READ_PROGRESS,
        Capability.READ_DELTA,  # NRPS differences link
        Capability.WRITE_SCORES,
    })

    def __init__(
        self,
        name: str,
        platform: PlatformSettings,
        context_memberships_url: str | None,
        lineitems_url: str | None,
        signer: Signer,
        *,
        context_id: str | None = None,
        role: str | None = None,
        page_size: int | None = 100,
        differences_url: str | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        max_retries: int = 5,
        now: Clock = _utcnow,
    ) -> None:
        if not context_memberships_url and not lineitems_url:
            raise ConfigurationError(f"{name}: an LTI source needs a context_memberships_url (NRPS) or a "
                                     "lineitems URL (AGS)", source=name)
        self.name = name
        self.platform = platform
        self.memberships_url = context_memberships_url
        self.lineitems_url = lineitems_url
        self.role = role
        self.page_size = page_size
        self.context_id = context_id
        self.differences_url = differences_url
        self.client = LtiServiceClient(name, platform, signer, session=session, sleep=sleep,
                                       max_retries=max_retries, now=now)
        #: last AGS timestamp sent per (line item, user); a score older than it is never sent.
        self.last_score_timestamps: dict[tuple[str, str], datetime] = {}

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        *,
        platform: PlatformSettings,
        signer: Signer,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Clock = _utcnow,
    ) -> LtiAdvantageConnector:
        """Build from a district-file source entry; the caller supplies the platform and the key signer."""
        name = str(cfg.get("name") or "")
        if not name:
            raise ConfigurationError("an LTI source needs a 'name'")
        if cfg.get("kind", KIND) != KIND:
            raise ConfigurationError(f"{name}: kind is {cfg.get('kind')!r}, expected 'lti'", source=name)
        cursor = cfg.get("cursor") or {}
        return cls(
            name,
            platform,
            cfg.get("context_memberships_url"),
            cfg.get("lineitems_url"),
            signer,
            context_id=cfg.get("context_id"),
            role=cfg.get("role"),
            page_size=cfg.get("page_size", 100),
            differences_url=cursor.get("differences_url"),
            session=session,
            sleep=sleep,
            max_retries=int(cfg.get("max_retries", 5)),
            now=now,
        )

    @property
    def cursor(self) -> dict[str, Any]:
        """What the next run needs to poll only changes (store it in the source's cursor)."""
        return {"differences_url": self.differences_url} if self.differences_url else {}

    # ================================================================== pull

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream the context's class, members and enrollments, line items, and results.

        With ``since`` and a stored differences link, only membership changes are read (and nothing
        is marked complete, so nothing is removed for not being listed).
        """
        if scope.includes(Scope.ROSTER) and self.memberships_url:
            yield from self._pull_roster(delta=since is not None and bool(self.differences_url))
        content, progress = scope.includes(Scope.CONTENT), scope.includes(Scope.PROGRESS)
        if (content or progress) and self.lineitems_url:
            yield from self._pull_grades(content, progress)

    def _pull_roster(self, *, delta: bool) -> Iterator[Item]:
        """Yield the class, then people and enrollments page by page.

        :calls: GET {context_memberships_url}
        """
        if delta:
            pages = self.client.iter_membership_differences(self.differences_url or "")
        else:
            pages = self.client.iter_memberships(self.memberships_url or "", role=self.role,
                                                 limit=self.page_size)
        class_emitted = False
        complete = not delta
        people: set[str] = set()
        differences: str | None = None
        for response in pages:
            link = parse_link_header(response.headers.get("Link")).get("differences")
            differences = link or differences
            container = self._load_container(response)
            if isinstance(container, Rejected):
                complete = False
                yield container
                continue
            if not class_emitted:
                klass = self._class(container.get("context"))
                if isinstance(klass, Rejected):
                    yield klass
                    return
                class_emitted = True
                if not delta:
                    yield klass
            for member in load_each(MemberSchema(), container["members"], "person", id_key="user_id"):
                if isinstance(member, Rejected):
                    complete = False
                    yield member
                    continue
                yield from self._member(member, people)
        if differences:
            self.differences_url = differences
        if complete and self.context_id:
            yield Complete("enrollment", self.context_id, "class")

    def _load_container(self, response: requests.Response) -> dict[str, Any] | Rejected:
        try:
            body = response.json()
        except ValueError:
            return Rejected("enrollment", self.context_id, None, "membership page is not JSON")
        found = next(iter(load_each(MembershipContainerSchema(), [body], "enrollment")))
        return found if isinstance(found, Rejected) else dict(found)

    def _class(self, context: NrpsContext | None) -> Class | Rejected:
        if context is not None and self.context_id and context.id != self.context_id:
            return Rejected("class", context.id, "context.id",
                            f"memberships belong to context {context.id}, expected {self.context_id}")
        if context is None and not self.context_id:
            return Rejected("class", None, "context", "the membership container names no context")
        self.context_id = self.context_id or (context.id if context else None)
        cid = self.context_id or ""
        title = (context.title or context.label or cid) if context else cid
        return Class(sourced_id=cid, title=title, class_code=context.label if context else None,
                     lti_context_id=cid)

    def _member(self, member: Member, people: set[str]) -> Iterator[Item]:
        roles = enrollment_roles(member.roles)
        if not roles:
            return
        if member.user_id not in people:
            people.add(member.user_id)
            given, family = member.given_name, member.family_name
            if not given and not family and member.name:
                given, _, family = member.name.partition(" ")
            yield Person(sourced_id=member.user_id, role=roles[0], given_name=given or "",
                         family_name=family or "", email=member.email, sis_id=member.lis_person_sourcedid,
                         lti_sub=member.user_id)
        status = ACTIVE if member.status == "Active" else TOBEDELETED
        for role in roles:
            yield Enrollment(sourced_id=f"{self.context_id}:{member.user_id}:{role}",
                             class_sourced_id=self.context_id or "", person_sourced_id=member.user_id,
                             role=role, status=status)

    def _require_context(self) -> str:
        """Return the context id, learning it from the first memberships page when not configured.

        :calls: GET {context_memberships_url}
        """
        if self.context_id:
            return self.context_id
        if self.memberships_url:
            response = next(iter(self.client.iter_memberships(self.memberships_url, limit=1)))
            container = self._load_container(response)
            if not isinstance(container, Rejected) and container.get("context") is not None:
                self.context_id = container["context"].id
                return self.context_id
        raise ConfigurationError(f"{self.name}: the LTI context id is unknown; set context_id",
                                 source=self.name)

    # ------------------------------------------------------------------ AGS reads

    def iter_line_items(self, **filters: Any) -> Iterator[LineItem | Rejected]:
        """Yield the context's line items (filters: resource_id, tag, resource_link_id).

        :calls: GET {lineitems}
        """
        pages = self.client.iter_line_items(self.lineitems_url or "", limit=self.page_size, **filters)
        for response in pages:
            body = response.json()
            yield from load_each(LineItemSchema(), body if isinstance(body, list) else [], "activity")

    def _pull_grades(self, content: bool, progress: bool) -> Iterator[Item]:
        cid = self._require_context()
        items: list[LineItem] = []
        listed = True
        for item in self.iter_line_items():
            if isinstance(item, Rejected):
                listed = False
                yield item
                continue
            items.append(item)
            if content:
                yield Activity(sourced_id=item.id, class_sourced_id=cid, title=item.label,
                               score_maximum=item.score_maximum, due_at=item.end, category=item.tag)
        if content and listed:
            yield Complete("activity", cid, "class")
        if not progress:
            return
        complete = listed
        for item in items:
            for result in self.iter_results(item):
                if isinstance(result, Rejected):
                    complete = False
                    yield result
                    continue
                if result.score is None and not result.comment:
                    continue
                maximum = result.maximum if result.maximum is not None else item.score_maximum
                yield Result(sourced_id=f"{item.id}:{result.user_id}", person_sourced_id=result.user_id,
                             activity_sourced_id=item.id, score=result.score, score_maximum=maximum,
                             comment=result.comment)
        if complete:
            yield Complete("result", cid, "class")

    def iter_results(self, item: LineItem) -> Iterator[AgsResult | Rejected]:
        """Yield the results of one line item.

        :calls: GET {lineitem}/results
        """
        for response in self.client.iter_results(item.id, limit=self.page_size):
            body = response.json()
            yield from load_each(ResultSchema(), body if isinstance(body, list) else [], "result")

    # ================================================================== push

    def ensure_line_item(self, resource_id: str, label: str, score_maximum: float, *, tag: str | None = None,
                         resource_link_id: str | None = None) -> LineItem:
        """Find the line item for ``resource_id`` (and ``tag``) or create it; return it.

        :calls: GET {lineitems}?resource_id=…, POST {lineitems}
        """
        filters = {"resource_id": resource_id, "tag": tag}
        for item in self.iter_line_items(**{k: v for k, v in filters.items() if v is not None}):
            if isinstance(item, Rejected):
                continue
            if item.resource_id == resource_id and (tag is None or item.tag == tag):
                return item
        if not self.lineitems_url:
            raise ConfigurationError(f"{self.name}: no AGS lineitems URL to create a line item in",
                                     source=self.name)
        body: dict[str, Any] = {"scoreMaximum": score_maximum, "label": label, "resourceId": resource_id}
        if tag:
            body["tag"] = tag
        if resource_link_id:
            body["resourceLinkId"] = resource_link_id
        answer = self.client.create_line_item(self.lineitems_url, body)
        created: LineItem | Rejected = next(iter(load_each(LineItemSchema(), [answer], "activity")))
        if isinstance(created, Rejected):
            raise RemoteRejected(f"{self.name}: the platform answered the new line item with an unusable "
                                 f"body ({created.field}: {created.reason})", source=self.name)
        return created

    def push(self, write: Write) -> PushResult:
        """Write a score through AGS; other writes have no LTI Advantage service."""
        if not isinstance(write, ScoreWrite):
            raise RemoteRejected(f"{self.name}: LTI Advantage cannot apply {type(write).__name__} "
                                 "(only scores have a service)", source=self.name)
        return self._push_score(write)

    def _push_score(self, write: ScoreWrite) -> PushResult:
        """Publish one score, never with a timestamp older than the last one sent for that line item and user.

        :calls: POST {lineitem}/scores
        """
        if write.activity_sourced_id.startswith(("https://", "http://")):
            line_item = write.activity_sourced_id
        else:  # a Trailmark item the platform does not know yet: its resource id is ours
            line_item = self.ensure_line_item(write.activity_sourced_id, write.activity_sourced_id,
                                              write.score_maximum).id
        stamp = write.timestamp if write.timestamp.tzinfo else write.timestamp.replace(tzinfo=UTC)
        key = (line_item, write.person_sourced_id)
        last = self.last_score_timestamps.get(key)
        if last is not None and stamp < last:
            return PushResult(remote_id=line_item, detail={"skipped": "a newer score was already sent",
                                                           "last_timestamp": iso_timestamp(last)})
        score: dict[str, Any] = {
            "userId": write.person_sourced_id,
            "timestamp": iso_timestamp(stamp),
            "activityProgress": write.activity_progress,
            "gradingProgress": write.grading_progress,
        }
        if write.score_given is not None:
            score["scoreGiven"] = write.score_given
            score["scoreMaximum"] = write.score_maximum
        if write.comment:
            score["comment"] = write.comment
        self.client.post_score(line_item, score)
        self.last_score_timestamps[key] = stamp
        return PushResult(remote_id=line_item, detail={"timestamp": score["timestamp"]})

