"""The built-in sandbox LMS: a small LTI 1.3 platform inside Trailmark for trying it and for end-to-end tests.

It registers itself like any platform (issuer ``<base>/sandbox``), signs real id_tokens with its own RSA key and
goes through the real OIDC login and launch. It seeds a sample district: a teacher, a class of students, a parent
linked to one student, modules, graded activities and competencies.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.config import create_private_file
from plugin.lti.platforms import add_platform
from plugin.lti.provision import namespace
from plugin.store.models import (
    AcademicSession,
    AccommodationRecord,
    Activity,
    Alignment,
    Class,
    Competency,
    Course,
    District,
    Enrollment,
    ExternalRef,
    GateOverrideRecord,
    GuardianLink,
    Module,
    Org,
    PacePlanRecord,
    Person,
    Platform,
    ProfileEntryRecord,
    ProfileSnapshotRecord,
    Result,
)

CLIENT_ID = "trailmark-sandbox"
DEPLOYMENT_ID = "sandbox-deployment-1"
DISTRICT_SLUG = "sandbox"
CONTEXT_ID = "sandbox-algebra-1"
RESOURCE_LINK_ID = "sandbox-dashboard-link"
LIS = "http://purl.imsglobal.org/vocab/lis/v2/"


@dataclass(frozen=True)
class SandboxUser:
    key: str
    given_name: str
    family_name: str
    role: str  # teacher | student | parent | admin
    sis_id: str

    @property
    def sub(self) -> str:
        return f"sandbox-{self.key}"

    @property
    def name(self) -> str:
        return f"{self.given_name} {self.family_name}"

    @property
    def email(self) -> str:
        return f"{self.key}@sandbox.trailmark.invalid"


USERS: tuple[SandboxUser, ...] = (
    SandboxUser("teacher", "Amara", "Rivera", "teacher", "T-1001"),
    SandboxUser("maya", "Maya", "Okafor", "student", "S-2001"),
    SandboxUser("leo", "Leo", "Park", "student", "S-2002"),
    SandboxUser("sofia", "Sofia", "Haddad", "student", "S-2003"),
    SandboxUser("noah", "Noah", "Lindqvist", "student", "S-2004"),
    SandboxUser("aiden", "Aiden", "Mensah", "student", "S-2005"),
    SandboxUser("zara", "Zara", "Kowalski", "student", "S-2006"),
    SandboxUser("parent", "Grace", "Okafor", "parent", "P-3001"),
    SandboxUser("admin", "Dana", "Whitfield", "admin", "A-4001"),
)
PARENT_OF = {"parent": ("maya",)}
ROLES = {
    "teacher": [f"{LIS}membership#Instructor", f"{LIS}institution/person#Faculty"],
    "student": [f"{LIS}membership#Learner", f"{LIS}institution/person#Student"],
    "parent": [f"{LIS}membership#Mentor"],
    "admin": [f"{LIS}institution/person#Administrator"],
}
MODULES = (
    ("Linear equations", ("Solve one-step equations", "Solve multi-step equations")),
    ("Inequalities", ("Solve linear inequalities",)),
    ("Functions", ("Identify functions", "Evaluate functions")),
    ("Linear functions", ("Graph linear functions", "Write linear equations")),
    ("Systems of equations", ("Solve systems by substitution", "Solve systems by elimination")),
)


def user(key: str) -> SandboxUser | None:
    return next((u for u in USERS if u.key == key), None)


def issuer(app: Flask) -> str:
    return f"{app.config['BASE_URL']}/sandbox"


# --------------------------------------------------------------------------- keys


def _key_path(app: Flask) -> Path:
    path = Path(app.config["TRAILMARK"]["sandbox"]["key_path"]).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def private_key(app: Flask) -> rsa.RSAPrivateKey:
    """The sandbox platform's signing key (created on first use, readable only by its owner)."""
    cached = app.extensions.get("trailmark.sandbox_key")
    if cached is not None:
        return cached
    path = _key_path(app)
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        create_private_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, rsa.RSAPrivateKey)
    app.extensions["trailmark.sandbox_key"] = loaded
    return loaded


def _kid(key: rsa.RSAPrivateKey) -> str:
    numbers = key.public_key().public_numbers()
    return "sandbox-" + hashlib.sha256(f"{numbers.n}:{numbers.e}".encode()).hexdigest()[:16]


