"""Scheduled learning jobs: the daily recompute (pace moves with the calendar even without new scores) and the
weekly digest emailed to teachers and parents, built by ``plugin.learning.alerts.build_digests``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin import signin
from plugin.learning.alerts import Alert, AlertKind, Audience, DigestRoster, build_digests
from plugin.learning.pace import PaceState, PaceStatus, TermPhase
from plugin.mail import MailError, send
from plugin.progress import recompute
from plugin.store import models as m

log = logging.getLogger("trailmark.notify")


def _status(r: m.PaceRecord) -> PaceStatus:
    return PaceStatus(
        student_id=str(r.person_id), class_id=str(r.class_id), state=PaceState(r.state), phase=TermPhase(r.phase),
        completed=r.completed, expected=r.expected, total=r.total, modules_behind=r.modules_behind,
        days_behind=r.days_behind, modules_ahead=r.modules_ahead, days_ahead=r.days_ahead, next_due=r.next_due,
        projected_finish=r.projected_finish, accommodated=r.accommodated)


def _roster(session: Session, district_id: int) -> tuple[DigestRoster, dict[str, m.Person]]:
    people = {str(p.id): p for p in session.scalars(select(m.Person).where(
        m.Person.district_id == district_id, m.Person.status == "active"))}
    classes = {str(c.id): c.title for c in session.scalars(select(m.Class).where(
        m.Class.district_id == district_id, m.Class.status == "active"))}
    teaching: dict[str, list[str]] = defaultdict(list)
    for pid, cid in session.execute(select(m.Enrollment.person_id, m.Enrollment.class_id).where(
            m.Enrollment.district_id == district_id, m.Enrollment.role.in_(("teacher", "aide")),
            m.Enrollment.status == "active")):
        teaching[str(pid)].append(str(cid))
    children: dict[str, list[str]] = defaultdict(list)
    for gid, sid in session.execute(select(m.GuardianLink.guardian_id, m.GuardianLink.student_id).where(
            m.GuardianLink.district_id == district_id, m.GuardianLink.status == "active")):
        children[str(gid)].append(str(sid))
    roster = DigestRoster(names={k: p.display_name for k, p in people.items()}, class_titles=classes,
                          teacher_classes={k: tuple(v) for k, v in teaching.items()},
                          guardian_students={k: tuple(v) for k, v in children.items()})
    return roster, people


def send_weekly_digests(session: Session, district_id: int, mail_cfg: dict[str, Any], *, base_url: str,
                        now: datetime | None = None) -> int:
    """Email this week's digest to every teacher and parent with an address; returns how many were sent."""
    now = now or datetime.now(UTC)
    district = session.get(m.District, district_id)
    if district is None:
        raise LookupError(f"no district {district_id}")
    statuses = [_status(r) for r in session.scalars(
        select(m.PaceRecord).where(m.PaceRecord.district_id == district_id))]
    alerts = [Alert(str(a.person_id), str(a.class_id), AlertKind(a.kind), a.level, a.opened_at, a.updated_at,
                    a.detail, id=str(a.id)) for a in session.scalars(select(m.AlertRecord).where(
                        m.AlertRecord.district_id == district_id, m.AlertRecord.resolved_at.is_(None)))]
    roster, people = _roster(session, district_id)
    sent = 0
    for digest in build_digests(statuses, alerts, roster, week_of=now.date()):
        if digest.audience not in (Audience.TEACHER, Audience.PARENT):
            continue  # students read their pace in Trailmark itself
        person = people.get(digest.recipient_id)
        if person is None or not person.email:
            continue
        text = "\n".join(digest.lines)
        if digest.audience is Audience.PARENT:
            token = signin.issue_link(session, person, minutes=mail_cfg["signin_minutes"], now=now)
            if token:
                text += (f"\n\nSee the details in Trailmark: {base_url}/p/signin/link/{token}\n"
                         f"(the link works once and expires in {mail_cfg['signin_minutes']} minutes)")
        try:
            send(mail_cfg, to=person.email, subject=digest.subject, text=text)
            sent += 1
        except MailError as exc:
            log.warning("digest.failed district=%s: %s", district.slug, exc)
    session.flush()
    return sent


def register_jobs(scheduler: Any, app: Any) -> None:
    """Daily recompute of every district; the weekly digest when mail is on."""
    from apscheduler.triggers.cron import CronTrigger

    scheduler.add_job(run_daily_recompute, CronTrigger(hour=5, minute=15, timezone=UTC), args=(app,),
                      id="learning:daily", name="daily learning recompute", max_instances=1, coalesce=True,
                      replace_existing=True)
    mail_cfg = (app.config.get("TRAILMARK") or {}).get("mail") or {}
    if mail_cfg.get("enabled"):
        scheduler.add_job(run_weekly_digest, CronTrigger(day_of_week=mail_cfg["digest_weekday"], hour=15,
                                                         timezone=UTC),
                          args=(app,), id="learning:digest", name="weekly digest", max_instances=1, coalesce=True,
                          replace_existing=True)


def _district_ids(session: Session) -> list[int]:
    return list(session.scalars(select(m.District.id).order_by(m.District.id)))


def run_daily_recompute(app: Any) -> None:
    from plugin.store.db import get_store

    store = get_store(app)
    with store.session() as session:
        ids = _district_ids(session)
    for district_id in ids:
        with store.session() as session:
            summary = recompute(session, district_id)
        log.info("learning.daily district=%s classes=%d alerts_opened=%d", district_id, summary.classes,
                 summary.alerts_opened)


def run_weekly_digest(app: Any) -> None:
    from plugin.store.db import get_store

    store = get_store(app)
    with store.session() as session:
        ids = _district_ids(session)
    for district_id in ids:
        with store.session() as session:
            sent = send_weekly_digests(session, district_id, app.config["TRAILMARK"]["mail"],
                                       base_url=app.config["BASE_URL"])
        log.info("learning.digest district=%s sent=%d", district_id, sent)
