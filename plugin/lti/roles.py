"""LIS role URIs → the Trailmark view a launch opens."""

from __future__ import annotations

from collections.abc import Iterable

MEMBERSHIP = "http://purl.imsglobal.org/vocab/lis/v2/membership#"
INSTITUTION = "http://purl.imsglobal.org/vocab/lis/v2/institution/person#"
SYSTEM = "http://purl.imsglobal.org/vocab/lis/v2/system/person#"
TEST_USER = "http://purl.imsglobal.org/vocab/lti/system/person#TestUser"

TEACHER, STUDENT, PARENT, ADMIN, NONE = "teacher", "student", "parent", "admin", "none"

_TEACHING = {"Instructor", "TeachingAssistant", "ContentDeveloper"}
_ADMIN_INSTITUTION = {"Administrator"}
_ADMIN_SYSTEM = {"Administrator", "SysAdmin", "AccountAdmin"}


def _parts(role: str) -> tuple[str, str]:
    """Split a role into (vocabulary, name): ('membership', 'Instructor'), ('institution', 'Administrator') …"""
    role = role.strip()
    if role.startswith("http://purl.imsglobal.org/vocab/lis/v2/membership/"):
        # sub-role: membership/Instructor#TeachingAssistant
        path, _, sub = role.rpartition("#")
        return "membership", sub or path.rsplit("/", 1)[-1]
    for prefix, vocab in ((MEMBERSHIP, "membership"), (INSTITUTION, "institution"), (SYSTEM, "system")):
        if role.startswith(prefix):
            return vocab, role[len(prefix):]
    if role == TEST_USER:
        return "lti-system", "TestUser"
    if "#" in role or "/" in role:
        return "other", role
    return "membership", role  # short forms: "Instructor", "Learner"


def view_for_roles(roles: Iterable[str]) -> str:
    """Teacher > admin > student > parent; anything else has no view."""
    parsed = [_parts(r) for r in roles if isinstance(r, str)]
    membership = {name for vocab, name in parsed if vocab == "membership"}
    institution = {name for vocab, name in parsed if vocab == "institution"}
    if membership & _TEACHING or (not membership and institution & {"Instructor", "Faculty"}):
        return TEACHER
    if membership & {"Administrator"} or any(
        (vocab == "institution" and name in _ADMIN_INSTITUTION) or (vocab == "system" and name in _ADMIN_SYSTEM)
        for vocab, name in parsed
    ):
        return ADMIN
    if "Learner" in membership or (not membership and institution & {"Student", "Learner"}):
        return STUDENT
    if "Mentor" in membership or any(v == "institution" and n in ("Mentor", "Observer") for v, n in parsed):
        return PARENT
    return NONE


def is_test_user(roles: Iterable[str]) -> bool:
    return TEST_USER in roles
