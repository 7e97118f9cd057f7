"""OneRoster 1.1 CSV bulk import: Trailmark against the floor, in one run.

    python -m bench.oneroster_csv_import [--scale 1.0] [--seed 7] [--repeat 1] [--workdir DIR]

Generates the deterministic district (``bench.district_gen``), then measures, each in a fresh process so
the peak memory (RSS high-water mark) is the phase's own:

(a) the floor: ``csv.reader`` over the files plus one keyed ``executemany`` per file into a fresh SQLite
    database (one table per file, keyed by ``sourcedId``, same journal settings as Trailmark's store);
(b) Trailmark: the OneRoster CSV connector and the sync engine into a fresh migrated SQLite store;
(c) the identical second import into that store, which must write nothing and take no longer than (b).

It prints wall times, the ratio (b)/(a) (target ≤ 2.5×), peak RSS (target < 300 MB) and, for (c), the
number of data statements (INSERT/UPDATE/DELETE outside the run's own SyncRun and lease bookkeeping).

For the breakdown it also measures the parts of (b) that any import into this store has to do: the
connector's pull alone (reading and validating every row through its schema), and the rows (b) wrote, read
back and inserted again into a fresh store through the engine's own multi-row ``INSERT`` path — the canonical
rows, and apart from them the source's identity refs.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FILES = ("orgs", "academicSessions", "courses", "classes", "users", "enrollments")
ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far (steadier than wall time on a busy machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """The process's RSS high-water mark in MB (Linux reports KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --------------------------------------------------------------------------- phases (run in child processes)


