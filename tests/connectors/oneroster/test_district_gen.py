"""The benchmark's district generator writes a valid, deterministic OneRoster 1.1 bulk package."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.district_gen import DistrictSize, generate, main
from connectors.base import Complete, Enrollment, GuardianLink, Person, Rejected, kind_of
from connectors.oneroster.csvpkg import iter_package

SCALE = 0.01


def test_full_scale_has_the_benchmark_shape() -> None:
    size = DistrictSize.at(1.0)
    assert (size.students, size.teachers, size.classes) == (50_000, 3_000, 14_000)
    assert size.students * size.classes_per_student + size.classes == 364_000


def test_tiny_district_reads_back_without_rejections(tmp_path: Path) -> None:
    stats = generate(tmp_path / "district", scale=SCALE, seed=3)
    items = list(iter_package(tmp_path / "district"))

    assert not [i for i in items if isinstance(i, Rejected)]
    counts = Counter(kind_of(i) for i in items if not isinstance(i, Complete))
    assert counts == {
        "org": stats.orgs,
        "academic_session": stats.academic_sessions,
        "course": stats.courses,
        "class": stats.classes,
        "person": stats.users,
        "enrollment": stats.enrollments,
        "guardian_link": stats.guardian_links,
    }
    assert {c.kind for c in items if isinstance(c, Complete)} == set(counts)
    people = [i for i in items if isinstance(i, Person)]
    assert Counter(p.role for p in people)["student"] == stats.students
    assert {p.role for p in people} >= {"student", "teacher", "parent"}
    per_class = Counter(
        e.class_sourced_id for e in items if isinstance(e, Enrollment) and e.role == "student"
    )
    assert 15 <= sum(per_class.values()) / len(per_class) <= 35
    ids = {p.sourced_id for p in people}
    assert all(
        link.guardian_sourced_id in ids and link.student_sourced_id in ids
        for link in items
        if isinstance(link, GuardianLink)
    )


def test_generation_is_deterministic_and_zip_matches_folder(tmp_path: Path) -> None:
    generate(tmp_path / "a", scale=SCALE, seed=5)
    generate(tmp_path / "b", scale=SCALE, seed=5)
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name
    generate(tmp_path / "c.zip", scale=SCALE, seed=5, as_zip=True)
    assert list(iter_package(tmp_path / "c.zip")) == list(iter_package(tmp_path / "a"))


def test_command_line_prints_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "d"), "--scale", "0.005"]) == 0
    assert "enrollments" in capsys.readouterr().out