def sandbox_jwks(app: Flask) -> dict[str, Any]:
    key = private_key(app)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": _kid(key), "alg": "RS256", "use": "sig"})
    return {"keys": [jwk]}


def sign(app: Flask, claims: dict[str, Any]) -> str:
    key = private_key(app)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": _kid(key)})


# --------------------------------------------------------------------------- registration and seed


def ensure_sandbox(session: Session, app: Flask) -> Platform:
    """Register the sandbox platform and seed the sample district (idempotent)."""
    now = datetime.now(UTC)
    district = session.scalars(select(District).where(District.slug == DISTRICT_SLUG)).first()
    if district is None:
        district = District(slug=DISTRICT_SLUG, name="Sandbox District", settings={}, created_at=now)
        session.add(district)
        session.flush()
    base = app.config["BASE_URL"]
    platform = add_platform(
        session, district, issuer=issuer(app), client_id=CLIENT_ID, deployment_ids=[DEPLOYMENT_ID],
        auth_login_url=f"{base}/sandbox/auth", auth_token_url=f"{base}/sandbox/token",
        key_set_url=f"{base}/sandbox/jwks", name="Sandbox LMS", product_family="sandbox",
        registered_via="sandbox", now=now)
    if _seed(session, district, platform, now):
        from plugin.progress import recompute

        recompute(session, district.id, now=now)
    return platform


# The sample class's story, in days before the seed date: six students spread across the pace spectrum.
# Scores are out of 10 on each competency's quiz (a competency is "m.j": module m, outcome j); a score's optional
# third item is the teacher's comment. Module due dates are spread evenly over the term (weekends count), which
# puts modules 1 and 2 due 29 and 8 days before the seed date.
TERM_DAYS_BEFORE = 50
TERM_LENGTH = 105
Attempt = tuple[int, float] | tuple[int, float, str]
SCORES: dict[str, dict[str, tuple[Attempt, ...]]] = {
    # far ahead: modules 1–4 complete, 5 open
    "sofia": {"1.1": ((44, 7), (40, 9)), "1.2": ((42, 8), (40, 10)), "2.1": ((33, 7), (28, 9)),
              "3.1": ((22, 10),), "3.2": ((20, 8), (15, 10)), "4.1": ((8, 9),), "4.2": ((6, 7), (3, 9)),
              "5.1": ((2, 6, "Strong start on substitution; try the elimination method next."),)},
    # ahead by one module
    "zara": {"1.1": ((45, 6), (38, 9)), "1.2": ((41, 8),), "2.1": ((25, 7), (18, 8)), "3.1": ((12, 8),),
             "3.2": ((9, 5), (5, 9)), "4.1": ((2, 7, "Check the scale on each axis before you plot."),)},
    # on track, with gaps in Functions shared with classmates
    "maya": {"1.1": ((40, 7), (31, 8)), "1.2": ((36, 8),), "2.1": ((20, 6), (13, 7), (6, 9)),
             "3.1": ((3, 7, "Nearly there: use the vertical line test on the last two graphs."),),
             "3.2": ((2, 6),)},
    "leo": {"1.1": ((39, 8),), "1.2": ((37, 6), (30, 9)),
            "2.1": ((16, 5), (4, 9, "Much better than last time: you flipped every sign correctly.")),
            "3.1": ((2, 9),), "3.2": ((2, 6, "Substitute carefully: write the input in brackets first."),)},
    # behind by one module for 8 days (a level 2 alert); the teacher opened Functions for him
    "noah": {"1.1": ((34, 7), (27, 8)), "1.2": ((30, 6), (25, 9)),
             "2.1": ((15, 4), (7, 6, "Remember to flip the inequality when you multiply or divide by a negative.")),
             "3.1": ((3, 6),)},
    # far behind (two modules, over two weeks: an escalated alert), with 7 extra days
    "aiden": {"1.1": ((35, 6), (26, 9)),
              "1.2": ((33, 3), (24, 4), (10, 5, "Good set-up. Check the sign each time you move a term across the "
                                                "equals sign."))},
}
OVERRIDES = (("noah", 3, "shown_mastery", 3, "Explained solving inequalities clearly in a one-to-one conversation."),)
ACCOMMODATIONS = (("aiden", 7, "Extended time in his learning plan."),)
# (student, kind, text, author, days before the seed for target date or None, status)
ENTRIES: tuple[tuple[str, str, str, str, int | None, str | None], ...] = (
    ("leo", "interest", "Basketball statistics", "leo", None, None),
    ("leo", "interest", "Drawing comics", "leo", None, None),
    ("leo", "aspiration", "Become an architect", "leo", None, None),
    ("leo", "goal", "Finish Linear equations before the first due date", "leo", 30, "achieved"),
    ("leo", "goal", "Master every Functions competency before the break", "leo", -20, "active"),
    ("maya", "interest", "Music production", "maya", None, None),
    ("maya", "goal", "Get Identify functions to mastery", "maya", -7, "active"),
    ("aiden", "aspiration", "Work as a car mechanic", "aiden", None, None),
    ("aiden", "goal", "Master multi-step equations with two extra practice sets a week", "teacher", -10, "active"),
    ("aiden", "note", "Responds well to worked examples; check in on Mondays.", "teacher", None, None),
)
SNAPSHOT_DAYS = (42, 35, 28, 21, 14, 7)