def phase_floor(package: Path, db: Path) -> dict[str, Any]:
    """(a) csv.reader plus one keyed executemany per file."""
    started, cpu = time.perf_counter(), cpu_seconds()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    rows = 0
    for name in FILES:
        with open(package / f"{name}.csv", newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            columns = ", ".join(f'"{h}"' for h in header[1:])
            conn.execute(f'CREATE TABLE "{name}" ("sourcedId" TEXT PRIMARY KEY, {columns})')
            before = conn.total_changes
            conn.executemany(f'INSERT OR REPLACE INTO "{name}" VALUES ({", ".join("?" * len(header))})', reader)
            rows += conn.total_changes - before
        conn.commit()
    conn.close()
    return {"seconds": time.perf_counter() - started, "cpu": cpu_seconds() - cpu, "rss_mb": peak_rss_mb(),
            "rows": rows}


def phase_trailmark(package: Path, db: Path, *, second: bool) -> dict[str, Any]:
    """(b)/(c) the OneRoster CSV connector and the sync engine into the store at ``db``."""
    from sqlalchemy import event, select

    from connectors import sync
    from connectors.oneroster import OneRosterConnector
    from plugin.store import models
    from plugin.store.db import Store

    store = Store(f"sqlite:///{db}")
    with store.session() as session:
        district_id = session.scalars(select(models.District.id).where(models.District.slug == "bench")).one()
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split(None, 3)
        if words and words[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            table = (words[1] if words[0].upper() == "UPDATE" else words[2]).strip('"').lower()
            if table not in ("sync_run", "source"):
                statements.append(f"{words[0].upper()} {table}")

    event.listen(store.engine, "before_cursor_execute", count)
    started, cpu = time.perf_counter(), cpu_seconds()
    connector = OneRosterConnector.from_config({"name": "sis-csv", "kind": "oneroster-csv", "path": str(package)})
    result = sync.run_sync(store, district_id, connector.name, connector, now=datetime.now(UTC))
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    store.dispose()
    return {"seconds": seconds, "cpu": cpu, "rss_mb": peak_rss_mb(), "status": result.status, "message": result.message,
            "counts": result.counts, "errors": result.error_total, "data_statements": len(statements),
            "second": second}


def phase_connector(package: Path) -> dict[str, Any]:
    """For the breakdown: the connector's pull alone (no store)."""
    from connectors.oneroster import OneRosterConnector

    started, cpu = time.perf_counter(), cpu_seconds()
    connector = OneRosterConnector.from_config({"name": "sis-csv", "kind": "oneroster-csv", "path": str(package)})
    items = sum(1 for _ in connector.pull())
    return {"seconds": time.perf_counter() - started, "cpu": cpu_seconds() - cpu, "rss_mb": peak_rss_mb(),
            "items": items}


def phase_rows(source_db: Path, db: Path) -> dict[str, Any]:
    """For the breakdown: the rows the first import wrote, inserted again into the fresh store at ``db``."""
    from connectors.sync import KIND_ORDER, SPECS, _Sql
    from plugin.store.db import Store

    src = sqlite3.connect(source_db)
    tables = [SPECS[kind].table.name for kind in KIND_ORDER]
    data = {}
    for table in [*tables, "external_ref"]:
        columns = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
        data[table] = (columns, src.execute(f'SELECT * FROM "{table}" ORDER BY id').fetchall())
    src.close()
    store = Store(f"sqlite:///{db}")
    times = {}
    with store.bulk_session() as session:
        sql = _Sql(session)
        for group, names in (("canonical", tables), ("refs", ["external_ref"])):
            started = time.perf_counter()
            for table in names:
                columns, rows = data[table]
                sql.insert(table, columns, iter(rows), len(rows))
            times[group] = time.perf_counter() - started
        started = time.perf_counter()
    times["commit"] = time.perf_counter() - started
    store.dispose()
    return {"seconds": sum(times.values()), **times,
            "rows": {t: len(data[t][1]) for t in data if data[t][1]}}


# --------------------------------------------------------------------------- the store


def fresh_store(db: Path) -> list[str]:
    """Create a migrated store at ``db`` with one district; return the schema notes, if any."""
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.schema import CreateColumn

    from plugin.store import models
    from plugin.store.db import Store, upgrade

    url = f"sqlite:///{db}"
    upgrade(url)
    # Until the migrations are regenerated, bring the migrated schema to what the models declare.
    notes = []
    engine = create_engine(url)
    with engine.begin() as conn:
        insp = inspect(conn)
        for table in models.Base.metadata.sorted_tables:
            if not insp.has_table(table.name):
                table.create(conn)
                notes.append(f"created table {table.name}")
                continue
            present = {c["name"] for c in insp.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN "
                                         f"{CreateColumn(column).compile(dialect=conn.dialect)}")
                    notes.append(f"added column {table.name}.{column.name}")
            declared = {i.name for i in table.indexes}
            existing = {i["name"] for i in insp.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in existing:
                    index.create(conn)
                    notes.append(f"created index {index.name}")
            for name in existing - declared:
                if name and name.startswith("ix_"):
                    conn.exec_driver_sql(f'DROP INDEX "{name}"')
                    notes.append(f"dropped index {name}")
    engine.dispose()
    store = Store(url)
    with store.session() as session:
        session.add(models.District(slug="bench", name="Benchmark District", settings={},
                                    created_at=datetime.now(UTC)))
    store.dispose()
    return notes


def _remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.oneroster_csv_import", *args], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="measure each phase this many times (median)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--phase", choices=["floor", "first", "second", "connector", "rows"], help=argparse.SUPPRESS)
    parser.add_argument("--package", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--source-db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.phase:  # a child process measuring one phase
        if args.phase == "floor":
            out = phase_floor(args.package, args.db)
        elif args.phase == "connector":
            out = phase_connector(args.package)
        elif args.phase == "rows":
            out = phase_rows(args.source_db, args.db)
        else:
            out = phase_trailmark(args.package, args.db, second=args.phase == "second")
        print(json.dumps(out))
        return 0

    sys.path.insert(0, str(ROOT))
    from bench.district_gen import generate

    work = args.workdir or Path(tempfile.mkdtemp(prefix="trailmark-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    package = work / "package"
    started = time.perf_counter()
    stats = generate(package, scale=args.scale, seed=args.seed)
    print(f"district: {stats.students:,} students, {stats.teachers:,} teachers, {stats.guardians:,} guardians, "
          f"{stats.classes:,} classes, {stats.enrollments:,} enrollments, {stats.guardian_links:,} guardian links "
          f"(generated in {time.perf_counter() - started:.1f} s)")

    floors, firsts, seconds, pulls, replays = [], [], [], [], []
    notes: list[str] = []
    for _ in range(args.repeat):
        floor_db, store_db = work / "floor.db", work / "trailmark.db"
        _remove_db(floor_db)
        _remove_db(store_db)
        floors.append(_child("--phase", "floor", "--package", str(package), "--db", str(floor_db)))
        notes = fresh_store(store_db)
        firsts.append(_child("--phase", "first", "--package", str(package), "--db", str(store_db)))
        seconds.append(_child("--phase", "second", "--package", str(package), "--db", str(store_db)))
        pulls.append(_child("--phase", "connector", "--package", str(package)))
        replay_db = work / "replay.db"
        _remove_db(replay_db)
        fresh_store(replay_db)
        replays.append(_child("--phase", "rows", "--source-db", str(store_db), "--db", str(replay_db)))
    if notes:
        print("store: the migrations lag the models; before timing: " + "; ".join(notes))

    def med(runs: list[dict[str, Any]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    a, b, c, p = med(floors, "seconds"), med(firsts, "seconds"), med(seconds, "seconds"), med(pulls, "seconds")
    ca, cb, cc, cp = med(floors, "cpu"), med(firsts, "cpu"), med(seconds, "cpu"), med(pulls, "cpu")
    first, second = firsts[-1], seconds[-1]
    for label, run in (("first", first), ("second", second)):
        if run["status"] != "succeeded":
            print(f"{label} import {run['status']}: {run['message']}")
            return 1
    added = sum(c_.get("added", 0) for c_ in first["counts"].values())
    unchanged = sum(c_.get("unchanged", 0) for c_ in second["counts"].values())
    changed = sum(c_.get(k, 0) for c_ in second["counts"].values() for k in ("added", "updated", "tombstoned"))
    print(f"{'':42}{'wall':>8}  {'cpu':>8}  {'peak RSS':>9}")
    print(f"(a) floor: csv.reader + executemany    {a:8.2f} s {ca:8.2f} s {med(floors, 'rss_mb'):6.0f} MB   "
          f"{floors[-1]['rows']:,} rows")
    print(f"(b) Trailmark first import             {b:8.2f} s {cb:8.2f} s {med(firsts, 'rss_mb'):6.0f} MB   "
          f"{added:,} records added, {first['errors']} rejected")
    print(f"(c) Trailmark identical second import  {c:8.2f} s {cc:8.2f} s {med(seconds, 'rss_mb'):6.0f} MB   "
          f"{unchanged:,} unchanged, {changed} changed, {second['data_statements']} data statements")
    print(f"    the connector's pull alone         {p:8.2f} s {cp:8.2f} s {med(pulls, 'rss_mb'):6.0f} MB")
    rows_canonical, rows_refs, rows_commit = (med(replays, k) for k in ("canonical", "refs", "commit"))
    print(f"    (b)'s rows inserted again: canonical {rows_canonical:6.2f} s, identity refs {rows_refs:.2f} s, "
          f"commit {rows_commit:.2f} s")
    required = p + rows_canonical + rows_commit
    print(f"    pull + canonical rows + commit = {required:.2f} s = {required / a:.2f}× (a): what is left of the "
          f"2.5× budget for refs, fingerprints, parents, matching and bookkeeping: {max(2.5 * a - required, 0):.2f} s "
          f"(they take {b - required:.2f} s)")
    print(f"(b)/(a) = {b / a:.2f}× wall, {cb / ca:.2f}× cpu (target ≤ 2.5×);  (c)/(b) = {c / b:.2f} wall, "
          f"{cc / cb:.2f} cpu (target ≤ 1);  peak RSS {max(med(firsts, 'rss_mb'), med(seconds, 'rss_mb')):.0f} MB "
          f"(target < 300 MB);  second import writes nothing: "
          f"{'yes' if second['data_statements'] == 0 and changed == 0 else 'NO'}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
