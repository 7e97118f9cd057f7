"""The built-in sandbox LMS: a small LTI 1.3 platform inside Trailmark for trying it and for end-to-end tests.

It registers itself like any platform (issuer ``<base>/sandbox``), signs real id_tokens with its own RSA key and
goes through the real OIDC login and launch. It seeds a sample district: a teacher, a class of students, a parent
linked to one student, modules, graded activities and competencies.
"""

from __future__ import annotations

import hashlib
import json
import os
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

from plugin.lti.platforms import add_platform
from plugin.lti.provision import namespace
from plugin.store.models import (
    AcademicSession,
    Activity,
    Alignment,
    Class,
    Competency,
    Course,
    District,
    Enrollment,
    ExternalRef,
    GuardianLink,
    Module,
    Org,
    Person,
    Platform,
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
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
        except FileExistsError:
            pass
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


def _seed(session: Session, district: District, platform: Platform, now: datetime) -> bool:
    """Create the sample class once; True when it was created now."""
    if session.scalars(select(Class.id).where(Class.district_id == district.id,
                                              Class.sourced_id == CONTEXT_ID)).first() is not None:
        return False
    d = district.id
    today = now.date()
    start = today - timedelta(days=28)
    school = Org(district_id=d, sourced_id="sandbox-school", name="Sandbox Middle School", type="school",
                 status="active", updated_at=now)
    term = AcademicSession(district_id=d, sourced_id="sandbox-term", title="Fall term", type="term",
                           start_date=start, end_date=start + timedelta(days=120), status="active", updated_at=now)
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
    students = [u for u in USERS if u.role == "student"]
    rng = _Rng(7)
    previous: Module | None = None
    for position, (title, outcomes) in enumerate(MODULES, start=1):
        module = Module(district_id=d, class_id=klass.id, sourced_id=f"sandbox-module-{position}", title=title,
                        position=position, prerequisite_ids=[previous.id] if previous else [], published=True,
                        status="active", updated_at=now)
        session.add(module)
        session.flush()
        previous = module
        for j, outcome in enumerate(outcomes, start=1):
            comp = Competency(district_id=d, class_id=klass.id, sourced_id=f"sandbox-comp-{position}-{j}",
                              title=outcome, points_possible=4.0, mastery_points=3.0,
                              ratings=[[4, "Exceeds"], [3, "Mastery"], [2, "Near mastery"], [1, "Well below"]],
                              calculation_method="decaying_average", calculation_int=65, status="active",
                              updated_at=now)
            act = Activity(district_id=d, class_id=klass.id, module_id=module.id,
                           sourced_id=f"sandbox-quiz-{position}-{j}", title=f"Quiz: {outcome}", score_maximum=10.0,
                           due_at=datetime.combine(start + timedelta(days=14 * position), datetime.min.time(), UTC),
                           status="active", updated_at=now)
            session.add_all([comp, act])
            session.flush()
            session.add(Alignment(district_id=d, sourced_id=f"{act.sourced_id}~{comp.sourced_id}",
                                  activity_id=act.id, competency_id=comp.id, status="active", updated_at=now))
            # Students progress at different paces: the first modules have scores, later ones fewer.
            for k, s in enumerate(students):
                reached = max(1, 4 - k // 2)
                if position > reached:
                    continue
                score = float(min(10, max(3, 6 + rng.next(5) - (k % 3))))
                session.add(Result(district_id=d, sourced_id=f"sandbox-result-{position}-{j}-{s.key}",
                                   person_id=people[s.key].id, activity_id=act.id, score=score, score_maximum=10.0,
                                   scored_at=datetime.combine(start + timedelta(days=7 * position + k),
                                                              datetime.min.time(), UTC),
                                   status="active", updated_at=now))
    session.flush()
    return True


class _Rng:
    """A tiny deterministic generator so the seed is the same on every machine."""

    def __init__(self, seed: int):
        self.state = seed

    def next(self, bound: int) -> int:
        self.state = (self.state * 1103515245 + 12345) % (2**31)
        return self.state % bound


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

