"""Read queries the panels use. Every query is scoped to one district."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.store.models import (
    Class,
    Deployment,
    Enrollment,
    GuardianLink,
    Module,
    Person,
    Platform,
    ToolKey,
)


def get_person(session: Session, district_id: int, person_id: int) -> Person | None:
    return session.scalars(select(Person).where(Person.district_id == district_id, Person.id == person_id)).first()


def get_class(session: Session, district_id: int, class_id: int) -> Class | None:
    return session.scalars(select(Class).where(Class.district_id == district_id, Class.id == class_id)).first()


def list_students(session: Session, district_id: int, class_id: int) -> list[Person]:
    """Active students of a class, by family name."""
    return list(session.scalars(
        select(Person).join(Enrollment, Enrollment.person_id == Person.id)
        .where(Enrollment.district_id == district_id, Enrollment.class_id == class_id,
               Enrollment.role == "student", Enrollment.status == "active", Person.status == "active")
        .order_by(Person.family_name, Person.given_name, Person.id)))


def list_modules(session: Session, district_id: int, class_id: int) -> list[Module]:
    return list(session.scalars(
        select(Module).where(Module.district_id == district_id, Module.class_id == class_id,
                             Module.status == "active").order_by(Module.position, Module.id)))


def list_classes_of(session: Session, district_id: int, person_id: int, role: str = "student") -> list[Class]:
    return list(session.scalars(
        select(Class).join(Enrollment, Enrollment.class_id == Class.id)
        .where(Enrollment.district_id == district_id, Enrollment.person_id == person_id, Enrollment.role == role,
               Enrollment.status == "active", Class.status == "active").order_by(Class.title)))


def list_children(session: Session, district_id: int, guardian_id: int) -> list[Person]:
    """The students a parent or guardian is linked to (roster agents, Canvas observees, LTI mentees)."""
    return list(session.scalars(
        select(Person).join(GuardianLink, GuardianLink.student_id == Person.id)
        .where(GuardianLink.district_id == district_id, GuardianLink.guardian_id == guardian_id,
               GuardianLink.status == "active", Person.status == "active")
        .order_by(Person.given_name, Person.id).distinct()))


def is_guardian_of(session: Session, district_id: int, guardian_id: int, student_id: int) -> bool:
    return session.scalars(select(GuardianLink.id).where(
        GuardianLink.district_id == district_id, GuardianLink.guardian_id == guardian_id,
        GuardianLink.student_id == student_id, GuardianLink.status == "active")).first() is not None


def teaches_student(session: Session, district_id: int, teacher_id: int, student_id: int) -> bool:
    """True when the teacher has an active teaching enrollment in a class where the student is enrolled."""
    teaching = select(Enrollment.class_id).where(
        Enrollment.district_id == district_id, Enrollment.person_id == teacher_id,
        Enrollment.role.in_(("teacher", "aide")), Enrollment.status == "active")
    return session.scalars(select(Enrollment.id).where(
        Enrollment.district_id == district_id, Enrollment.person_id == student_id, Enrollment.role == "student",
        Enrollment.status == "active", Enrollment.class_id.in_(teaching))).first() is not None


def list_platforms(session: Session, district_id: int) -> list[tuple[Platform, Sequence[str]]]:
    platforms = list(session.scalars(select(Platform).where(Platform.district_id == district_id)
                                     .order_by(Platform.id)))
    deployments: dict[int, list[str]] = {p.id: [] for p in platforms}
    if platforms:
        for platform_id, dep in session.execute(select(Deployment.platform_id, Deployment.deployment_id)
                                                .where(Deployment.platform_id.in_(deployments))):
            deployments[platform_id].append(dep)
    return [(p, deployments[p.id]) for p in platforms]


def list_keys(session: Session) -> list[ToolKey]:
    return list(session.scalars(select(ToolKey).order_by(ToolKey.id)))
