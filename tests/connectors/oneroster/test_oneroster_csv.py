"""OneRoster CSV packages: bulk and delta, zip and folder, 1.1 and 1.2 headers, bad rows, broken packages."""

from __future__ import annotations

import csv
import textwrap
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from connectors.base import (
    Activity,
    Class,
    Complete,
    ConfigurationError,
    Enrollment,
    GuardianLink,
    Item,
    Person,
    Rejected,
    Result,
    Scope,
    Tombstone,
    kind_of,
)
from connectors.oneroster import OneRosterConnector, OneRosterCsvConnector
from connectors.oneroster import schemas as s
from connectors.oneroster.csvpkg import (
    MANIFEST_FILES_1_1,
    CsvPackage,
    PackageReader,
    fast_class,
    fast_enrollment,
    fast_result,
    fast_user,
    iter_package,
    record_builder,
)

ALL_FILES = MANIFEST_FILES_1_1


def manifest(version: str = "1.1", **modes: str) -> str:
    rows = ["propertyName,value", "manifest.version,1.0", f"oneroster.version,{version}"]
    rows += [
        f"file.{name},{modes.get(name, 'absent')}"
        for name in (*ALL_FILES, *(m for m in modes if m not in ALL_FILES))
    ]
    return "\n".join(rows) + "\n"