def _seed(session: Session, district: District, platform: Platform, now: datetime) -> bool:
    """Create the sample class once; True when it was created now."""
    if session.scalars(select(Class.id).where(Class.district_id == district.id,
                                              Class.sourced_id == CONTEXT_ID)).first() is not None:
        return False
    d = district.id
    today = now.date()
    start = today - timedelta(days=TERM_DAYS_BEFORE)
    end = start + timedelta(days=TERM_LENGTH)
    school = Org(district_id=d, sourced_id="sandbox-school", name="Sandbox Middle School", type="school",
                 status="active", updated_at=now)
    term = AcademicSession(district_id=d, sourced_id="sandbox-term", title="Fall term", type="term",
                           start_date=start, end_date=end, status="active", updated_at=now)
    session.add_all([school, term])
    session.flush()
    course = Course(district_id=d, sourced_id="sandbox-algebra", title="Algebra I", course_code="ALG1",
                    org_id=school.id, status="active", updated_at=now)
    session.add(course)
    session.flush()
    klass = Class(district_id=d, sourced_id=CONTEXT_ID, title="Algebra I — Period 2", class_code="ALG1-P2",
                  course_id=course.id, school_id=school.id, term_id=term.id, lti_context_id=CONTEXT_ID,
                  status="active", updated_at=now)
    session.add(klass)
    session.flush()
    ns = namespace(platform.id)
    people: dict[str, Person] = {}
    for u in USERS:
        role = {"admin": "administrator"}.get(u.role, u.role)
        person = Person(district_id=d, sourced_id=u.sis_id, role=role, given_name=u.given_name,
                        family_name=u.family_name, email=u.email, username=u.key, sis_id=u.sis_id, status="active",
                        updated_at=now)
        session.add(person)
        people[u.key] = person
    session.flush()
    for u in USERS:
        session.add(ExternalRef(district_id=d, kind="person", namespace=ns, external_id=u.sub,
                                entity_id=people[u.key].id, status="active"))
        if u.role in ("teacher", "student"):
            session.add(Enrollment(district_id=d, sourced_id=f"sandbox-enr-{u.key}", class_id=klass.id,
                                   person_id=people[u.key].id, role=u.role, primary=u.role == "teacher",
                                   status="active", updated_at=now))
    session.add(ExternalRef(district_id=d, kind="class", namespace=ns, external_id=CONTEXT_ID, entity_id=klass.id,
                            status="active"))
    for parent_key, children in PARENT_OF.items():
        for child in children:
            session.add(GuardianLink(district_id=d, sourced_id=f"sandbox-guardian-{parent_key}-{child}",
                                     guardian_id=people[parent_key].id, student_id=people[child].id,
                                     relation="parent", status="active", updated_at=now))
    session.add(PacePlanRecord(district_id=d, class_id=klass.id, start_date=None, end_date=None, due_edits={},
                               skip_weekends=False, skip_dates=[], updated_at=now))

    def at(days_before: int, hour: int = 15) -> datetime:
        return datetime.combine(today - timedelta(days=days_before), datetime.min.time(), UTC).replace(hour=hour)

    modules: dict[int, Module] = {}
    competencies: dict[str, Competency] = {}
    activities: dict[str, Activity] = {}
    previous: Module | None = None
    for position, (title, outcomes) in enumerate(MODULES, start=1):
        module = Module(district_id=d, class_id=klass.id, sourced_id=f"sandbox-module-{position}", title=title,
                        position=position, prerequisite_ids=[previous.id] if previous else [], published=True,
                        status="active", updated_at=now)
        session.add(module)
        session.flush()
        modules[position] = previous = module
        due = start + timedelta(days=-(-(position * (TERM_LENGTH + 1)) // len(MODULES)) - 1)
        for j, outcome in enumerate(outcomes, start=1):
            comp = Competency(district_id=d, class_id=klass.id, sourced_id=f"sandbox-comp-{position}-{j}",
                              title=outcome, points_possible=4.0, mastery_points=3.0, ratings=SANDBOX_RATINGS,
                              calculation_method="decaying_average", calculation_int=65, status="active",
                              updated_at=now)
            act = Activity(district_id=d, class_id=klass.id, module_id=module.id,
                           sourced_id=f"sandbox-quiz-{position}-{j}", title=f"Quiz: {outcome}", score_maximum=10.0,
                           due_at=datetime.combine(due, datetime.min.time(), UTC).replace(hour=23),
                           status="active", updated_at=now)
            session.add_all([comp, act])
            session.flush()
            session.add(Alignment(district_id=d, sourced_id=f"{act.sourced_id}~{comp.sourced_id}",
                                  activity_id=act.id, competency_id=comp.id, status="active", updated_at=now))
            competencies[f"{position}.{j}"] = comp
            activities[f"{position}.{j}"] = act
    for key, plan in SCORES.items():
        for order, (comp_key, attempts) in enumerate(plan.items()):
            for n, attempt in enumerate(attempts, start=1):
                days_before, score = attempt[0], attempt[1]
                comment = attempt[2] if len(attempt) > 2 else None  # type: ignore[misc]
                session.add(Result(district_id=d, sourced_id=f"sandbox-result-{comp_key}-{key}-{n}",
                                   person_id=people[key].id, activity_id=activities[comp_key].id, score=float(score),
                                   score_maximum=10.0, scored_at=at(days_before, 14 + order % 6), comment=comment,
                                   status="active", updated_at=now))
    for key, position, kind, days_before, note in OVERRIDES:
        session.add(GateOverrideRecord(district_id=d, class_id=klass.id, person_id=people[key].id,
                                       module_id=modules[position].id, kind=kind, note=note,
                                       author_id=people["teacher"].id, at=at(days_before, 10)))
    for key, extra_days, note in ACCOMMODATIONS:
        session.add(AccommodationRecord(district_id=d, class_id=klass.id, person_id=people[key].id,
                                        extra_days=extra_days, factor=1.0, note=note, updated_at=now))
    for i, (key, kind, text, author, target, status) in enumerate(ENTRIES):
        created = at(TERM_DAYS_BEFORE - 5 - i, 9)
        session.add(ProfileEntryRecord(
            district_id=d, person_id=people[key].id, kind=kind, text=text, author_id=people[author].id,
            author_role="teacher" if author == "teacher" else "student",
            target_date=today - timedelta(days=target) if target is not None else None, status=status,
            created_at=created, updated_at=created))
    session.flush()
    _seed_history(session, d, klass.id, people, competencies, today)
    return True


SANDBOX_RATINGS = [[4, "Exceeds"], [3, "Mastery"], [2, "Near mastery"], [1, "Well below"]]


def _seed_history(session: Session, district_id: int, class_id: int, people: dict[str, Person],
                  competencies: dict[str, Competency], today: date) -> None:
    """Store weekly profile snapshots for the weeks before the seed, as the daily recompute would have."""
    from plugin.learning.mastery import Competency as RuleCompetency
    from plugin.learning.mastery import Evidence, aggregate_scores, rollup
    from plugin.learning.profile import build_profile
    from plugin.progress import snapshot_data

    rules = [RuleCompetency(str(c.id), c.title, points_possible=4.0, mastery_points=3.0,
                            ratings=tuple((float(p), str(t)) for p, t in SANDBOX_RATINGS),
                            calculation_method="decaying_average", calculation_int=65)
             for c in competencies.values()]
    by_key = {key: str(c.id) for key, c in competencies.items()}
    for days_before in SNAPSHOT_DAYS:
        cutoff = today - timedelta(days=days_before)
        taken = datetime.combine(cutoff, datetime.min.time(), UTC).replace(hour=23)
        scores: dict[str, dict[str, Any]] = {}
        for key, plan in SCORES.items():
            sid = str(people[key].id)
            for comp_key, attempts in plan.items():
                rows = [Evidence(sid, by_key[comp_key], a[1], percent=a[1] / 10.0,
                                 submitted_at=datetime.combine(today - timedelta(days=a[0]), datetime.min.time(), UTC))
                        for a in attempts if a[0] >= days_before]
                rule = next(r for r in rules if r.id == by_key[comp_key])
                score = rollup(sid, rule, rows)
                if score is not None:
                    scores.setdefault(sid, {})[rule.id] = score
        means = {r.id: aggregate_scores(s[r.id].score for s in scores.values() if r.id in s) for r in rules}
        for key in SCORES:
            sid = str(people[key].id)
            snap = build_profile(sid, rules, scores.get(sid, {}), now=taken, class_means=means)
            session.add(ProfileSnapshotRecord(district_id=district_id, class_id=class_id, person_id=people[key].id,
                                              taken_on=cutoff, data=snapshot_data(snap)))


# --------------------------------------------------------------------------- id_tokens


def id_token_claims(app: Flask, u: SandboxUser, *, nonce: str, message_hint: str, mentee_subs: list[str],
                    now: float | None = None) -> dict[str, Any]:
    """The claims the sandbox LMS sends for a user's launch (resource link, or deep linking when asked)."""
    base = app.config["BASE_URL"]
    iat = int(now if now is not None else time.time())
    deep = message_hint == "deep-link"
    roles = ROLES[u.role]
    claims: dict[str, Any] = {
        "iss": issuer(app), "aud": CLIENT_ID, "azp": CLIENT_ID, "sub": u.sub, "iat": iat, "exp": iat + 300,
        "nonce": nonce, "name": u.name, "given_name": u.given_name, "family_name": u.family_name,
        "email": u.email,
        "https://purl.imsglobal.org/spec/lti/claim/message_type":
            "LtiDeepLinkingRequest" if deep else "LtiResourceLinkRequest",
        "https://purl.imsglobal.org/spec/lti/claim/version": "1.3.0",
        "https://purl.imsglobal.org/spec/lti/claim/deployment_id": DEPLOYMENT_ID,
        "https://purl.imsglobal.org/spec/lti/claim/target_link_uri": f"{base}/lti/launch",
        "https://purl.imsglobal.org/spec/lti/claim/roles": roles,
        "https://purl.imsglobal.org/spec/lti/claim/context": {
            "id": CONTEXT_ID, "label": "ALG1-P2", "title": "Algebra I — Period 2",
            "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"]},
        "https://purl.imsglobal.org/spec/lti/claim/tool_platform": {
            "guid": "trailmark-sandbox", "name": "Trailmark sandbox LMS", "product_family_code": "sandbox",
            "version": "1"},
        "https://purl.imsglobal.org/spec/lti/claim/lis": {"person_sourcedid": u.sis_id,
                                                          "course_offering_sourcedid": CONTEXT_ID},
        "https://purl.imsglobal.org/spec/lti/claim/launch_presentation": {
            "document_target": "iframe", "return_url": f"{base}/sandbox", "locale": "en"},
        "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice": {
            "context_memberships_url": f"{base}/sandbox/api/contexts/{CONTEXT_ID}/memberships",
            "service_versions": ["2.0"]},
        "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint": {
            "scope": ["https://purl.imsglobal.org/spec/lti-ags/scope/lineitem",
                      "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly",
                      "https://purl.imsglobal.org/spec/lti-ags/scope/score"],
            "lineitems": f"{base}/sandbox/api/contexts/{CONTEXT_ID}/lineitems"},
    }
    if deep:
        claims["https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"] = {
            "deep_link_return_url": f"{base}/sandbox/deep-link-return",
            "accept_types": ["ltiResourceLink"], "accept_presentation_document_targets": ["iframe", "window"],
            "accept_multiple": True, "accept_lineitem": True, "data": f"dl-{uuid.uuid4().hex[:12]}",
            "title": "Add Trailmark"}
    else:
        claims["https://purl.imsglobal.org/spec/lti/claim/resource_link"] = {
            "id": message_hint if message_hint.startswith("sandbox-") else RESOURCE_LINK_ID,
            "title": "Trailmark"}
        claims["https://purl.imsglobal.org/spec/lti/claim/custom"] = {"trailmark_placement": "dashboard"}
    if u.role == "parent":
        claims["https://purl.imsglobal.org/spec/lti/claim/role_scope_mentor"] = mentee_subs
    return claims


def mentee_subs(key: str) -> list[str]:
    return [f"sandbox-{child}" for child in PARENT_OF.get(key, ())]

