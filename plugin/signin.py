"""Emailed sign-in links for parents and guardians whose LMS sends no Mentor launch (Moodle).

A parent asks for a link with the email address the school has on file; the link is single-use, expires, and opens
a parent session limited to the children the roster links to that parent. The answer never says whether an address
is on file.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from plugin.store.models import District, Person, SignInLink

GUARDIAN_ROLES = ("parent", "guardian", "relative")
MAX_LINKS_PER_HOUR = 3


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def find_guardian(session: Session, district: District, email: str) -> Person | None:
    """The active parent/guardian with this email in the district, if exactly one."""
    email = email.strip().lower()
    if not email or "@" not in email or len(email) > 254:
        return None
    rows = list(session.scalars(select(Person).where(
        Person.district_id == district.id, func.lower(Person.email) == email, Person.role.in_(GUARDIAN_ROLES),
        Person.status == "active").limit(2)))
    return rows[0] if len(rows) == 1 else None


def issue_link(session: Session, person: Person, *, minutes: int, now: datetime) -> str | None:
    """Create a sign-in token for a person, or None when they asked too often this hour."""
    recent = session.scalar(select(func.count()).select_from(SignInLink).where(
        SignInLink.person_id == person.id, SignInLink.created_at > now - timedelta(hours=1)))
    if (recent or 0) >= MAX_LINKS_PER_HOUR:
        return None
    token = secrets.token_urlsafe(32)
    session.add(SignInLink(id=_digest(token), district_id=person.district_id, person_id=person.id, created_at=now,
                           expires_at=now + timedelta(minutes=minutes)))
    session.flush()
    return token


def redeem_link(session: Session, token: str, now: datetime) -> Person | None:
    """Use a sign-in token once; returns its person, or None if unknown, used or expired."""
    if not token or len(token) > 128:
        return None
    link = session.get(SignInLink, _digest(token))
    if link is None or link.used_at is not None:
        return None
    expires = link.expires_at if link.expires_at.tzinfo else link.expires_at.replace(tzinfo=UTC)
    if expires <= now:
        return None
    link.used_at = now
    person = session.get(Person, link.person_id)
    if person is None or person.status != "active":
        return None
    return person


def signin_text(*, name: str, url: str, minutes: int) -> str:
    return (f"Hello {name},\n\nUse this link to see your child's learning profile and pace in Trailmark:\n\n{url}\n\n"
            f"The link works once and expires in {minutes} minutes. If you did not ask for it, ignore this "
            "message.\n")
