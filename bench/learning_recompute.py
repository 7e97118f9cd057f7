"""Recompute mastery, gates, pace, alerts and profiles for a synthetic district; check that time grows linearly.

    .venv/bin/python bench/learning_recompute.py                 # 5,000 then 50,000 students, one process per CPU
    .venv/bin/python bench/learning_recompute.py --students 500 5000 50000 --workers 1

Each size gets its own deterministic district: classes of 30, 20 modules in a prerequisite chain with 3
competencies each (60 per class, calculation methods mixed), every student somewhere between module 2 and 20
with 1 to 5 results on each competency reached (about 100 per student, 30% of them activity scores that
reach a competency through an alignment), mostly mastered before the current module. Generating it is not
timed. The first size is the baseline: every later size is printed as a ratio of its time and of its time per
student against it (linear growth means a time ratio equal to the size ratio, and a per-student ratio near 1).
With several workers each forked process builds and recomputes its own share of the classes, as a recompute
job would; CPU time is the sum over the workers and depends less than wall time on what else the machine
is doing.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugin.learning.alerts import Alert, AlertKind  # noqa: E402
from plugin.learning.gating import GateOverride, Module, OverrideKind  # noqa: E402
from plugin.learning.mastery import Competency, Evidence  # noqa: E402
from plugin.learning.pace import Accommodation, build_plan  # noqa: E402
from plugin.learning.recompute import ClassData, LearningSettings, recompute_class  # noqa: E402

CLASS_SIZE = 30
MODULES = 20
PER_MODULE = 3  # competencies per module → 60 per class
TERM_START = date(2025, 8, 25)
TERM_END = date(2026, 1, 23)
TODAY = date(2025, 11, 14)
NOW = datetime(2025, 11, 14, 18, 0, tzinfo=UTC)
METHODS: Sequence[tuple[str, int | None]] = (
    ("highest", None),
    ("latest", None),
    ("average", None),
    ("n_mastery", 2),
    ("decaying_average", 65),
    ("standard_decaying_average", 75),
)


@dataclass
class District:
    classes: list[ClassData]
    students: int
    evidence_rows: int


def class_count(students: int) -> int:
    """Return how many classes of ``CLASS_SIZE`` hold ``students`` students."""
    return -(-students // CLASS_SIZE)


def generate(students: int, seed: int = 4, *, share: tuple[int, int] = (0, 1)) -> District:
    """Build a deterministic synthetic district of ``students`` students.

    ``share=(w, n)`` builds only classes w, w + n, w + 2n, …: each class has its own random stream, so the
    shares of n workers together are exactly the whole district.
    """
    moments = [
        datetime(2025, 8, 25, 8, tzinfo=UTC) + timedelta(hours=3 * i, seconds=i % 60) for i in range(650)
    ]
    percents = [i / 20 for i in range(21)]
    classes: list[ClassData] = []
    rows_total = 0
    worker, workers = share
    for c in range(worker, class_count(students), workers):
        rng = random.Random(seed * 1_000_003 + c)
        class_id = f"c{c}"
        size = min(CLASS_SIZE, students - c * CLASS_SIZE)
        student_ids = tuple(f"{class_id}s{i}" for i in range(size))
        competencies = tuple(
            Competency(
                f"{class_id}k{k}",
                f"Skill {k}",
                points_possible=4.0,
                mastery_points=3.0,
                ratings=((4.0, "Exceeds"), (3.0, "Meets"), (2.0, "Near"), (0.0, "Below")),
                calculation_method=METHODS[k % len(METHODS)][0],
                calculation_int=METHODS[k % len(METHODS)][1],
            )
            for k in range(MODULES * PER_MODULE)
        )
        modules = tuple(
            Module(
                f"{class_id}m{m}",
                f"Module {m + 1}",
                m + 1,
                (f"{class_id}m{m - 1}",) if m else (),
                tuple(competencies[m * PER_MODULE + j].id for j in range(PER_MODULE)),
            )
            for m in range(MODULES)
        )
        alignments = {f"{class_id}a{k}": (competencies[k].id,) for k in range(0, len(competencies), 2)}
        evidence: dict[str, list[Evidence]] = {}
        overrides: list[GateOverride] = []
        accommodations: dict[str, Accommodation] = {}
        alerts: list[Alert] = []
        for student_id in student_ids:
            reached = rng.randint(2, MODULES)
            rows: list[Evidence] = []
            for k in range(reached * PER_MODULE):
                # modules before the current one were mostly mastered; the current one is in progress
                base = 0.6 + rng.random() * 0.4 if k // PER_MODULE < reached - 1 else rng.random()
                for _ in range(rng.randint(1, 5)):
                    percent = percents[min(20, max(0, int((base + rng.random() * 0.5) * 20)))]
                    moment = moments[rng.randrange(len(moments))]
                    if k % 2 == 0 and rng.random() < 0.3:
                        rows.append(
                            Evidence(student_id, None, percent * 10, percent, submitted_at=moment,
                                     activity_id=f"{class_id}a{k}")
                        )
                    else:
                        rows.append(Evidence(student_id, competencies[k].id, percent * 4, percent,
                                             submitted_at=moment))
            rows_total += len(rows)
            evidence[student_id] = rows
            roll = rng.random()
            if roll < 0.02:
                overrides.append(GateOverride(student_id, modules[reached - 1].id, OverrideKind.SHOWN_MASTERY))
            elif roll < 0.03:
                overrides.append(GateOverride(student_id, modules[1].id, OverrideKind.CLOSED_BY_TEACHER))
            if rng.random() < 0.05:
                accommodations[student_id] = Accommodation(student_id, extra_days=7, factor=1.25)
            if rng.random() < 0.2:
                alerts.append(Alert(student_id, class_id, AlertKind.BEHIND, 1, NOW - timedelta(days=9),
                                    NOW - timedelta(days=1), "1 module (3 days) behind the minimum pace"))
        plan = build_plan(class_id, TERM_START, TERM_END, [m.id for m in modules], skip_weekends=True)
        classes.append(
            ClassData(
                class_id=class_id,
                student_ids=student_ids,
                competencies=competencies,
                modules=modules,
                evidence=evidence,
                alignments=alignments,
                pace_plan=plan,
                accommodations=accommodations,
                overrides=tuple(overrides),
                open_alerts=tuple(alerts),
            )
        )
    return District(classes, sum(len(c.student_ids) for c in classes), rows_total)


def run(classes: Sequence[ClassData]) -> int:
    """Recompute every class; return a checksum so nothing is skipped."""
    settings = LearningSettings(new_decaying_average=True)
    checksum = 0
    for data in classes:
        result = recompute_class(data, today=TODAY, now=NOW, settings=settings)
        checksum += len(result.mastery) + len(result.alerts.to_open) + len(result.paths)
    return checksum


@dataclass
class Measurement:
    students: int
    classes: int
    evidence_rows: int
    generated: float  # seconds, longest worker
    wall: float
    cpu: float  # seconds, summed over workers


def measure(students: int, workers: int) -> Measurement:
    """Generate the district (untimed), then time its recompute with ``workers`` processes.

    With one worker everything runs here. With several, each forked worker builds its own share of classes
    (as a job loading each class from the store would), reports ready, waits for the start signal, recomputes
    its share and reports its CPU time; the wall time runs from the start signal to the last report.
    """
    if workers <= 1:
        started = time.perf_counter()
        district = generate(students)
        generated = time.perf_counter() - started
        gc.collect()
        gc.freeze()
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            run(district.classes)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            gc.unfreeze()
        return Measurement(students, len(district.classes), district.evidence_rows, generated, wall, cpu)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    pids = []
    for w in range(workers):
        pid = os.fork()
        if pid == 0:  # a worker: build its share, wait for the signal, recompute, report, exit
            status = 1
            try:
                started = time.perf_counter()
                share = generate(students, share=(w, workers))
                generated = time.perf_counter() - started
                gc.collect()
                gc.freeze()
                os.write(ready_w, b"r")
                os.read(go_r, 1)
                cpu = time.process_time()
                run(share.classes)
                cpu = time.process_time() - cpu
                report = f"{len(share.classes)} {share.evidence_rows} {generated} {cpu}\n".encode()
                os.write(done_w, report.ljust(128))
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    for _ in range(workers):
        os.read(ready_r, 1)
    wall = time.perf_counter()
    os.write(go_w, b"g" * workers)
    reports = [os.read(done_r, 128).decode().split() for _ in range(workers)]
    wall = time.perf_counter() - wall
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"worker {pid} failed with status {status}")
    for fd in (ready_r, ready_w, go_r, go_w, done_r, done_w):
        os.close(fd)
    return Measurement(
        students,
        sum(int(r[0]) for r in reports),
        sum(int(r[1]) for r in reports),
        max(float(r[2]) for r in reports),
        wall,
        sum(float(r[3]) for r in reports),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per CPU)")
    args = parser.parse_args(argv)
    baseline: Measurement | None = None
    print(
        f"workers={args.workers}  classes of {CLASS_SIZE}, {MODULES} modules, {MODULES * PER_MODULE} competencies; "
        f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    for students in args.students:
        m = measure(students, args.workers)
        line = (
            f"{students:>7} students {m.classes:>5} classes {m.evidence_rows:>9} results: "
            f"wall {m.wall:6.2f} s, CPU {m.cpu:6.2f} s ({m.cpu / students * 1e6:5.1f} µs CPU/student; "
            f"generated in {m.generated:.1f} s)"
        )
        if baseline is None:
            baseline = m
            line += " [baseline]"
        else:
            size = students / baseline.students
            line += (
                f" size ×{size:.1f} → wall ×{m.wall / baseline.wall:.2f}, CPU ×{m.cpu / baseline.cpu:.2f} "
                f"(CPU per student ×{m.cpu / baseline.cpu / size:.2f})"
            )
        print(line, flush=True)
        gc.collect()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
