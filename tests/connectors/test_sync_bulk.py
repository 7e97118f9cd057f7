"""The sync engine's bulk paths: foreign keys on SQLite, first-import shortcuts, and the same answers as before."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select, text

from connectors import sync
from connectors.base import Class, Course, Enrollment, Org, Person
from connectors.fake import FakeConnector
from plugin.store import models
from plugin.store.db import Store
from tests.connectors.sync_support import NOW, run


def sqlite_only(db: Store) -> None:
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's connection pragmas")


def _people(db: Store) -> list[tuple[str, str | None, str | None]]:
    with db.session() as session:
        people = session.scalars(select(models.Person))
        return sorted((p.sourced_id.split(":", 1)[1], p.sis_id, p.email) for p in people)


# --------------------------------------------------------------------------- foreign keys


def test_bulk_session_skips_foreign_key_checks_and_hands_them_back(db: Store) -> None:
    sqlite_only(db)
    with db.bulk_session() as session:
        assert session.connection().exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    with pytest.raises(RuntimeError), db.bulk_session() as session:
        session.connection().exec_driver_sql("SELECT 1")
        raise RuntimeError("boom")
    # every pooled connection checks foreign keys again
    with db.engine.connect() as a, db.engine.connect() as b:
        assert a.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert b.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_reference_to_a_missing_row_fails_the_run_and_applies_nothing(db: Store, district_id: int) -> None:
    first = run(db, district_id, FakeConnector("sis", [Class("k1", "Algebra"), Person("p1", "student")]))
    assert first.ok, first.message
    with db.session() as session:  # the class row goes, its reference stays (as no code path of ours would do)
        session.execute(text("DELETE FROM class"))

    second = run(db, district_id, FakeConnector("sis", [Class("k1", "Algebra"), Person("p1", "student"),
                                                         Person("p2", "student"),
                                                         Enrollment("e1", "k1", "p1", "student")]),
                 now=NOW + timedelta(hours=1))

    assert second.status == sync.FAILED
    assert "FOREIGN KEY" in second.message.upper()
    with db.session() as session:
        assert session.scalars(select(models.Enrollment)).first() is None
        assert len(session.scalars(select(models.Person)).all()) == 1  # p2 was rolled back with the rest


def test_references_to_rows_of_an_earlier_run_are_written(db: Store, district_id: int) -> None:
    roster = [Org("o", "School"), Course("c", "Algebra", org_sourced_id="o"),
              Class("k", "Algebra 1", course_sourced_id="c", school_sourced_id="o"), Person("p", "student")]
    assert run(db, district_id, FakeConnector("sis", roster)).ok
    later = run(db, district_id, FakeConnector("sis", [*roster, Enrollment("e", "k", "p", "student",
                                                                         begin_date=date(2026, 8, 31))]),
                now=NOW + timedelta(hours=1))
    assert later.ok, later.message
    assert later.counts["enrollment"]["added"] == 1
    with db.session() as session:
        enrollment = session.scalars(select(models.Enrollment)).one()
        klass = session.scalars(select(models.Class)).one()
        assert enrollment.class_id == klass.id and enrollment.begin_date == date(2026, 8, 31)


# --------------------------------------------------------------------------- first-import shortcuts


def _same_result_with_and_without_a_prior_row(db: Store, district_id: int, items: list) -> None:
    """Run ``items`` one record per batch into an empty person table, then in a district that has a person."""
    empty = run(db, district_id, FakeConnector("sis", items), batch_size=1)
    assert empty.ok, empty.message
    with db.session() as session:
        other = models.District(slug="south", name="South", settings={"match_on": ["sis_id", "email"]},
                                created_at=NOW)
        session.add(other)
        session.flush()
        other_id = other.id
    assert run(db, other_id, FakeConnector("other", [Person("zz", "teacher", sis_id="T-ZZ")])).ok
    busy = run(db, other_id, FakeConnector("sis", items), batch_size=1)
    assert busy.ok, busy.message
    assert busy.counts["person"] == empty.counts["person"]
    assert [(e["record_id"], e["type"]) for e in busy.errors] == [(e["record_id"], e["type"]) for e in empty.errors]


def test_a_repeated_sis_id_across_batches_is_a_conflict_in_an_empty_table(db: Store, district_id: int) -> None:
    result = run(db, district_id, FakeConnector("sis", [Person("a", "student", sis_id="S1"),
                                                         Person("b", "student", sis_id="S1")]), batch_size=1)
    assert result.counts["person"]["added"] == 1 and result.counts["person"]["rejected"] == 1
    assert [e["type"] for e in result.errors] == ["conflict"]


def test_matching_in_an_empty_table_answers_as_a_lookup_would(db: Store, district_id: int) -> None:
    items = [Person("a", "student", sis_id="S1", email="a@example.org"),
             Person("b", "student", sis_id="S1"),  # sis_id taken by a: conflict
             Person("c", "student", email="a@example.org"),  # an email this source already used: a new person
             Person("d", "student", sis_id="S4")]
    _same_result_with_and_without_a_prior_row(db, district_id, items)


def test_a_changed_sis_id_in_an_empty_table_is_still_seen_by_later_batches(db: Store, district_id: int) -> None:
    items = [Person("a", "student", sis_id="S1"),
             Person("a", "student", sis_id="S2"),  # the same record again, changed: an update
             Person("b", "student", sis_id="S2")]  # now a's: conflict
    result = run(db, district_id, FakeConnector("sis", items), batch_size=1)
    assert result.counts["person"]["added"] == 1
    assert result.counts["person"]["updated"] == 1
    assert result.counts["person"]["rejected"] == 1
    assert _people(db) == [("a", "S2", None)]


def test_the_same_id_twice_in_one_batch_keeps_the_later_record(db: Store, district_id: int) -> None:
    result = run(db, district_id, FakeConnector("sis", [Person("a", "student", given_name="Old"),
                                                         Person("a", "student", given_name="New")]))
    assert result.counts["person"]["added"] == 1
    with db.session() as session:
        assert session.scalars(select(models.Person.given_name)).one() == "New"


def test_a_first_import_in_small_batches_matches_one_big_batch(db: Store, district_id: int) -> None:
    roster = [Org("o", "School"), Course("c", "Algebra", org_sourced_id="o", sis_id="ALG")]
    for k in range(3):
        roster.append(Class(f"k{k}", f"Algebra {k}", course_sourced_id="c", school_sourced_id="o", sis_id=f"K{k}"))
    for p in range(6):
        roster.append(Person(f"p{p}", "student", sis_id=f"S{p}", email=f"p{p}@example.org"))
        roster.append(Enrollment(f"e{p}", f"k{p % 3}", f"p{p}", "student", begin_date=date(2026, 9, 1)))
    small = run(db, district_id, FakeConnector("sis", roster), batch_size=2)
    big = run(db, district_id, FakeConnector("lms", roster))
    assert small.ok and big.ok
    assert small.total("added") == len(roster)
    assert big.total("matched") == 1 + 3 + 6 + 6  # the course, classes and people by sis_id; enrollments by key
    again = run(db, district_id, FakeConnector("sis", roster), now=NOW + timedelta(hours=1), batch_size=4)
    assert again.total("unchanged") == len(roster) and again.total("updated") == 0


# --------------------------------------------------------------------------- the Bloom filter


def test_bloom_filter_reports_keys_added_before_under_the_same_tag() -> None:
    bloom = sync._Bloom(slots=1 << 20)
    assert bloom.maybe_seen("ref:person", ["a", "b"]) == []
    assert bloom.maybe_seen("ref:person", ["b", "c"]) == ["b"]
    assert bloom.maybe_seen("ref:class", ["a", "b", "c"]) == []  # another tag is another set
    assert bloom.maybe_seen("ref:person", ["a", "b", "c", "d"]) == ["a", "b", "c"]
