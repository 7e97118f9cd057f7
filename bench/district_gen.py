"""Write a deterministic OneRoster 1.1 CSV bulk package for a synthetic district.

At scale 1.0: 60 schools, 50,000 students, 3,000 teachers, 14,000 classes, 364,000 enrollments (7 classes per
student plus one teacher per class) and about 64,000 parents and guardians linked both ways through
``agentSourcedIds``. Every count scales with ``--scale`` (tests use a tiny district); the same seed and scale
always write byte-identical files.

    python -m bench.district_gen OUT_DIR [--scale 1.0] [--seed 7] [--zip]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from connectors.oneroster.csvpkg import HEADERS_1_1, MANIFEST_FILES_1_1

VERSION_FILES = MANIFEST_FILES_1_1
WRITTEN = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")

# The OneRoster 1.1 CSV headers, in the order the specification lists them (the reader's own table).
HEADERS = HEADERS_1_1

GIVEN = (
    "Ava",
    "Liam",
    "Noah",
    "Emma",
    "Olivia",
    "Elijah",
    "Mateo",
    "Sofia",
    "Amara",
    "Kenji",
    "Priya",
    "Diego",
    "Zara",
    "Yusuf",
    "Mila",
    "Hana",
    "Luca",
    "Nia",
    "Omar",
    "Ines",
    "Tariq",
    "Freya",
    "Ravi",
    "Chloe",
    "Aiden",
    "Leila",
    "Ethan",
    "Maya",
    "Jonah",
    "Anya",
    "Felix",
    "Imani",
    "Kai",
    "Lena",
    "Marco",
    "Nora",
    "Oscar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sami",
    "Tess",
    "Uma",
    "Vera",
    "Wes",
    "Xena",
    "Yara",
    "Zane",
    "Aria",
    "Bo",
)
FAMILY = (
    "Garcia",
    "Smith",
    "Nguyen",
    "Okafor",
    "Kowalski",
    "Haddad",
    "Tanaka",
    "Silva",
    "Johnson",
    "Patel",
    "Müller",
    "Rossi",
    "Kim",
    "Novak",
    "Andersen",
    "Dubois",
    "Mensah",
    "Ivanova",
    "Costa",
    "Singh",
    "Brown",
    "Lopez",
    "Cohen",
    "Yilmaz",
    "Schmidt",
    "O'Brien",
    "Park",
    "Wang",
    "Ali",
    "Hughes",
    "Moreau",
    "Larsen",
    "Santos",
    "Fischer",
    "Begum",
    "Ortiz",
    "Reyes",
    "Kaur",
    "Mwangi",
    "Sato",
)
SUBJECTS = (
    ("Mathematics", "MTH"),
    ("English Language Arts", "ELA"),
    ("Science", "SCI"),
    ("Social Studies", "SOC"),
    ("Art", "ART"),
    ("Music", "MUS"),
    ("Physical Education", "PE"),
    ("World Languages", "WLG"),
    ("Computer Science", "CS"),
    ("Health", "HLT"),
)
GRADE_BANDS = (("KG", "01", "02", "03", "04", "05"), ("06", "07", "08"), ("09", "10", "11", "12"))

SCHOOL_YEAR = "2026"
YEAR = ("sy-2026", "2025-2026", "schoolYear", "2025-08-25", "2026-06-12", "")
SEMESTERS = (
    ("sem-2026-1", "Fall 2025", "semester", "2025-08-25", "2026-01-16", "sy-2026"),
    ("sem-2026-2", "Spring 2026", "semester", "2026-01-20", "2026-06-12", "sy-2026"),
)
GRADING_PERIODS = (
    ("gp-2026-1", "Quarter 1", "gradingPeriod", "2025-08-25", "2025-10-31", "sem-2026-1"),
    ("gp-2026-2", "Quarter 2", "gradingPeriod", "2025-11-03", "2026-01-16", "sem-2026-1"),
    ("gp-2026-3", "Quarter 3", "gradingPeriod", "2026-01-20", "2026-03-27", "sem-2026-2"),
    ("gp-2026-4", "Quarter 4", "gradingPeriod", "2026-03-30", "2026-06-12", "sem-2026-2"),
)
TERM_CHOICES = (("sem-2026-1",), ("sem-2026-2",), ("sem-2026-1", "sem-2026-2"))
TERM_DATES = {
    ("sem-2026-1",): ("2025-08-25", "2026-01-16"),
    ("sem-2026-2",): ("2026-01-20", "2026-06-12"),
    ("sem-2026-1", "sem-2026-2"): ("2025-08-25", "2026-06-12"),
}


@dataclass(frozen=True, slots=True)
class DistrictSize:
    """How big the generated district is."""

    schools: int
    students: int
    teachers: int
    classes: int
    courses_per_school: int
    classes_per_student: int = 7

    @classmethod
    def at(cls, scale: float) -> DistrictSize:
        """Return the size of a district ``scale`` times the benchmark district."""
        if scale <= 0:
            raise ValueError("scale must be positive")
        schools = max(1, round(60 * scale))
        return cls(
            schools=schools,
            students=max(schools * 8, round(50_000 * scale)),
            teachers=max(schools, round(3_000 * scale)),
            classes=max(schools * 7, round(14_000 * scale)),
            courses_per_school=max(3, min(40, round(40 * scale**0.5))),
        )


@dataclass(frozen=True, slots=True)
class DistrictStats:
    """What was written (row counts per file)."""

    path: str
    orgs: int
    academic_sessions: int
    courses: int
    classes: int
    students: int
    teachers: int
    guardians: int
    users: int
    enrollments: int
    guardian_links: int


def _split(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal integers."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class _Writer:
    """Write CSV files into a folder or a zip archive."""

    def __init__(self, out: Path, as_zip: bool) -> None:
        self.out = out
        self.zip: zipfile.ZipFile | None = None
        if as_zip:
            out.parent.mkdir(parents=True, exist_ok=True)
            self.zip = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1)
        else:
            out.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
        count = 0
        if self.zip is not None:
            info = zipfile.ZipInfo(f"{name}.csv", date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with self.zip.open(info, "w") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as fh:
                count = self._rows(fh, header, rows)
        else:
            with open(self.out / f"{name}.csv", "w", encoding="utf-8", newline="") as fh:
                count = self._rows(fh, header, rows)
        return count

    @staticmethod
    def _rows(fh: io.TextIOBase, header: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(header)
        counter = _Counter(rows)
        writer.writerows(counter)
        return counter.count

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


class _Counter:
    """Count rows as they stream through."""

    def __init__(self, rows: Iterable[Sequence[object]]) -> None:
        self.rows = rows
        self.count = 0

    def __iter__(self) -> Iterator[Sequence[object]]:
        for row in self.rows:
            self.count += 1
            yield row


def generate(out: Path | str, *, scale: float = 1.0, seed: int = 7, as_zip: bool = False) -> DistrictStats:
    """Write the district package to ``out`` (a folder, or a ``.zip`` file when ``as_zip``)."""
    out = Path(out)
    size = DistrictSize.at(scale)
    rng = random.Random(seed)
    writer = _Writer(out, as_zip)
    try:
        return _generate(writer, size, rng, out)
    finally:
        writer.close()


def _generate(writer: _Writer, size: DistrictSize, rng: random.Random, out: Path) -> DistrictStats:
    district = "org-district"
    schools = [f"org-sch-{i:03d}" for i in range(size.schools)]
    bands = [
        GRADE_BANDS[0]
        if i < size.schools * 2 // 3
        else GRADE_BANDS[1]
        if i < size.schools * 5 // 6
        else GRADE_BANDS[2]
        for i in range(size.schools)
    ]
    writer.write(
        "manifest",
        ("propertyName", "value"),
        [
            ("manifest.version", "1.0"),
            ("oneroster.version", "1.1"),
            *((f"file.{name}", "bulk" if name in WRITTEN else "absent") for name in VERSION_FILES),
            ("source.systemName", "Trailmark district generator"),
            ("source.systemCode", "tm-gen"),
        ],
    )
    n_orgs = writer.write(
        "orgs",
        HEADERS["orgs"],
        [
            (district, "", "", "Riverbend Unified School District", "district", "RUSD", ""),
            *(
                (
                    sid,
                    "",
                    "",
                    f"{FAMILY[i % len(FAMILY)]} {('Elementary', 'Middle', 'High')[GRADE_BANDS.index(band)]}"
                    f" School {i}",
                    "school",
                    f"S{i:03d}",
                    district,
                )
                for i, (sid, band) in enumerate(zip(schools, bands, strict=True))
            ),
        ],
    )
    sessions = [YEAR, *SEMESTERS, *GRADING_PERIODS]
    n_sessions = writer.write(
        "academicSessions",
        HEADERS["academicSessions"],
        [
            (sid, "", "", title, kind, start, end, parent, SCHOOL_YEAR)
            for sid, title, kind, start, end, parent in sessions
        ],
    )

    # courses: per school, one per (subject, grade) until courses_per_school
    courses: list[list[tuple[str, str, str]]] = []  # per school: (sourcedId, title, grade)
    course_rows = []
    for s, sid in enumerate(schools):
        mine = []
        for k in range(size.courses_per_school):
            subject, code = SUBJECTS[k % len(SUBJECTS)]
            grade = bands[s][(k // len(SUBJECTS)) % len(bands[s])]
            csid = f"crs-{s:03d}-{k:03d}"
            mine.append((csid, f"{subject} {grade}", grade))
            course_rows.append(
                (
                    csid,
                    "",
                    "",
                    YEAR[0],
                    f"{subject} {grade}",
                    f"{code}-{grade}-{s:03d}",
                    grade,
                    sid,
                    subject,
                    "",
                )
            )
        courses.append(mine)
    n_courses = writer.write("courses", HEADERS["courses"], course_rows)

    # classes and teachers per school
    class_counts = _split(size.classes, size.schools)
    teacher_counts = _split(size.teachers, size.schools)
    student_counts = _split(size.students, size.schools)
    school_classes: list[list[tuple[str, tuple[str, ...]]]] = []
    school_teachers: list[list[str]] = []
    class_rows = []
    c_no = t_no = 0
    for s, sid in enumerate(schools):
        teachers = [f"tch-{t_no + i:05d}" for i in range(teacher_counts[s])]
        t_no += teacher_counts[s]
        school_teachers.append(teachers)
        mine = []
        for _ in range(class_counts[s]):
            course_id, title, grade = courses[s][c_no % len(courses[s])]
            terms = TERM_CHOICES[rng.randrange(3)]
            class_id = f"cls-{c_no:05d}"
            period = str(1 + c_no % 7)
            class_rows.append(
                (
                    class_id,
                    "",
                    "",
                    f"{title} - P{period}",
                    grade,
                    course_id,
                    f"{title[:3].upper()}-{c_no:05d}",
                    "scheduled",
                    f"Room {100 + c_no % 150}",
                    sid,
                    ",".join(terms),
                    "",
                    "",
                    period,
                )
            )
            mine.append((class_id, terms))
            c_no += 1
        school_classes.append(mine)
    n_classes = writer.write("classes", HEADERS["classes"], class_rows)

    # students, families (siblings share guardians), enrollments
    students: list[tuple[int, str, str, str, str]] = []  # (school, sid, given, family, grade)
    families: list[
        tuple[list[str], list[tuple[str, str, str, str]]]
    ] = []  # ([children], [(gid, role, g, f)])
    student_guardians: dict[str, list[str]] = {}
    st_no = g_no = 0
    for s in range(size.schools):
        for _ in range(student_counts[s]):
            sid = f"stu-{st_no:06d}"
            st_no += 1
            if families and rng.random() < 0.22:
                children, guardians = families[-1]
                family = guardians[0][3]
                children.append(sid)
            else:
                family = FAMILY[rng.randrange(len(FAMILY))]
                guardians = []
                for _g in range(1 if rng.random() < 0.3 else 2):
                    roll = rng.random()
                    role = "guardian" if roll < 0.08 else "relative" if roll < 0.1 else "parent"
                    guardians.append((f"par-{g_no:06d}", role, GIVEN[rng.randrange(len(GIVEN))], family))
                    g_no += 1
                families.append(([sid], guardians))
            student_guardians[sid] = [g[0] for g in guardians]
            grade = bands[s][rng.randrange(len(bands[s]))]
            students.append((s, sid, GIVEN[rng.randrange(len(GIVEN))], family, grade))

    def user_rows() -> Iterator[tuple[str, ...]]:
        for n, (s, sid, given, family, grade) in enumerate(students):
            login = f"{given.lower()}.{family.lower().replace(' ', '')}{n}"
            yield (
                sid,
                "",
                "",
                "true",
                schools[s],
                "student",
                login,
                f"{{SIS:{100000 + n}}}",
                given,
                family,
                "",
                str(100000 + n),
                f"{login}@students.rusd.example.org",
                "",
                "",
                ",".join(student_guardians[sid]),
                grade,
                "",
            )
        t = 0
        for s, teachers in enumerate(school_teachers):
            for tid in teachers:
                given, family = GIVEN[t % len(GIVEN)], FAMILY[(t * 7) % len(FAMILY)]
                login = f"{given[0].lower()}{family.lower().replace(' ', '')}{t}"
                yield (
                    tid,
                    "",
                    "",
                    "true",
                    schools[s],
                    "teacher",
                    login,
                    f"{{SIS:T{t}}}",
                    given,
                    family,
                    "",
                    f"T{t:05d}",
                    f"{login}@rusd.example.org",
                    "",
                    "",
                    "",
                    "",
                    "",
                )
                t += 1
        for children, guardians in families:
            for gid, role, given, family in guardians:
                login = f"{given.lower()}.{family.lower().replace(' ', '')}.{gid[4:]}"
                yield (
                    gid,
                    "",
                    "",
                    "true",
                    district,
                    role,
                    login,
                    "",
                    given,
                    family,
                    "",
                    "",
                    f"{login}@mail.example.org",
                    "",
                    f"555-{int(gid[4:]) % 10000:04d}",
                    ",".join(children),
                    "",
                    "",
                )

    n_users = writer.write("users", HEADERS["users"], user_rows())

    def enrollment_rows() -> Iterator[tuple[str, ...]]:
        e = 0
        by_school: list[list[tuple[int, str, str, str, str]]] = [[] for _ in schools]
        for st in students:
            by_school[st[0]].append(st)
        for s, mine in enumerate(school_classes):
            teachers = school_teachers[s]
            for j, (class_id, terms) in enumerate(mine):
                begin, end = TERM_DATES[terms]
                yield (
                    f"enr-{e:07d}",
                    "",
                    "",
                    class_id,
                    schools[s],
                    teachers[j % len(teachers)],
                    "teacher",
                    "true",
                    begin,
                    end,
                )
                e += 1
            m = len(mine)
            take = min(size.classes_per_student, m)
            for _s, sid, _g, _f, _gr in by_school[s]:
                start = rng.randrange(m)
                for k in range(take):
                    class_id, terms = mine[(start + k) % m]
                    begin, end = TERM_DATES[terms]
                    yield (f"enr-{e:07d}", "", "", class_id, schools[s], sid, "student", "false", begin, end)
                    e += 1

    n_enrollments = writer.write("enrollments", HEADERS["enrollments"], enrollment_rows())
    n_guardians = sum(len(g) for _, g in families)
    return DistrictStats(
        path=str(out),
        orgs=n_orgs,
        academic_sessions=n_sessions,
        courses=n_courses,
        classes=n_classes,
        students=len(students),
        teachers=size.teachers,
        guardians=n_guardians,
        users=n_users,
        enrollments=n_enrollments,
        guardian_links=sum(len(children) * len(g) for children, g in families),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Generate a district package from the command line and print its counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (or .zip file with --zip)")
    parser.add_argument("--scale", type=float, default=1.0, help="size relative to the benchmark district")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--zip", action="store_true", help="write one zip archive instead of a folder")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    stats = generate(args.out, scale=args.scale, seed=args.seed, as_zip=args.zip)
    elapsed = time.perf_counter() - started
    for key, value in asdict(stats).items():
        print(f"{key:>18}: {value:,}" if isinstance(value, int) else f"{key:>18}: {value}")
    print(f"{'seconds':>18}: {elapsed:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