def csv_text(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


ORGS = csv_text("""
    sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId
    org-d,,,Riverbend USD,district,RUSD,
    org-s1,,,Hillside High,school,HHS,org-d
""")
SESSIONS = csv_text("""
    sourcedId,status,dateLastModified,title,type,startDate,endDate,parentSourcedId,schoolYear
    sy-2026,,,2025-2026,schoolYear,2025-08-25,2026-06-12,,2026
    sem-1,,,Fall 2025,semester,2025-08-25,2026-01-16,sy-2026,2026
    sem-2,,,Spring 2026,semester,2026-01-20,2026-06-12,sy-2026,2026
""")
COURSES = csv_text("""
    sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,grades,orgSourcedId,subjects,subjectCodes
    crs-alg1,,,sy-2026,Algebra I,MTH-101,09,org-s1,Mathematics,
""")
CLASSES = csv_text("""
    sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods
    cls-1,,,Algebra I - P1,09,crs-alg1,ALG1-P1,scheduled,Room 101,org-s1,"sem-1,sem-2",Mathematics,,1
    cls-2,,,Algebra I - P2,09,crs-alg1,,scheduled,Room 102,org-s1,sem-1,Mathematics,,2
""")
USERS = csv_text("""
    sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password
    stu-1,,,true,org-s1,student,ava.garcia,{SIS:1001},Ava,Garcia,,1001,ava@example.org,,,"par-1,par-2",09,
    stu-2,,,true,org-s1,student,liam.garcia,{SIS:1002},Liam,Garcia,,1002,,,,par-1,10,
    tch-1,,,true,org-s1,teacher,nkim,{SIS:T1},Nora,Kim,,T1,nkim@example.org,,,,,
    par-1,,,true,org-d,parent,rosa.garcia,,Rosa,Garcia,,,rosa@example.org,,555-0101,"stu-1,stu-2",,
    par-2,,,false,org-d,relative,omar.haddad,,Omar,Haddad,,,,,,,,
    par-3,,,true,org-d,guardian,ines.costa,,Ines,Costa,,,,,,stu-2,,
""")
ENROLLMENTS = csv_text("""
    sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate
    enr-1,,,cls-1,org-s1,stu-1,student,false,2025-08-25,2026-06-12
    enr-2,,,cls-1,org-s1,tch-1,teacher,true,,
    enr-3,,,cls-2,org-s1,stu-2,student,false,2025-08-25,2026-01-16
""")
CATEGORIES = csv_text("""
    sourcedId,status,dateLastModified,title
    cat-hw,,,Homework
""")
LINE_ITEMS = csv_text("""
    sourcedId,status,dateLastModified,title,description,assignDate,dueDate,classSourcedId,categorySourcedId,gradingPeriodSourcedId,resultValueMin,resultValueMax
    li-1,,,Quiz 1,Linear equations,2025-09-01,2025-09-08T23:59:00.000Z,cls-1,cat-hw,sem-1,0,10
""")
RESULTS = csv_text("""
    sourcedId,status,dateLastModified,lineItemSourcedId,studentSourcedId,scoreStatus,score,scoreDate,comment
    res-1,,,li-1,stu-1,fully graded,8.5,2025-09-09,Well done
    res-2,,,li-1,stu-2,not submitted,,2025-09-09,
""")
BULK = {
    "manifest": manifest(
        **{
            n: "bulk"
            for n in (
                "orgs",
                "academicSessions",
                "courses",
                "classes",
                "users",
                "enrollments",
                "categories",
                "lineItems",
                "results",
            )
        }
    ),
    "orgs": ORGS,
    "academicSessions": SESSIONS,
    "courses": COURSES,
    "classes": CLASSES,
    "users": USERS,
    "enrollments": ENROLLMENTS,
    "categories": CATEGORIES,
    "lineItems": LINE_ITEMS,
    "results": RESULTS,
}


def write_package(
    root: Path, files: dict[str, str], *, as_zip: bool = False, inside: str = "", encoding: str = "utf-8"
) -> Path:
    """Write a package of ``{name: csv text}`` as a folder or a zip archive."""
    if as_zip:
        path = root / "oneroster.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name, text in files.items():
                archive.writestr(f"{inside}{name}.csv", text.encode(encoding))
        return path
    path = root / "oneroster"
    path.mkdir()
    for name, text in files.items():
        (path / f"{name}.csv").write_bytes(text.encode(encoding))
    return path


def by_kind(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for item in items:
        key = (
            f"complete:{item.kind}"
            if isinstance(item, Complete)
            else type(item).__name__
            if isinstance(item, Rejected | Tombstone)
            else kind_of(item)
        )
        out.setdefault(key, []).append(item)
    return out


# --------------------------------------------------------------------------- bulk


def test_bulk_zip_streams_records_in_dependency_order_with_complete_markers(tmp_path: Path) -> None:
    items = list(iter_package(write_package(tmp_path, BULK, as_zip=True)))

    order = [f"={i.kind}" if isinstance(i, Complete) else kind_of(i) for i in items]
    assert order == [
        "org",
        "org",
        "=org",
        "academic_session",
        "academic_session",
        "academic_session",
        "=academic_session",
        "course",
        "=course",
        "class",
        "class",
        "=class",
        *["person"] * 6,
        "=person",
        *["guardian_link"] * 4,
        "=guardian_link",
        "enrollment",
        "enrollment",
        "enrollment",
        "=enrollment",
        "activity",
        "=activity",
        "result",
        "result",
        "=result",
    ]
    got = by_kind(items)
    assert got["class"][0] == Class(
        "cls-1", "Algebra I - P1", "crs-alg1", "org-s1", ("sem-1", "sem-2"), "ALG1-P1", sis_id="cls-1"
    )
    assert got["class"][1].class_code is None
    assert got["person"][0] == Person(
        "stu-1", "student", "Ava", "Garcia", "ava@example.org", "ava.garcia", sis_id="stu-1", grades=("09",)
    )
    assert got["person"][4] == Person(
        "par-2", "relative", "Omar", "Haddad", None, "omar.haddad", sis_id="par-2", enabled=False
    )
    assert set(got["guardian_link"]) == {
        GuardianLink("par-1", "stu-1", "parent"),
        GuardianLink("par-1", "stu-2", "parent"),
        GuardianLink("par-3", "stu-2", "guardian"),
        GuardianLink("par-2", "stu-1", "relative"),
    }
    assert got["enrollment"][0] == Enrollment(
        "enr-1", "cls-1", "stu-1", "student", False, date(2025, 8, 25), date(2026, 6, 12)
    )
    assert got["enrollment"][1] == Enrollment("enr-2", "cls-1", "tch-1", "teacher", True)
    assert got["activity"] == [
        Activity(
            "li-1",
            "cls-1",
            "Quiz 1",
            score_maximum=10.0,
            category="Homework",
            due_at=datetime(2025, 9, 8, 23, 59, tzinfo=UTC),
        )
    ]
    assert got["result"] == [
        Result(
            "res-1",
            "stu-1",
            "li-1",
            score=8.5,
            scored_at=datetime(2025, 9, 9, tzinfo=UTC),
            comment="Well done",
        ),
        Result(
            "res-2", "stu-2", "li-1", scored_at=datetime(2025, 9, 9, tzinfo=UTC), score_status="not submitted"
        ),
    ]


def test_folder_and_zip_give_the_same_items(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    zipped = list(iter_package(write_package(tmp_path / "a", BULK, as_zip=True)))
    folder = list(iter_package(write_package(tmp_path / "b", BULK)))
    assert zipped == folder


def test_a_package_zipped_inside_one_folder_is_read(tmp_path: Path) -> None:
    items = list(iter_package(write_package(tmp_path, BULK, as_zip=True, inside="export-2026-02-01/")))
    assert len(by_kind(items)["person"]) == 6


def test_scope_limits_what_is_read(tmp_path: Path) -> None:
    path = write_package(tmp_path, BULK, as_zip=True)
    assert {kind_of(i) for i in iter_package(path, Scope.CONTENT) if not isinstance(i, Complete)} == {
        "activity"
    }
    assert [i for i in iter_package(path, Scope.PROGRESS) if isinstance(i, Complete)] == [Complete("result")]


def test_connector_from_config_pulls_the_package(tmp_path: Path) -> None:
    path = write_package(tmp_path, BULK, as_zip=True)
    connector = OneRosterConnector.from_config(
        {"name": "sis-drop", "kind": "oneroster-csv", "path": str(path)}
    )
    assert isinstance(connector, OneRosterCsvConnector)
    assert connector.name == "sis-drop"
    assert list(connector.pull(Scope.ROSTER)) == list(iter_package(path, Scope.ROSTER))


# --------------------------------------------------------------------------- delta


def test_delta_turns_tobedeleted_into_tombstones_and_emits_no_complete(tmp_path: Path) -> None:
    files = {
        "manifest": manifest(users="delta", enrollments="delta", classes="bulk"),
        "classes": CLASSES,
        "users": csv_text("""
            sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password
            stu-1,active,2026-02-01T10:00:00.000Z,true,org-s1,student,ava.garcia,,Ava,Garcia-Lopez,,,,,,"par-1,par-9",09,
            stu-2,tobedeleted,2026-02-01T10:00:00.000Z,,,,,,,,,,,,,,,
            par-1,active,2026-02-01T10:00:00.000Z,true,org-d,parent,rosa.garcia,,Rosa,Garcia,,,,,,stu-1,,
        """),
        "enrollments": csv_text("""
            sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate
            enr-3,tobedeleted,2026-02-01T10:00:00.000Z,cls-2,org-s1,stu-2,student,false,,
            enr-4,active,2026-02-01T10:00:00.000Z,cls-2,org-s1,stu-1,student,false,2026-02-01,
            enr-5,inactive,2026-02-01T10:00:00.000Z,,,,,,,
        """),
    }
    items = list(iter_package(write_package(tmp_path, files, as_zip=True)))
    got = by_kind(items)
    assert got["Tombstone"] == [
        Tombstone("person", "stu-2"),
        Tombstone("enrollment", "enr-3"),
        Tombstone("enrollment", "enr-5"),
    ]
    assert [c.kind for c in items if isinstance(c, Complete)] == ["class"]
    assert [p.family_name for p in got["person"]] == ["Garcia-Lopez", "Garcia"]
    # par-9 is not in this delta: its existing link stands, nothing is guessed and nothing is rejected.
    assert got["guardian_link"] == [GuardianLink("par-1", "stu-1", "parent")]
    assert "Rejected" not in got


# --------------------------------------------------------------------------- 1.2


USERS_1_2 = csv_text("""
    sourcedId,status,dateLastModified,enabledUser,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,userMasterIdentifier,resourceSourcedIds,preferredGivenName,preferredMiddleName,preferredFamilyName,primaryOrgSourcedId,pronouns
    stu-1,active,2026-01-10T08:00:00.000Z,true,ava.garcia,{SIS:1001},Ava,Garcia,,1001,ava@example.org,,,par-1,09,,MID-1,,Ava,,,org-s1,she/her
    tch-1,active,2026-01-10T08:00:00.000Z,true,nkim,,Nora,Kim,,T1,,,,,,,MID-2,,,,,org-s1,
    par-1,active,2026-01-10T08:00:00.000Z,true,rosa.garcia,,Rosa,Garcia,,,,,,stu-1,,,MID-3,,,,,org-d,
    adm-1,active,2026-01-10T08:00:00.000Z,true,icosta,,Ines,Costa,,,,,,,,,MID-4,,,,,org-d,
""")
ROLES_1_2 = csv_text("""
    sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,orgSourcedId,userProfileSourcedId
    r-1,active,2026-01-10T08:00:00.000Z,stu-1,primary,student,2025-08-25,,org-s1,
    r-2,active,2026-01-10T08:00:00.000Z,tch-1,secondary,aide,2025-08-25,,org-s2,
    r-3,active,2026-01-10T08:00:00.000Z,tch-1,primary,teacher,2025-08-25,,org-s1,
    r-4,active,2026-01-10T08:00:00.000Z,par-1,primary,parent,,,org-d,
    r-5,active,2026-01-10T08:00:00.000Z,adm-1,primary,districtAdministrator,,,org-d,
""")


def test_v1p2_users_take_their_role_from_roles_csv(tmp_path: Path) -> None:
    files = {
        "manifest": manifest("1.2", users="bulk", roles="bulk"),
        "users": "\ufeff" + USERS_1_2,
        "roles": ROLES_1_2,
    }
    items = list(iter_package(write_package(tmp_path, files, as_zip=True)))
    people = {p.sourced_id: p for p in items if isinstance(p, Person)}
    assert {sid: p.role for sid, p in people.items()} == {
        "stu-1": "student",
        "tch-1": "teacher",
        "par-1": "parent",
        "adm-1": "administrator",
    }
    assert people["stu-1"] == Person(
        "stu-1", "student", "Ava", "Garcia", "ava@example.org", "ava.garcia", sis_id="stu-1", grades=("09",)
    )
    assert [i for i in items if isinstance(i, GuardianLink)] == [GuardianLink("par-1", "stu-1", "parent")]
    assert Complete("person") in items and Complete("guardian_link") in items


def test_v1p2_user_without_a_role_is_rejected(tmp_path: Path) -> None:
    roles = "\n".join(line for line in ROLES_1_2.splitlines() if ",adm-1," not in line) + "\n"
    files = {"manifest": manifest("1.2", users="bulk", roles="bulk"), "users": USERS_1_2, "roles": roles}
    items = list(iter_package(write_package(tmp_path, files)))
    assert Rejected("person", "adm-1", "role", "users.csv line 5: Missing data for required field.") in items
    assert Complete("person") not in items


def test_v1p2_users_without_roles_csv_is_a_configuration_error(tmp_path: Path) -> None:
    files = {"manifest": manifest("1.2", users="bulk"), "users": USERS_1_2}
    with pytest.raises(ConfigurationError, match="roles.csv"):
        list(iter_package(write_package(tmp_path, files)))


# --------------------------------------------------------------------------- bad rows


def test_bad_rows_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    files = {
        "manifest": manifest(users="bulk", enrollments="bulk", results="bulk"),
        "users": csv_text("""
            sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password
            stu-1,,,true,org-s1,student,ava,,Ava,Garcia,,,,,,,09,
            stu-2,,,true,org-s1,wizard,liam,,Liam,Garcia,,,,,,,10,
            ,,,true,org-s1,student,nobody,,No,Body,,,,,,,10,
        """),
        "enrollments": csv_text("""
            sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate
            enr-1,,,cls-1,org-s1,stu-1,student,false,2025-08-25,
            enr-2,,,cls-1,org-s1,stu-1,student,false,2025-13-40,
            enr-3,,,,org-s1,stu-1,student,false,,
            enr-4,,,cls-1,org-s1,stu-1,student,maybe,,
        """),
        "results": csv_text("""
            sourcedId,status,dateLastModified,lineItemSourcedId,studentSourcedId,scoreStatus,score,scoreDate,comment
            res-1,,,li-1,stu-1,fully graded,ten,2025-09-09,
            res-2,,,li-1,stu-1,graded-ish,1,2025-09-09,
            res-3,,,li-1,stu-1,fully graded,9,2025-09-09,"a comment
            over two lines"
            res-4,,,li-1,stu-1,fully graded,9,yesterday,
        """),
    }
    items = list(iter_package(write_package(tmp_path, files, as_zip=True)))
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert rejected == [
        Rejected("person", "stu-2", "role", "users.csv line 3: unknown role 'wizard'"),
        Rejected("person", None, "sourcedId", "users.csv line 4: Missing data for required field."),
        Rejected(
            "enrollment",
            "enr-2",
            "beginDate",
            "enrollments.csv line 3: not a valid date '2025-13-40'; expected YYYY-MM-DD",
        ),
        Rejected(
            "enrollment",
            "enr-3",
            "classSourcedId",
            "enrollments.csv line 4: Missing data for required field.",
        ),
        Rejected("enrollment", "enr-4", "primary", "enrollments.csv line 5: Not a valid boolean."),
        Rejected("result", "res-1", "score", "results.csv line 2: Not a valid number."),
        Rejected("result", "res-2", "scoreStatus", "results.csv line 3: unknown scoreStatus 'graded-ish'"),
        Rejected(
            "result",
            "res-4",
            "scoreDate",
            "results.csv line 6: not a valid datetime 'yesterday'; expected ISO 8601",
        ),
    ]
    assert [r.sourced_id for r in items if isinstance(r, Result)] == ["res-3"]
    # A bulk file with a rejected row lists no Complete marker: nothing of that kind is removed this run.
    assert not any(isinstance(i, Complete) for i in items)


def test_lenient_rows_are_accepted_by_the_schema(tmp_path: Path) -> None:
    files = {
        "manifest": manifest(enrollments="bulk"),
        "enrollments": csv_text("""
            sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate
            enr-1,Active,,cls-1,org-s1,stu-1,Student,TRUE,2025-08-25T00:00:00Z,
            enr-2,,,cls-1,org-s1,stu-2,student,false,2025-08-25
        """),
    }
    items = list(iter_package(write_package(tmp_path, files)))
    assert items == [
        Enrollment("enr-1", "cls-1", "stu-1", "student", True, date(2025, 8, 25)),
        Enrollment("enr-2", "cls-1", "stu-2", "student", False, date(2025, 8, 25)),
        Complete("enrollment"),
    ]


def test_unknown_agent_in_a_bulk_package_is_rejected(tmp_path: Path) -> None:
    users = USERS.replace('"par-1,par-2"', '"par-1,par-404"')
    files = {"manifest": manifest(users="bulk"), "users": users}
    items = list(iter_package(write_package(tmp_path, files)))
    assert (
        Rejected(
            "guardian_link",
            "par-404>stu-1",
            "agentSourcedIds",
            "users.csv line 2: agent par-404 of student stu-1 is not a parent, guardian or relative in "
            "users.csv",
        )
        in items
    )
    assert Complete("guardian_link") in items


def test_student_side_links_read_again_match_those_kept_in_memory(tmp_path: Path) -> None:
    path = write_package(tmp_path, {**BULK, "users": USERS.replace('"par-1,par-2"', '"par-1,par-2,par-404"')})
    with CsvPackage(path) as package:
        kept = list(PackageReader(package).iter_items(Scope.ROSTER))
    with CsvPackage(path) as package:
        reread = list(PackageReader(package, remember_students=0).iter_items(Scope.ROSTER))
    assert kept == reread
    assert sum(isinstance(i, GuardianLink) for i in kept) == 4


# --------------------------------------------------------------------------- broken packages


def test_missing_manifest_is_a_configuration_error(tmp_path: Path) -> None:
    files = {k: v for k, v in BULK.items() if k != "manifest"}
    with pytest.raises(ConfigurationError, match="no manifest.csv"):
        list(iter_package(write_package(tmp_path, files, as_zip=True)))


def test_manifest_naming_an_absent_file_is_a_configuration_error(tmp_path: Path) -> None:
    files = {k: v for k, v in BULK.items() if k != "enrollments"}
    with pytest.raises(ConfigurationError) as err:
        list(iter_package(write_package(tmp_path, files, as_zip=True)))
    assert "file.enrollments,bulk" in str(err.value)
    assert "add enrollments.csv or set file.enrollments,absent" in str(err.value)


def test_nothing_is_emitted_before_the_package_is_checked(tmp_path: Path) -> None:
    files = {k: v for k, v in BULK.items() if k != "results"}
    stream = iter_package(write_package(tmp_path, files))
    with pytest.raises(ConfigurationError, match="results.csv"):
        next(stream)


def test_missing_required_column_is_a_configuration_error(tmp_path: Path) -> None:
    broken = ENROLLMENTS.replace("userSourcedId", "personId")
    files = {"manifest": manifest(enrollments="bulk"), "enrollments": broken}
    with pytest.raises(ConfigurationError, match="enrollments.csv has no 'userSourcedId' column"):
        list(iter_package(write_package(tmp_path, files)))


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("file.users,sometimes", "expected bulk, delta or absent"),
        ("oneroster.version,2.0", "supported versions"),
    ],
)
def test_bad_manifest_values_are_configuration_errors(tmp_path: Path, line: str, match: str) -> None:
    files = {"manifest": manifest(users="bulk").replace("file.users,bulk", line), "users": USERS}
    if line.startswith("oneroster"):
        files["manifest"] = manifest(users="bulk").replace("oneroster.version,1.1", line)
    with pytest.raises(ConfigurationError, match=match):
        list(iter_package(write_package(tmp_path, files)))


def test_non_utf8_file_is_a_configuration_error(tmp_path: Path) -> None:
    files = {"manifest": manifest(orgs="bulk"), "orgs": ORGS.replace("Hillside", "Hillsíde")}
    with pytest.raises(ConfigurationError, match="not UTF-8"):
        list(iter_package(write_package(tmp_path, files, encoding="latin-1")))


def test_missing_path_is_a_configuration_error(tmp_path: Path) -> None:
    connector = OneRosterConnector.from_config(
        {"name": "drop", "kind": "oneroster-csv", "path": str(tmp_path / "nowhere.zip")}
    )
    with pytest.raises(ConfigurationError, match="does not exist"):
        list(connector.pull())


# --------------------------------------------------------------------------- fast readers


PLAIN_ROWS = {
    "enrollments": (s.EnrollmentRowSchema(), fast_enrollment, ENROLLMENTS),
    "users": (s.UserRowSchema(), fast_user, USERS),
    "classes": (s.ClassRowSchema(), fast_class, CLASSES),
    "results": (s.ResultRowSchema(), fast_result, RESULTS),
}


@pytest.mark.parametrize("name", sorted(PLAIN_ROWS))
def test_fast_readers_build_exactly_what_the_schema_loads(name: str) -> None:
    schema, factory, text = PLAIN_ROWS[name]
    header, *rows = list(csv.reader(text.splitlines()))
    fast = factory({h: i for i, h in enumerate(header)})
    for row in rows:
        built = fast(row)
        assert built is not None, row
        assert built == schema.load(dict(zip(header, row, strict=True)))


def test_fast_readers_defer_unusual_rows_to_the_schema() -> None:
    header = ENROLLMENTS.splitlines()[0].split(",")
    fast = fast_enrollment({h: i for i, h in enumerate(header)})
    for row in (
        ["e", "Active", "", "c", "s", "u", "student", "false", "", ""],
        ["e", "", "", "c", "s", "u", "Student", "false", "", ""],
        ["e", "", "", "c", "s", "u", "student", "TRUE", "", ""],
        ["e", "", "", "c", "s", "u", "student", "false", "2025-08-25T00:00:00Z", ""],
        ["e", "", "", "c", "s", "u", "student", "false"],
    ):
        assert fast(row) is None


def test_record_builder_makes_equal_frozen_records() -> None:
    build = record_builder(Enrollment)
    built = build("e", "c", "u", "student", True, date(2026, 1, 1), None, "active")
    assert built == Enrollment("e", "c", "u", "student", True, date(2026, 1, 1), None)
    assert hash(built) == hash(Enrollment("e", "c", "u", "student", True, date(2026, 1, 1), None))
    with pytest.raises(AttributeError):
        built.role = "teacher"  # type: ignore[misc]
