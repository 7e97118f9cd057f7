"""Minimum-pace alerts sent through the LMS (Canvas Conversations, Moodle messages) to teachers, students and
parents, as the district's ``alert_messages`` setting asks.

``plugin.progress.recompute`` calls :func:`queue_alert_messages` after it stores a batch of classes' alerts. Every
open alert whose level is above its ``notified_level`` (just opened, or escalated since the last message) is
handled once: one :class:`~connectors.base.MessageWrite` per audience the district wants for that kind and level,
queued in the outbox for the class's write target under the key ``alert:<id>:<level>:<audience>`` (so running the
recompute again never sends twice), then ``notified_level`` becomes the alert's level. Settings apply to alerts
that open or rise a level from then on.

Each message is about one student only: a teacher's names the student, a student's speaks to them, and a parent's
is about their own child. People the class's LMS has no id for are skipped and counted; a class whose write target
cannot send messages (a OneRoster-only class, an LTI-only platform) queues nothing and is named in the summary.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from connectors import outbox
from connectors.base import Capability, ConfigurationError, MessageWrite
from connectors.registry import connector_class
from plugin.config import ALERT_AUDIENCES, AlertMessagesSchema
from plugin.learning.alerts import AlertKind, Audience
from plugin.progress import WRITE_SOURCE_KINDS, RecomputeSummary, _write_target
from plugin.store import models as m
from plugin.store import queries

log = logging.getLogger("trailmark.alert_messages")

TEACHING_ROLES = ("teacher", "aide")
KEY_PREFIX = "alert"
REASON_CHARS = 300


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class AudienceRule:
    """Which alerts one audience receives: these kinds, from this level up."""

    kinds: frozenset[str] = frozenset()
    min_level: int = 1

    def wants(self, kind: str, level: int) -> bool:
        """Return whether an alert of ``kind`` at ``level`` goes to this audience."""
        return kind in self.kinds and level >= self.min_level


@dataclass(frozen=True, slots=True)
class MessageSettings:
    """A district's alert-message settings, read from ``district.settings["alert_messages"]``."""

    rules: Mapping[Audience, AudienceRule]
    signin_url: str | None = None

    @classmethod
    def of(cls, settings: Mapping[str, Any] | None) -> MessageSettings:
        """Read the stored settings; a district without them gets the configuration's defaults."""
        raw = dict((settings or {}).get("alert_messages") or {})
        signin_url = raw.pop("signin_url", None)
        loaded = AlertMessagesSchema().load(raw)
        rules = {Audience(name): AudienceRule(frozenset(loaded[name]["kinds"]), int(loaded[name]["min_level"]))
                 for name in ALERT_AUDIENCES}
        return cls(rules, signin_url if isinstance(signin_url, str) and signin_url else None)

    @property
    def any(self) -> bool:
        """Whether any audience receives any alert."""
        return any(rule.kinds for rule in self.rules.values())

    def audiences(self, kind: str, level: int) -> tuple[Audience, ...]:
        """Return the audiences an alert of ``kind`` at ``level`` goes to, teacher first."""
        return tuple(a for a in Audience if a in self.rules and self.rules[a].wants(kind, level))


# --------------------------------------------------------------------------- composing


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """Everything a message says about one alert: one student, one class, no ids."""

    kind: AlertKind
    level: int
    student_name: str
    student_given_name: str
    class_title: str
    detail: str
    completed: int = 0
    total: int = 0
    modules_behind: int = 0
    days_behind: int = 0
    modules_ahead: int = 0
    days_ahead: int = 0
    next_due: date | None = None


@dataclass(frozen=True, slots=True)
class Message:
    subject: str
    body: str


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _day(value: date) -> str:
    return f"{value:%A}, {value:%B} {value.day}"


def _headline(facts: AlertFacts, audience: Audience) -> str:
    who = "You are" if audience is Audience.STUDENT else f"{facts.student_name} is"
    has = "You have" if audience is Audience.STUDENT else f"{facts.student_name} has"
    where = facts.class_title
    if facts.kind is AlertKind.BEHIND:
        how = "far behind" if facts.level >= 3 else "still behind" if facts.level == 2 else "behind"
        return f"{who} {how} the minimum pace in {where}"
    if facts.kind is AlertKind.FAR_AHEAD:
        return f"{who} far ahead of the minimum pace in {where}"
    return f"{has} not completed a module in {where} recently"


