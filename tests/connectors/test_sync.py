"""The sync engine against a real database: idempotency, tombstones, the removal guard, failures, identity."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import event, func, select

from connectors import sync
from connectors.base import (
    Capability,
    Class,
    Complete,
    Course,
    Enrollment,
    GuardianLink,
    Module,
    Org,
    Person,
    Rejected,
    Result,
    Scope,
    Tombstone,
)
from connectors.fake import FakeConnector, sample_district
from plugin.store import models
from plugin.store.db import Store
from tests.connectors.sync_support import NOW, run


class Writes:
    """Count INSERT/UPDATE/DELETE statements (executemany counts once per statement)."""

    def __init__(self, store: Store):
        self.statements: list[str] = []
        self.store = store

    def __enter__(self) -> Writes:
        event.listen(self.store.engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.store.engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        verb = statement.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE"):
            table = (statement.split()[2] if verb != "UPDATE" else statement.split()[1]).strip('"')
            self.statements.append(f"{verb} {table}")

    def data(self) -> list[str]:
        """Writes other than the run's own bookkeeping (sync_run, the source row's lease)."""
        return [s for s in self.statements if not s.endswith(("sync_run", "source"))]


def rows(db: Store, model: type, **where: object) -> list:
    with db.session() as session:
        stmt = select(model)
        for k, v in where.items():
            stmt = stmt.where(getattr(model, k) == v)
        return list(session.scalars(stmt))


def count(db: Store, model: type, **where: object) -> int:
    return len(rows(db, model, **where))


# --------------------------------------------------------------------------- a first import


def test_first_import_adds_every_record_with_parents_resolved(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=2, students_per_class=3))
    result = run(db, district_id, fake)

    assert result.status == "succeeded", result.message
    assert result.counts["person"]["added"] == 2 + 2 * 3 * 2
    assert result.counts["enrollment"]["added"] == 2 * 4
    assert result.counts["guardian_link"]["added"] == 6
    assert result.counts["result"]["added"] == 6
    assert result.total("rejected") == 0
    with db.session() as session:
        klass = session.scalars(select(models.Class).where(models.Class.sis_id == "class-1")).one()
        course = session.get(models.Course, klass.course_id)
        assert course is not None and course.title == "Course 1"
        term = session.get(models.AcademicSession, klass.term_id)
        assert term is not None and term.title == "Fall"
        school = session.get(models.Org, klass.school_id)
        assert school is not None and school.parent_id is not None
        enrolled = session.scalars(select(models.Person.sis_id).join(
            models.Enrollment, models.Enrollment.person_id == models.Person.id).where(
            models.Enrollment.class_id == klass.id).order_by(models.Person.sis_id)).all()
        assert enrolled == ["student-1-1", "student-1-2", "student-1-3", "teacher-1"]
        comp = session.scalars(select(models.Competency)).first()
        assert comp is not None and comp.ratings == [[4.0, "Exceeds"], [3.0, "Meets"], [0.0, "Not yet"]]
        res = session.scalars(select(models.Result)).first()
        assert res is not None and res.activity_id is not None and res.score is not None
        run_row = session.get(models.SyncRun, result.run_id)
        assert run_row is not None and run_row.status == "succeeded"
        assert run_row.counts["person"]["added"] == 14
        source = session.scalars(select(models.Source)).one()
        assert source.cursor["since"]["roster"] == NOW.isoformat()
        assert source.lock_owner is None


def test_second_identical_run_writes_nothing(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=2, students_per_class=3))
    run(db, district_id, fake)
    with db.session() as session:
        stamps = sorted((p.id, p.updated_at) for p in session.scalars(select(models.Person)))

    with Writes(db) as writes:
        result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.status == "succeeded"
    assert writes.data() == []
    assert result.total("added") == result.total("updated") == result.total("tombstoned") == 0
    assert result.total("unchanged") == len([i for i in fake.records if not isinstance(i, Complete)])
    with db.session() as session:
        assert sorted((p.id, p.updated_at) for p in session.scalars(select(models.Person))) == stamps


def test_changed_record_is_updated_and_counted(db: Store, district_id: int) -> None:
    items = sample_district(classes=1, students_per_class=2)
    fake = FakeConnector("sis", items)
    run(db, district_id, fake)
    fake.records = [replace(i, family_name="Renamed") if isinstance(i, Person) and i.sourced_id == "student-1-1"
                    else i for i in items]

    with Writes(db) as writes:
        result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.counts["person"]["updated"] == 1
    assert result.counts["person"]["unchanged"] == 4
    assert sorted(set(writes.data())) == ["UPDATE external_ref", "UPDATE person"]
    [person] = rows(db, models.Person, sis_id="student-1-1")
    assert person.family_name == "Renamed"
    assert person.updated_at is not None


def test_dry_run_counts_but_writes_nothing(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=1, students_per_class=2))
    result = run(db, district_id, fake, dry_run=True)

    assert result.status == "succeeded" and result.dry_run
    assert result.counts["person"]["added"] == 5
    assert count(db, models.Person) == 0
    assert count(db, models.ExternalRef) == 0
    [run_row] = rows(db, models.SyncRun)
    assert run_row.dry_run and run_row.counts["person"]["added"] == 5
    [source] = rows(db, models.Source)
    assert source.cursor == {}


# --------------------------------------------------------------------------- tombstones


def _roster(students: int, *, complete: bool = True, prefix: str = "") -> list:
    return [i for i in sample_district(classes=1, students_per_class=students, with_content=False,
                                       with_progress=False, prefix=prefix)
            if complete or not isinstance(i, Complete)]


def test_complete_listing_tombstones_what_it_no_longer_mentions(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20))
    run(db, district_id, fake)
    fake.records = [i for i in fake.records if "student-1-20" not in getattr(i, "sourced_id", "")
                    and getattr(i, "student_sourced_id", "") != "student-1-20"]

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.status == "succeeded", result.message
    assert result.counts["person"]["tombstoned"] == 1
    assert result.counts["enrollment"]["tombstoned"] == 1
    assert result.counts["guardian_link"]["tombstoned"] == 1
    [gone] = rows(db, models.Person, sis_id="student-1-20")
    assert gone.status == "tobedeleted"
    assert count(db, models.Person, status="active") == 2 + 19 * 2
    assert count(db, models.Person) == 1 + 20 * 2  # never deleted
    [ref] = rows(db, models.ExternalRef, kind="person", external_id="student-1-20")
    assert ref.status == "tobedeleted"


def test_without_a_complete_marker_nothing_is_tombstoned(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20, complete=False))
    run(db, district_id, fake)
    fake.records = [i for i in fake.records if getattr(i, "sourced_id", "") != "student-1-20"]

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.total("tombstoned") == 0
    assert count(db, models.Person, status="tobedeleted") == 0


def test_complete_within_a_parent_only_tombstones_inside_it(db: Store, district_id: int) -> None:
    people = [Person(f"s{i}", "student", sis_id=f"s{i}") for i in range(12)]
    classes = [Course("c", "Course"), Class("k1", "K1", course_sourced_id="c"),
               Class("k2", "K2", course_sourced_id="c")]
    enr = [Enrollment(f"e{k}-{i}", k, f"s{i}", "student") for k in ("k1", "k2") for i in range(12)]
    fake = FakeConnector("lms", [*classes, *people, *enr])
    run(db, district_id, fake)

    # k1 is listed in full without s11; k2's listing is missing s11 but not marked complete
    fake.records = [*classes, *people, *[e for e in enr if e.person_sourced_id != "s11"],
                    Complete("enrollment", "k1", "class")]
    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.counts["enrollment"]["tombstoned"] == 1
    [gone] = rows(db, models.ExternalRef, kind="enrollment", external_id="ek1-11")
    assert gone.status == "tobedeleted"
    [kept] = rows(db, models.ExternalRef, kind="enrollment", external_id="ek2-11")
    assert kept.status == "active"


def test_explicit_tombstones_and_tobedeleted_records(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20, complete=False))
    run(db, district_id, fake)
    fake.records = [Tombstone("enrollment", "enr-class-1-student-1-1"),
                    Person("student-1-2", "student", status="tobedeleted")]

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.counts["enrollment"]["tombstoned"] == 1
    assert result.counts["person"]["tombstoned"] == 1
    [p] = rows(db, models.Person, sis_id="student-1-2")
    assert p.status == "tobedeleted"


def test_a_tombstoned_record_comes_back(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20))
    run(db, district_id, fake)
    full = list(fake.records)
    fake.records = [i for i in full if getattr(i, "sourced_id", "") != "student-1-5"]
    run(db, district_id, fake, now=NOW + timedelta(hours=1))
    fake.records = full

    result = run(db, district_id, fake, now=NOW + timedelta(hours=2))

    assert result.counts["person"]["updated"] == 1
    [p] = rows(db, models.Person, sis_id="student-1-5")
    assert p.status == "active"


def test_row_stays_active_while_another_source_references_it(db: Store, district_id: int) -> None:
    sis = FakeConnector("sis", [Person("p1", "student", "Ana", sis_id="S1"), Complete("person")])
    lms = FakeConnector("lms", [Person("9001", "student", "Ana", sis_id="S1"), Complete("person")])
    run(db, district_id, sis)
    run(db, district_id, lms)
    assert count(db, models.Person) == 1

    sis.records = [Complete("person")]
    result = run(db, district_id, sis, now=NOW + timedelta(hours=1), confirm=True)

    assert result.counts["person"]["tombstoned"] == 1
    [person] = rows(db, models.Person)
    assert person.status == "active"  # the LMS still lists Ana

    lms.records = [Complete("person")]
    run(db, district_id, lms, now=NOW + timedelta(hours=2), confirm=True)
    [person] = rows(db, models.Person)
    assert person.status == "tobedeleted"


# --------------------------------------------------------------------------- the mass-removal guard


def test_mass_removal_stops_and_asks_for_confirmation(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20))
    run(db, district_id, fake)
    full = list(fake.records)
    # a bad export: half the students (and their links and enrollments) are missing
    missing = {f"student-1-{i}" for i in range(1, 11)}
    fake.records = [i for i in full if getattr(i, "sourced_id", "") not in missing
                    and getattr(i, "person_sourced_id", "") not in missing
                    and getattr(i, "student_sourced_id", "") not in missing]
    fake.records.append(Person("newcomer", "student", sis_id="newcomer"))

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.status == "needs_confirm"
    assert "--confirm" in result.message
    assert result.removals["person"] == (10, 41)
    # nothing applied, not even the newcomer
    assert count(db, models.Person, status="tobedeleted") == 0
    assert count(db, models.Person, sis_id="newcomer") == 0
    [*_, last] = sorted(rows(db, models.SyncRun), key=lambda r: r.id)
    assert last.status == "needs_confirm"
    assert last.counts["_removals"]["person"] == [10, 41]
    [source] = rows(db, models.Source)
    assert source.consecutive_failures == 0 and source.paused_until is None
    assert source.cursor["since"]["roster"] == NOW.isoformat()  # the watermark did not move

    confirmed = run(db, district_id, fake, now=NOW + timedelta(hours=2), confirm=True)

    assert confirmed.status == "succeeded"
    assert confirmed.counts["person"]["tombstoned"] == 10
    assert count(db, models.Person, status="tobedeleted") == 10
    assert count(db, models.Person, sis_id="newcomer") == 1


def test_removal_share_is_configurable(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20))
    run(db, district_id, fake)
    fake.records = [i for i in fake.records if getattr(i, "sourced_id", "") not in ("student-1-1", "parent-1-1")
                    and getattr(i, "person_sourced_id", "") != "student-1-1"
                    and getattr(i, "student_sourced_id", "") != "student-1-1"]

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1), max_removal_share=0.01)
    assert result.status == "needs_confirm"
    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))
    assert result.status == "succeeded"  # 2 of 41 people, 1 of 21 enrollments: under 10 %
    assert result.counts["person"]["tombstoned"] == 2


# --------------------------------------------------------------------------- failures and resume


def test_a_pull_that_fails_part_way_applies_nothing(db: Store, district_id: int) -> None:
    items = sample_district(classes=2, students_per_class=3)
    fake = FakeConnector("sis", items)
    run(db, district_id, fake)
    changed = [replace(i, given_name="Changed") if isinstance(i, Person) else i for i in items]
    fake.records = [i for i in changed if getattr(i, "sourced_id", "") != "student-2-3"]
    fake.fail_after = len(fake.records) - 3  # after every record, before the Complete markers
    with db.session() as session:
        before = sorted((p.id, p.given_name, p.status) for p in session.scalars(select(models.Person)))

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1), batch_size=4)

    assert result.status == "failed"
    assert "UpstreamError" in result.message
    with db.session() as session:
        assert sorted((p.id, p.given_name, p.status) for p in session.scalars(select(models.Person))) == before
        last = session.scalars(select(models.SyncRun).order_by(models.SyncRun.id.desc())).first()
        assert last is not None and last.status == "failed" and "went away" in last.errors[0]["reason"]
        source = session.scalars(select(models.Source)).one()
        assert source.cursor["since"]["roster"] == NOW.isoformat()  # not advanced
        assert source.consecutive_failures == 1
        assert source.lock_owner is None

    fake.fail_after = None
    result = run(db, district_id, fake, now=NOW + timedelta(hours=2), ignore_pause=True)

    assert result.status == "succeeded"
    assert result.counts["person"]["updated"] == 13
    assert result.counts["person"]["tombstoned"] == 1
    with db.session() as session:
        source = session.scalars(select(models.Source)).one()
        assert source.consecutive_failures == 0 and source.paused_until is None
        assert source.cursor["since"]["roster"] == (NOW + timedelta(hours=2)).isoformat()


def test_a_source_that_stays_down_is_paused_with_backoff(db: Store, district_id: int) -> None:
    fake = FakeConnector("lms", sample_district(classes=1, students_per_class=1), fail_after=0)
    t = NOW
    pauses = []
    for _ in range(8):
        result = run(db, district_id, fake, now=t)
        assert result.status == "failed"
        [source] = rows(db, models.Source)
        paused_until = sync._aware(source.paused_until)
        assert paused_until is not None
        pauses.append(paused_until - t)
        skipped = run(db, district_id, fake, now=t + timedelta(seconds=30))
        assert skipped.status == "skipped" and "paused" in skipped.message
        t = paused_until
    assert [int(p.total_seconds() // 60) for p in pauses] == [1, 2, 4, 8, 16, 32, 60, 60]

    fake.fail_after = None
    assert run(db, district_id, fake, now=t).status == "succeeded"
    [source] = rows(db, models.Source)
    assert source.paused_until is None and source.consecutive_failures == 0 and source.last_error is None


def test_a_second_run_of_the_same_source_is_skipped(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=1, students_per_class=1))
    with db.session() as session:
        source = sync.ensure_source(session, district_id, "sis", "fake", NOW)
        assert sync.acquire_lease(session, source.id, "other-host:1", NOW)

    result = run(db, district_id, fake)

    assert result.status == "skipped"
    assert "already syncing" in result.message and "other-host:1" in result.message
    assert count(db, models.Person) == 0
    # an expired lease is taken over
    later = run(db, district_id, fake, now=NOW + sync.LEASE_TTL + timedelta(seconds=1))
    assert later.status == "succeeded"


def test_delta_pull_uses_the_watermark_and_full_ignores_it(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=1, students_per_class=1),
                         delta_records=[Person("student-1-1", "student", "New", sis_id="student-1-1")])
    run(db, district_id, fake)
    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))
    run(db, district_id, fake, now=NOW + timedelta(hours=2), full=True)

    assert [since for _, since in fake.pulls] == [None, NOW, None]
    assert result.counts == {"person": {"added": 0, "updated": 1, "unchanged": 0, "tombstoned": 0,
                                        "rejected": 0}}


def test_without_delta_capability_every_pull_is_full(db: Store, district_id: int) -> None:
    caps = frozenset(Capability) - {Capability.READ_DELTA}
    fake = FakeConnector("sis", sample_district(classes=1, students_per_class=1), capabilities=caps)
    run(db, district_id, fake)
    run(db, district_id, fake, now=NOW + timedelta(hours=1))
    assert [since for _, since in fake.pulls] == [None, None]


# --------------------------------------------------------------------------- rejections and identity


def test_rejected_records_are_counted_and_reported(db: Store, district_id: int) -> None:
    items = [
        *sample_district(classes=1, students_per_class=2, with_content=False, with_progress=False),
        Rejected("person", "bad-1", "email", "Not a valid email address."),
        Enrollment("orphan", "no-such-class", "student-1-1", "student"),
        GuardianLink("nobody", "student-1-1"),
        Result("r-none", "student-1-1"),
    ]
    result = run(db, district_id, FakeConnector("sis", items))

    assert result.status == "succeeded"
    assert result.counts["person"]["rejected"] == 1
    assert result.counts["enrollment"]["rejected"] == 1
    assert result.counts["guardian_link"]["rejected"] == 1
    assert result.counts["result"]["rejected"] == 1
    by_id = {e["record_id"]: e for e in result.errors}
    assert by_id["bad-1"] == {"type": "rejected", "source": "sis", "kind": "person", "record_id": "bad-1",
                              "field": "email", "reason": "Not a valid email address."}
    assert by_id["orphan"]["field"] == "class_sourced_id" and "no-such-class" in by_id["orphan"]["reason"]
    assert count(db, models.Enrollment) == 3
    [run_row] = rows(db, models.SyncRun)
    assert {e["record_id"] for e in run_row.errors} >= {"bad-1", "orphan", "nobody>student-1-1", "r-none"}


def test_a_record_that_fails_validation_is_not_tombstoned(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(20))
    run(db, district_id, fake)
    fake.records = [Rejected("person", "student-1-3", "email", "bad") if getattr(i, "sourced_id", "") ==
                    "student-1-3" else i for i in fake.records]

    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))

    assert result.total("tombstoned") == 0
    [p] = rows(db, models.Person, sis_id="student-1-3")
    assert p.status == "active"


def test_error_list_is_capped_and_the_rest_counted(db: Store, district_id: int) -> None:
    items = [Rejected("person", f"bad-{i}", "email", "bad") for i in range(sync.ERROR_LIMIT + 50)]
    result = run(db, district_id, FakeConnector("sis", items))
    assert result.counts["person"]["rejected"] == sync.ERROR_LIMIT + 50
    assert len(result.errors) == sync.ERROR_LIMIT and result.error_total == sync.ERROR_LIMIT + 50
    [run_row] = rows(db, models.SyncRun)
    assert run_row.errors[-1] == {"type": "truncated", "reason": "50 more not shown"}


def test_one_person_across_sources_by_sis_id(db: Store, district_id: int) -> None:
    oneroster = FakeConnector("oneroster", [Person("stu-1", "student", "Ana", "Diaz", sis_id="stu-1")])
    canvas = FakeConnector("canvas", [Person("4411", "student", "Ana", "Díaz", email="ana@x.org", sis_id="stu-1")])
    run(db, district_id, oneroster)

    result = run(db, district_id, canvas)

    assert result.counts["person"]["updated"] == 1 and result.counts["person"]["matched"] == 1
    [person] = rows(db, models.Person)
    assert person.sis_id == "stu-1" and person.email == "ana@x.org"
    refs = {(r.namespace, r.external_id) for r in rows(db, models.ExternalRef, entity_id=person.id)}
    assert refs == {("oneroster", "stu-1"), ("canvas", "4411")}
    # both sources run again: still one row, nothing written
    with Writes(db) as writes:
        run(db, district_id, oneroster, now=NOW + timedelta(hours=1))
        run(db, district_id, canvas, now=NOW + timedelta(hours=1))
    assert writes.data() == [] and count(db, models.Person) == 1


def test_a_large_batch_mixing_matched_and_new_people_gets_exact_refs(db: Store, district_id: int) -> None:
    """Refs of rows a batch inserts are written in bulk; each one still names its own row and fingerprint."""
    sis = FakeConnector("sis", [Person(f"s-{i}", "student", f"Ana{i}", "Diaz", sis_id=f"S{i}")
                                for i in range(0, 300, 3)])
    run(db, district_id, sis)
    people = [Person(f"ü-{i}:x", "student", f"Ana{i}", "Diaz", sis_id=f"S{i}", email=f"a{i}@x.org") for i in range(300)]
    lms = FakeConnector("lms:east", people)

    result = run(db, district_id, lms, batch_size=1000)

    assert result.counts["person"]["matched"] == 100 and result.counts["person"]["added"] == 200
    with db.session() as session:
        refs = {r.external_id: r for r in session.scalars(select(models.ExternalRef).where(
            models.ExternalRef.namespace == "lms:east"))}
        by_id = {p.id: p for p in session.scalars(select(models.Person))}
    assert len(refs) == 300 and len({r.id for r in refs.values()}) == 300
    fingerprint = sync.FINGERPRINTS[Person]
    for p in people:
        ref = refs[p.sourced_id]
        row = by_id[ref.entity_id]
        assert row.sis_id == p.sis_id and row.email == p.email
        assert ref.fingerprint == fingerprint(p) and ref.status == "active" and ref.kind == "person"
        assert row.sourced_id == (f"lms:east:{p.sourced_id}" if int(p.sis_id[1:]) % 3 else f"sis:s-{p.sis_id[1:]}")
    with Writes(db) as writes:
        again = run(db, district_id, lms, now=NOW + timedelta(hours=1))
    assert writes.data() == [] and again.counts["person"]["unchanged"] == 300


def test_fallback_match_on_email_and_conflicts_are_reported(db: Store, district_id: int) -> None:
    sis = FakeConnector("sis", [
        Person("t1", "teacher", "Tom", email="tom@x.org", sis_id="T1"),
        Person("s1", "student", "Sam", email="sam@x.org", sis_id="S1"),
        Person("s2", "student", "Sue", email="twin@x.org", sis_id="S2"),
        Person("s3", "student", "Sid", email="twin@x.org", sis_id="S3"),
        Person("s4", "student", "Zoe", email="zoe@x.org", sis_id="S4"),
    ])
    run(db, district_id, sis)
    lti = FakeConnector("lti", [
        Person("sub-a", "teacher", "Tom", email="tom@x.org"),  # → t1 by email
        Person("sub-b", "teacher", "Sam", email="sam@x.org"),  # role clash with the student S1
        Person("sub-c", "student", "?", email="twin@x.org"),  # two candidates
        Person("sub-d", "student", "Zoe", email="zoe@x.org", sis_id="S9"),  # sis ids differ
    ])

    result = run(db, district_id, lti)

    assert result.counts["person"]["matched"] == 1
    assert result.counts["person"]["rejected"] == 3
    conflicts = {e["record_id"]: e for e in result.errors if e["type"] == "conflict"}
    assert set(conflicts) == {"sub-b", "sub-c", "sub-d"}
    assert conflicts["sub-b"]["field"] == "role"
    assert "2 person rows" in conflicts["sub-c"]["reason"]
    assert count(db, models.Person) == 5  # nothing guessed, nothing duplicated
    [tom] = rows(db, models.Person, sis_id="T1")
    assert {r.namespace for r in rows(db, models.ExternalRef, entity_id=tom.id, kind="person")} == {"sis", "lti"}


def test_two_records_of_one_source_with_one_sis_id_conflict(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", [Person("a", "student", sis_id="S1"), Person("b", "student", sis_id="S1")])
    result = run(db, district_id, fake)
    assert result.counts["person"]["added"] == 1 and result.counts["person"]["rejected"] == 1
    # across batches too
    fake2 = FakeConnector("sis2", [Person("a", "student", sis_id="S2"), Person("b", "student", sis_id="S2")])
    result = run(db, district_id, fake2, batch_size=1)
    assert result.counts["person"]["added"] == 1 and result.counts["person"]["rejected"] == 1
    assert count(db, models.Person, sis_id="S2") == 1


def test_enrollments_and_classes_are_shared_across_sources(db: Store, district_id: int) -> None:
    def items(prefix: str) -> list:
        return [Class(f"{prefix}k", "Algebra", sis_id="ALG-1"),
                Person(f"{prefix}p", "student", sis_id="S1"),
                Enrollment(f"{prefix}e", f"{prefix}k", f"{prefix}p", "student")]

    run(db, district_id, FakeConnector("sis", items("sis-")))
    result = run(db, district_id, FakeConnector("lms", items("lms-")))

    assert result.counts["class"]["matched"] == 1
    assert result.counts["enrollment"]["matched"] == 1
    assert count(db, models.Class) == count(db, models.Enrollment) == count(db, models.Person) == 1


def test_modules_resolve_prerequisites_within_a_batch(db: Store, district_id: int) -> None:
    items = [Class("k", "K"), Module("m1", "k", "One", position=1),
             Module("m2", "k", "Two", position=2, prerequisite_sourced_ids=("m1",)),
             Module("m3", "k", "Three", position=3, prerequisite_sourced_ids=("m1", "m2", "missing"))]
    fake = FakeConnector("lms", items)
    result = run(db, district_id, fake)

    assert result.counts["module"]["added"] == 3
    by_title = {m.title: m for m in rows(db, models.Module)}
    assert by_title["Two"].prerequisite_ids == [by_title["One"].id]
    assert by_title["Three"].prerequisite_ids == [by_title["One"].id, by_title["Two"].id]
    # the unresolved prerequisite makes the module retried next run, which adds it once it exists
    fake.records = [*items, Module("missing", "k", "Zero", position=0)]
    result = run(db, district_id, fake, now=NOW + timedelta(hours=1))
    assert result.counts["module"] == {"added": 1, "updated": 1, "unchanged": 2, "tombstoned": 0, "rejected": 0}
    [three] = rows(db, models.Module, title="Three")
    assert len(three.prerequisite_ids) == 3


def test_a_missing_optional_parent_is_filled_in_later_without_rewriting_meanwhile(db: Store,
                                                                                 district_id: int) -> None:
    klass = Class("k", "Algebra", school_sourced_id="school-9")  # the school is not (yet) in the feed
    fake = FakeConnector("lms", [klass])
    run(db, district_id, fake)
    [row] = rows(db, models.Class)
    assert row.school_id is None

    with Writes(db) as writes:
        again = run(db, district_id, fake, now=NOW + timedelta(hours=1))
    assert writes.data() == [] and again.counts["class"]["unchanged"] == 1

    fake.records = [Org("school-9", "North High"), klass]
    later = run(db, district_id, fake, now=NOW + timedelta(hours=2))
    assert later.counts["class"]["updated"] == 1
    [row] = rows(db, models.Class)
    [school] = rows(db, models.Org)
    assert row.school_id == school.id
    with Writes(db) as writes:
        run(db, district_id, fake, now=NOW + timedelta(hours=3))
    assert writes.data() == []


def test_a_large_batch_with_a_missing_parent_is_retried_once_the_parent_arrives(db: Store, district_id: int) -> None:
    classes = [Class(f"k-{i}", f"Algebra {i}", school_sourced_id="school-9" if i % 2 else None) for i in range(100)]
    fake = FakeConnector("lms", classes)
    run(db, district_id, fake)
    with db.session() as session:
        stored = {r.external_id: r.fingerprint for r in session.scalars(select(models.ExternalRef))}
    fingerprint = sync.FINGERPRINTS[Class]
    assert stored == {c.sourced_id: fingerprint(c) + (sync.PARTIAL if c.school_sourced_id else "") for c in classes}

    with Writes(db) as writes:
        run(db, district_id, fake, now=NOW + timedelta(hours=1))
    assert writes.data() == []
    fake.records = [Org("school-9", "North High"), *classes]
    later = run(db, district_id, fake, now=NOW + timedelta(hours=2))
    assert later.counts["class"]["updated"] == 50 and later.counts["class"]["unchanged"] == 50
    [school] = rows(db, models.Org)
    assert {r.sourced_id: r.school_id for r in rows(db, models.Class)} == {
        f"lms:{c.sourced_id}": school.id if c.school_sourced_id else None for c in classes}


def test_on_applied_receives_the_changed_classes(db: Store, district_id: int) -> None:
    calls: list[tuple[int, frozenset[int]]] = []
    fake = FakeConnector("sis", sample_district(classes=2, students_per_class=2))
    run(db, district_id, fake, on_applied=lambda s, d, ids: calls.append((d, ids)))
    klass = {c.sis_id: c.id for c in rows(db, models.Class)}
    assert calls == [(district_id, frozenset(klass.values()))]

    fake.records = [replace(i, score=1.0) if isinstance(i, Result) and "class-2" not in i.sourced_id
                    and i.activity_sourced_id == "activity-1" else i for i in fake.records]
    run(db, district_id, fake, now=NOW + timedelta(hours=1), on_applied=lambda s, d, ids: calls.append((d, ids)))
    assert calls[-1] == (district_id, frozenset({klass["class-1"]}))

    run(db, district_id, fake, now=NOW + timedelta(hours=2), on_applied=lambda s, d, ids: calls.append((d, ids)))
    assert len(calls) == 2  # nothing changed, no call


def test_scope_limits_the_pull_and_unsupported_scopes_are_skipped(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=1, students_per_class=1))
    result = run(db, district_id, fake, scope=Scope.ROSTER)
    assert set(result.counts) == {"org", "academic_session", "course", "class", "person", "enrollment",
                                  "guardian_link"}

    roster_only = FakeConnector("csv", [], capabilities={Capability.READ_ROSTER})
    skipped = run(db, district_id, roster_only, scope="progress")
    assert skipped.status == "skipped" and "cannot read progress" in skipped.message


def test_batches_smaller_than_the_stream_give_the_same_result(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", sample_district(classes=3, students_per_class=4))
    result = run(db, district_id, fake, batch_size=3)
    assert result.total("rejected") == 0
    assert result.counts["enrollment"]["added"] == 15
    again = run(db, district_id, fake, now=NOW + timedelta(hours=1), batch_size=7)
    assert again.total("unchanged") == result.total("added")


def test_counts_sum_across_kinds() -> None:
    r = sync.SyncRunResult("succeeded", "s", counts={"a": {"added": 2}, "b": {"added": 3, "updated": 1}})
    assert r.total("added") == 5 and r.total("updated") == 1 and r.ok


def test_pause_delay_doubles_up_to_an_hour() -> None:
    assert [sync.pause_delay(n).total_seconds() for n in range(0, 9)] == [
        0, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_canonical_rows_are_never_deleted(db: Store, district_id: int) -> None:
    fake = FakeConnector("sis", _roster(5))
    run(db, district_id, fake)
    fake.records = [Complete(k) for k in ("person", "enrollment", "guardian_link", "class", "course")]
    with Writes(db) as writes:
        result = run(db, district_id, fake, now=NOW + timedelta(hours=1), confirm=True)
    assert result.status == "succeeded"
    assert not [s for s in writes.statements if s.startswith("DELETE")]
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(models.Person)) == 11


def test_collections_are_rarer_during_a_run_and_restored_after(db: Store, district_id: int) -> None:
    import gc

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    class Watching(FakeConnector):
        def pull(self, scope=Scope.ALL, since=None):  # type: ignore[no-untyped-def]
            seen.append(gc.get_threshold())
            yield from super().pull(scope, since)

    run(db, district_id, Watching("sis", sample_district()))
    failing = Watching("other", sample_district())
    failing.fail_after = 3
    assert run(db, district_id, failing).status == sync.FAILED

    assert seen == [sync._RUN_GC_THRESHOLD, sync._RUN_GC_THRESHOLD]
    assert gc.get_threshold() == before