def _situation(facts: AlertFacts, audience: Audience) -> list[str]:
    you = audience is Audience.STUDENT
    who = "You are" if you else f"{facts.student_name} is"
    done = f"{facts.completed} of {_count(facts.total, 'module')} done" if facts.total else ""
    lines: list[str] = []
    if facts.kind is AlertKind.BEHIND and facts.modules_behind:
        expected = facts.completed + facts.modules_behind
        lines.append(f"{who} {_count(facts.modules_behind, 'module')} ({_count(facts.days_behind, 'day')}) behind "
                     f"the minimum pace in {facts.class_title}: {done}, {expected} expected by today.")
        if facts.level >= 2:
            span = "two weeks" if facts.level >= 3 else "a week"
            lines.append(f"{'You have' if you else facts.student_given_name + ' has'} been behind for {span} or "
                         "more.")
        if facts.next_due is not None:
            lines.append(f"The oldest unfinished module was due on {_day(facts.next_due)}.")
    elif facts.kind is AlertKind.FAR_AHEAD and facts.modules_ahead:
        days = f" ({_count(facts.days_ahead, 'day')})" if facts.days_ahead else ""
        lines.append(f"{who} {_count(facts.modules_ahead, 'module')}{days} ahead of the minimum pace in "
                     f"{facts.class_title}: {done}.")
    elif facts.kind is AlertKind.STALLED:
        done_text = f" ({done})" if done else ""
        lines.append(f"{who} within the minimum pace in {facts.class_title}{done_text}, but there has been "
                     f"{facts.detail}.")
    else:  # no pace figures stored: the alert's own wording
        lines.append(f"{'You' if you else facts.student_name}, {facts.class_title}: {facts.detail}.")
    return lines


_NEXT: Mapping[tuple[Audience, AlertKind], str] = {
    (Audience.TEACHER, AlertKind.BEHIND):
        "What to do next: check in with {given} about what is in the way and agree on a plan to catch up. In "
        "Trailmark you can give extra days in the pace plan, or open a module if mastery was shown another way.",
    (Audience.TEACHER, AlertKind.STALLED):
        "What to do next: check in with {given} before the pace slips; the learner profile in Trailmark shows "
        "which skills are still open.",
    (Audience.TEACHER, AlertKind.FAR_AHEAD):
        "What to do next: check that {given}'s mastery checks show what was learned, and consider enrichment or "
        "the next course; the learner profile in Trailmark shows strengths and interests.",
    (Audience.STUDENT, AlertKind.BEHIND):
        "What to do next: work on your oldest unfinished module first, and talk with your teacher about a plan to "
        "catch up.",
    (Audience.STUDENT, AlertKind.STALLED):
        "What to do next: pick up your next module this week. If something is in the way, tell your teacher.",
    (Audience.STUDENT, AlertKind.FAR_AHEAD):
        "Great progress. Talk with your teacher about what to explore next, and make sure each mastery check "
        "shows what you learned.",
    (Audience.PARENT, AlertKind.BEHIND):
        "What you can do: ask {given} about the plan to catch up, and contact the teacher if you have questions.",
    (Audience.PARENT, AlertKind.STALLED):
        "What you can do: ask {given} how the current module is going; the teacher can help if something is in "
        "the way.",
    (Audience.PARENT, AlertKind.FAR_AHEAD):
        "What you can do: celebrate the progress with {given}, and ask the teacher about enrichment.",
}


def compose(facts: AlertFacts, audience: Audience, *, signin_url: str | None = None) -> Message:
    """Write the message one audience receives about one alert: who, where, how far, what to do next, where."""
    lines = _situation(facts, audience)
    lines.append("")
    lines.append(_NEXT[(audience, facts.kind)].format(given=facts.student_given_name))
    lines.append("")
    if audience is Audience.TEACHER:
        lines.append(f"Open Trailmark from the {facts.class_title} course to see the alerts inbox and "
                     f"{facts.student_given_name}'s path.")
    elif audience is Audience.STUDENT:
        lines.append(f"Open Trailmark from the {facts.class_title} course to see your path and what is due next.")
    elif signin_url:
        lines.append(f"See the details in Trailmark: {signin_url} (sign in with the email address the school has "
                     "for you).")
    lines.append("")
    lines.append("Sent automatically by Trailmark." + (
        "" if audience is Audience.TEACHER else " To reach the teacher, write to them directly."))
    return Message(_headline(facts, audience), "\n".join(line for line in _drop_double_blanks(lines)))


def _drop_double_blanks(lines: Sequence[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if line == "" and (not out or out[-1] == ""):
            continue
        out.append(line)
    return out


# --------------------------------------------------------------------------- queueing


def message_key(alert_id: int, level: int, audience: Audience | str) -> str:
    """The outbox idempotency key of one alert's message to one audience at one level."""
    return f"{KEY_PREFIX}:{alert_id}:{level}:{Audience(audience).value}"


def _can_message(target: m.Source | m.Platform) -> bool:
    """Whether the connector behind a write target declares it can send messages (LTI Advantage cannot)."""
    return _kind_can_message(target.kind if isinstance(target, m.Source) else "lti")


def _kind_can_message(kind: str) -> bool:
    try:
        cls = connector_class(kind)
    except ConfigurationError:
        return False
    return Capability.WRITE_MESSAGES in getattr(cls, "capabilities", frozenset())


def _target_name(target: m.Source | m.Platform) -> str:
    if isinstance(target, m.Source):
        return f"source {target.name!r} ({target.kind})"
    return f"LTI platform {target.name or target.issuer!r}"


def _mark(alerts: Iterable[m.AlertRecord]) -> None:
    for alert in alerts:
        alert.notified_level = alert.level


@dataclass
class _People:
    """Who each alert's messages go to, and what they say, for one batch of classes."""

    teachers: dict[int, list[int]]
    guardians: dict[int, list[int]]
    names: dict[int, tuple[str, str]]
    titles: dict[int, str]
    pace: dict[tuple[int, int], m.PaceRecord]


def _load_people(session: Session, district_id: int, alerts: Sequence[m.AlertRecord]) -> _People:
    class_ids = sorted({a.class_id for a in alerts})
    student_ids = sorted({a.person_id for a in alerts})
    teachers: dict[int, list[int]] = defaultdict(list)
    for cid, pid in session.execute(
            select(m.Enrollment.class_id, m.Enrollment.person_id)
            .join(m.Person, m.Person.id == m.Enrollment.person_id)
            .where(m.Enrollment.district_id == district_id, m.Enrollment.class_id.in_(class_ids),
                   m.Enrollment.role.in_(TEACHING_ROLES), m.Enrollment.status == "active",
                   m.Person.status == "active")
            .order_by(m.Enrollment.class_id, m.Enrollment.person_id)):
        if pid not in teachers[cid]:
            teachers[cid].append(pid)
    guardians: dict[int, list[int]] = defaultdict(list)
    for sid, gid in session.execute(
            select(m.GuardianLink.student_id, m.GuardianLink.guardian_id)
            .join(m.Person, m.Person.id == m.GuardianLink.guardian_id)
            .where(m.GuardianLink.district_id == district_id, m.GuardianLink.student_id.in_(student_ids),
                   m.GuardianLink.status == "active", m.Person.status == "active")
            .order_by(m.GuardianLink.student_id, m.GuardianLink.guardian_id)):
        if gid not in guardians[sid]:
            guardians[sid].append(gid)
    names: dict[int, tuple[str, str]] = {}
    for pid, given, family, sourced in session.execute(
            select(m.Person.id, m.Person.given_name, m.Person.family_name, m.Person.sourced_id)
            .where(m.Person.id.in_(student_ids))):
        full = f"{given} {family}".strip() or sourced
        names[pid] = (full, given or full)
    titles = dict(session.execute(select(m.Class.id, m.Class.title).where(m.Class.id.in_(class_ids))).all())
    pace = {(r.class_id, r.person_id): r for r in session.scalars(
        select(m.PaceRecord).where(m.PaceRecord.class_id.in_(class_ids), m.PaceRecord.person_id.in_(student_ids)))}
    return _People(teachers, guardians, names, titles, pace)


def facts_of(alert: m.AlertRecord, people: _People) -> AlertFacts:
    """Gather what a message says about one stored alert."""
    name, given = people.names.get(alert.person_id, ("The student", "the student"))
    pace = people.pace.get((alert.class_id, alert.person_id))
    figures: dict[str, Any] = {}
    if pace is not None:
        figures = {"completed": pace.completed, "total": pace.total, "modules_behind": pace.modules_behind,
                   "days_behind": pace.days_behind, "modules_ahead": pace.modules_ahead,
                   "days_ahead": pace.days_ahead, "next_due": pace.next_due}
    return AlertFacts(kind=AlertKind(alert.kind), level=alert.level, student_name=name, student_given_name=given,
                      class_title=people.titles.get(alert.class_id, "your class"), detail=alert.detail, **figures)


def queue_alert_messages(session: Session, district: m.District, class_ids: Sequence[int], *, now: datetime,
                         summary: RecomputeSummary) -> None:
    """Queue the LMS messages of every alert in these classes that opened or rose a level since its last message."""
    alerts = list(session.scalars(
        select(m.AlertRecord).where(m.AlertRecord.district_id == district.id, m.AlertRecord.class_id.in_(class_ids),
                                    m.AlertRecord.resolved_at.is_(None),
                                    m.AlertRecord.level > m.AlertRecord.notified_level)
        .order_by(m.AlertRecord.class_id, m.AlertRecord.id)
        .execution_options(populate_existing=True)))
    if not alerts:
        return
    try:
        settings = MessageSettings.of(district.settings)
    except ValidationError as exc:
        summary.problems.append(f"alert messages are off: the district's alert_messages setting is invalid "
                                f"({exc.messages})")
        return  # notified_level stays: once the setting is fixed, these alerts are sent
    wanted = [(a, settings.audiences(a.kind, a.level)) for a in alerts]
    if not any(audiences for _a, audiences in wanted):
        _mark(alerts)
        session.flush()
        return
    people = _load_people(session, district.id, [a for a, audiences in wanted if audiences])
    by_class: dict[int, list[tuple[m.AlertRecord, tuple[Audience, ...]]]] = defaultdict(list)
    for alert, audiences in wanted:
        by_class[alert.class_id].append((alert, audiences))
    for cid, items in by_class.items():
        sending = [(a, aud) for a, aud in items if aud]
        _mark((a for a, _aud in items))
        if not sending:
            continue
        title = people.titles.get(cid, str(cid))
        target = _write_target(session, district.id, cid)
        if target is None:
            summary.messages_held.append(f"class {cid} ({title}): {_count(len(sending), 'alert')} not sent through "
                                         "an LMS: the class has no LMS source or platform to write to")
            continue
        target_obj, namespace = target
        if not _can_message(target_obj):
            summary.messages_held.append(f"class {cid} ({title}): {_count(len(sending), 'alert')} not sent through "
                                         f"an LMS: {_target_name(target_obj)} cannot send messages")
            continue
        student_ids = {a.person_id for a, _aud in sending}
        person_ids = set(people.teachers.get(cid, ())) | student_ids
        for sid in student_ids:
            person_ids.update(people.guardians.get(sid, ()))
        refs = queries.external_ids(session, district.id, namespace, {"class": [cid], "person": sorted(person_ids)})
        class_ext = refs.get(("class", cid))
        for alert, audiences in sending:
            facts = facts_of(alert, people)
            for audience in audiences:
                recipients = {Audience.TEACHER: people.teachers.get(cid, []), Audience.STUDENT: [alert.person_id],
                              Audience.PARENT: people.guardians.get(alert.person_id, [])}[audience]
                known = [refs[("person", pid)] for pid in recipients if ("person", pid) in refs]
                summary.messages_skipped += len(recipients) - len(known)
                if not known:
                    continue
                message = compose(facts, audience, signin_url=settings.signin_url)
                write = MessageWrite(recipient_sourced_ids=tuple(dict.fromkeys(known)), subject=message.subject,
                                     body=message.body, class_sourced_id=class_ext)
                if outbox.enqueue(session, district.id, target_obj, write, message_key(alert.id, alert.level, audience),
                                  now=now):
                    summary.messages_queued += 1
    session.flush()
    if summary.messages_held or summary.messages_skipped:
        log.info("alert_messages district=%s queued=%d skipped=%d held=%d", district.id, summary.messages_queued,
                 summary.messages_skipped, len(summary.messages_held))


# --------------------------------------------------------------------------- delivery, for the alerts inbox


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where one audience's message about an alert stands in the outbox."""

    audience: str
    status: str  # queued | retrying | sent | failed
    reason: str | None = None

    @property
    def label(self) -> str:
        text = f"{self.audience.capitalize()}: {self.status}"
        return f"{text} ({self.reason})" if self.reason else text


@dataclass(frozen=True, slots=True)
class AlertDelivery:
    """The messages of an alert's latest notified level."""

    level: int
    deliveries: tuple[Delivery, ...]


_STATUS = {outbox.SENT: "sent", outbox.DEAD: "failed"}


def delivery(session: Session, district_id: int, levels: Mapping[int, int]) -> dict[int, AlertDelivery]:
    """Return, per alert id (given with its current level), how its latest LMS messages stand in the outbox."""
    if not levels:
        return {}
    keys = [message_key(aid, level, audience) for aid, top in levels.items() for level in range(1, top + 1)
            for audience in Audience]
    found: dict[int, dict[int, list[Delivery]]] = defaultdict(lambda: defaultdict(list))
    item = m.OutboxItem
    for key, status, attempts, error in session.execute(
            select(item.idempotency_key, item.status, item.attempts, item.last_error)
            .where(item.district_id == district_id, item.kind == "message", item.idempotency_key.in_(keys))):
        _prefix, aid, level, audience = key.split(":")
        if status == outbox.PENDING:
            shown, reason = ("retrying", error) if attempts else ("queued", None)
        else:
            shown, reason = _STATUS.get(status, status), (error if status == outbox.DEAD else None)
        if reason and len(reason) > REASON_CHARS:
            reason = reason[:REASON_CHARS - 1] + "…"
        found[int(aid)][int(level)].append(Delivery(audience, shown, reason))
    order = {a.value: i for i, a in enumerate(Audience)}
    out = {}
    for aid, by_level in found.items():
        level = max(by_level)
        out[aid] = AlertDelivery(level, tuple(sorted(by_level[level], key=lambda d: order.get(d.audience, 9))))
    return out



def not_sent_reasons(session: Session, district_id: int, class_id: int, alerts: Sequence[tuple[int, str, int]]
                     ) -> dict[int, str]:
    """For alerts (id, kind, level) of one class with no LMS message, say why, in the teacher's words."""
    if not alerts:
        return {}
    try:
        settings = MessageSettings.of(session.scalar(select(m.District.settings).where(m.District.id == district_id)))
    except ValidationError:
        return {aid: "Not sent: the district's alert message settings are invalid" for aid, _k, _l in alerts}
    out = {aid: "Off for this alert in the district's settings" for aid, kind, level in alerts
           if not settings.audiences(kind, level)}
    rest = [aid for aid, _k, _l in alerts if aid not in out]
    if rest:
        out.update(dict.fromkeys(rest, _route_reason(session, district_id, class_id)))
    return out


def _route_reason(session: Session, district_id: int, class_id: int) -> str:
    """What stands between a class's alerts and the LMS, read in one query (``_write_target``'s order)."""
    ref, source = m.ExternalRef, m.Source
    routes = session.execute(
        select(ref.namespace, source.kind)
        .outerjoin(source, (source.district_id == ref.district_id) & (source.name == ref.namespace))
        .where(ref.district_id == district_id, ref.kind == "class", ref.entity_id == class_id,
               ref.status == "active")).all()
    kind = next((k for _ns, k in routes if k in WRITE_SOURCE_KINDS), None)
    if kind is None and any(ns.startswith("lti:") for ns, _k in routes):
        kind = "lti"  # launched from an LTI platform, written to through LTI Advantage
    if kind is None:
        return "Not sent: the class has no LMS connection to send through"
    return "Not sent yet" if _kind_can_message(kind) else "Not sent: this LMS connection cannot send messages"


WITHDRAWN = "the alert was resolved before the message went out"


def withdraw(session: Session, district_id: int, alert_ids: Iterable[int]) -> int:
    """Cancel the LMS messages still waiting for alerts that have just resolved; return how many."""
    ids = sorted(set(alert_ids))
    if not ids:
        return 0
    levels = range(1, 4)
    keys = [message_key(aid, level, audience) for aid in ids for level in levels for audience in Audience]
    item = m.OutboxItem
    waiting = session.scalars(select(item.id).where(
        item.district_id == district_id, item.kind == "message", item.status == outbox.PENDING,
        item.idempotency_key.in_(keys))).all()
    return outbox.cancel(session, waiting, WITHDRAWN)
