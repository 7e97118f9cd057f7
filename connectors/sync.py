"""The sync engine: diff a connector's stream against the store and apply it in one transaction.

A run consumes ``connector.pull(scope, since)`` as a stream (validation and translation already happened in
the connector) and, batch by batch (5,000 records):

1. maps each record's source id to its canonical row through ``ExternalRef(kind, namespace=<source name>,
   external_id)`` — one ``SELECT … IN`` per batch and kind (in a source's first import, a Bloom filter over
   the ids applied so far replaces the lookup: only possible repeats are looked up);
2. skips records whose fingerprint (a hash of the record's fields) matches the one stored on the ref, so an
   identical second run reads but writes nothing;
3. resolves parents (class → course, enrollment → class + person, …) in bulk through the same refs, with a
   bounded in-memory cache of the parents it has seen;
4. matches records the source has never sent before to rows other sources wrote: people by ``sis_id`` and
   then the district's ``match_on`` keys, classes and courses by ``sis_id``, enrollments, guardian links,
   alignments and results by their natural key. Two candidates, or a role clash, is a conflict: reported and
   skipped, never guessed;
5. writes new rows and refs with multi-row ``INSERT`` statements (``COPY`` on PostgreSQL) and changed rows
   with one ``executemany`` per table; ids are allocated up front, so nothing is read back. On SQLite the
   refs of the rows a batch inserted are copied from those rows by one ``INSERT … SELECT`` (their
   fingerprints bound as one blob) instead of binding nine parameters per ref.

Removals are tombstones (``status = "tobedeleted"``), never deletes. A ``Complete(kind, within)`` marker says
a listing was whole; at the end of the stream, refs of that kind (within that parent) that the run did not
mention are tombstoned, and the canonical row with them unless another source still references it. Which
refs a run mentioned is kept as one byte per ``external_ref.id`` (1 MB per million refs) rather than as a
set of ids or a temporary table: memory stays bounded by the batch, the parent cache and that array, never
by the district's records, and the check needs no extra writes. A run that would tombstone more than
``max_removal_share`` of the source's active refs of any kind stops, applies nothing and asks for
confirmation.

Everything — rows, refs, tombstones, the advanced delta watermark and the ``SyncRun`` outcome — commits in
one transaction; a pull that raises part-way rolls it all back. The run's ``SyncRun`` row is created (and a
failure recorded) in separate short transactions, and a lease on the ``source`` row keeps two processes
from syncing one source at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import logging
import marshal
import os
import socket
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Boolean, Date, DateTime, Float, and_, or_, select, update
from sqlalchemy.orm import Session

from connectors.base import (
    ACTIVE,
    RECORD_KINDS,
    TOBEDELETED,
    Capability,
    Complete,
    Connector,
    ConnectorError,
    Rejected,
    Scope,
    Tombstone,
)
from plugin.store import models
from plugin.store.db import Store

log = logging.getLogger("trailmark.sync")

BATCH_SIZE = 5000
PARENT_CACHE_LIMIT = 300_000  # parent ids kept in memory per run (~50 MB at most)
ERROR_LIMIT = 200  # rejections and conflicts kept on the SyncRun row; the rest are counted
LEASE_TTL = timedelta(hours=1)
PAUSE_FIRST = timedelta(minutes=1)
PAUSE_MAX = timedelta(hours=1)
FINGERPRINT_VERSION = 1  # bump when the record → row mapping changes, to rewrite every row once

ERASED = "erased"  # refs of what was erased on request (plugin/privacy.py): reported, never imported again
SUCCEEDED = "succeeded"
FAILED = "failed"
NEEDS_CONFIRM = "needs_confirm"
SKIPPED = "skipped"
RUNNING = "running"

COUNT_FIELDS = ("added", "updated", "unchanged", "tombstoned", "rejected")

_INSERT_HEAD = ("id", "district_id", "sourced_id", "status", "updated_at")
_REF_COLUMNS = ("id", "district_id", "kind", "namespace", "external_id", "entity_id", "fingerprint", "status",
                "last_seen_run_id")
_FP_WIDTH = 21  # a fingerprint (20 hex digits) and room for the PARTIAL mark

# Kinds in the order a batch applies them: every parent kind before its children.
KIND_ORDER = ("org", "academic_session", "course", "class", "person", "enrollment", "guardian_link", "module",
              "activity", "competency", "alignment", "result")
SCOPE_KINDS: Mapping[Scope, frozenset[str]] = {
    Scope.ROSTER: frozenset({"org", "academic_session", "course", "class", "person", "enrollment",
                             "guardian_link"}),
    Scope.CONTENT: frozenset({"module", "activity", "competency", "alignment"}),
    Scope.PROGRESS: frozenset({"result"}),
}
SCOPE_CAPABILITY: Mapping[Scope, Capability] = {
    Scope.ROSTER: Capability.READ_ROSTER,
    Scope.CONTENT: Capability.READ_CONTENT,
    Scope.PROGRESS: Capability.READ_PROGRESS,
}

OnApplied = Callable[[Session, int, frozenset[int]], None]
Progress = Callable[[int], None]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class SyncRunResult:
    """What a run did (or would have done), as recorded on its ``SyncRun`` row."""

    status: str  # succeeded | failed | needs_confirm | skipped
    source: str
    run_id: int | None = None
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    errors: Sequence[Mapping[str, Any]] = ()
    error_total: int = 0
    message: str = ""
    removals: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # kind → (would tombstone, active)
    dry_run: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCEEDED

    def total(self, what: str) -> int:
        """Sum one count (added, updated, …) over all record kinds."""
        return sum(c.get(what, 0) for c in self.counts.values())


class NeedsConfirm(Exception):
    """The run would tombstone more than the allowed share of a source; nothing was applied."""

    def __init__(self, message: str, removals: Mapping[str, tuple[int, int]]):
        super().__init__(message)
        self.removals = dict(removals)


class MissingReference(Exception):
    """A record would reference a row that does not exist (a foreign key the engine checked); nothing was applied."""


# --------------------------------------------------------------------------- record → row mapping


@dataclass(frozen=True, slots=True)
class _Parent:
    """A reference from a record to a parent record of the same source."""

    attr: str  # the record field holding the parent's sourced id (or ids)
    kind: str
    required: bool = False
    many: str = "one"  # one | first (first of a tuple) | all (a tuple → a list of ids)


@dataclass(frozen=True, slots=True)
class _Natural:
    """A natural key that recognises the same row written by another source (e.g. an enrollment)."""

    lookup: str  # the indexed column to query candidates by
    key: tuple[str, ...]  # the columns that must all match


@dataclass(frozen=True, slots=True)
class _Const:
    """A column value that is the same for every row."""

    value: Any


Source = str | int | _Const | Callable[[Any], Any]  # record attribute | parent index | constant | f(record)


@dataclass(frozen=True)
class _Spec:
    kind: str
    model: type[models.Base]
    # canonical columns (besides id, district_id, sourced_id, status, updated_at) and where each comes from
    fill: tuple[tuple[str, Source], ...]
    parents: tuple[_Parent, ...] = ()
    match: str | None = None  # person | sis
    natural: _Natural | None = None
    check: Callable[[Any], tuple[str, str] | None] | None = None  # extra rule → (field, reason)
    within: Mapping[str, str] = field(default_factory=dict)  # parent kind of a Complete → column

    @property
    def table(self) -> Any:
        return self.model.__table__  # type: ignore[attr-defined]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fill)

    def column_index(self, name: str) -> int:
        return self.columns.index(name)


def _same(*names: str) -> tuple[tuple[str, Source], ...]:
    """Columns filled from the record attributes of the same names."""
    return tuple((n, n) for n in names)


def _result_check(r: Any) -> tuple[str, str] | None:
    if not r.activity_sourced_id and not r.competency_sourced_id:
        return "activity_sourced_id", "a result needs an activity or a competency"
    return None


def _ratings(r: Any) -> list[list[Any]]:
    return [list(x) for x in r.ratings]


def _access_conditions(r: Any) -> list[list[Any]]:
    return [[title, [list(c) for c in conditions]] for title, conditions in r.access_conditions]


SPECS: Mapping[str, _Spec] = {
    s.kind: s
    for s in (
        _Spec("org", models.Org, (*_same("name", "type", "identifier"), ("parent_id", 0)),
              parents=(_Parent("parent_sourced_id", "org"),), within={"org": "parent_id"}),
        _Spec("academic_session", models.AcademicSession,
              (*_same("title", "type", "start_date", "end_date"), ("parent_id", 0), ("school_year", "school_year")),
              parents=(_Parent("parent_sourced_id", "academic_session"),),
              within={"academic_session": "parent_id"}),
        _Spec("course", models.Course, (*_same("title", "course_code", "sis_id"), ("org_id", 0)),
              parents=(_Parent("org_sourced_id", "org"),), match="sis", within={"org": "org_id"}),
        _Spec("class", models.Class,
              (*_same("title", "class_code", "sis_id", "lti_context_id"), ("course_id", 0), ("school_id", 1),
               ("term_id", 2)),
              parents=(_Parent("course_sourced_id", "course"), _Parent("school_sourced_id", "org"),
                       _Parent("term_sourced_ids", "academic_session", many="first")),
              match="sis", within={"course": "course_id", "org": "school_id"}),
        _Spec("person", models.Person,
              _same("role", "given_name", "family_name", "email", "username", "sis_id", "enabled"),
              match="person"),
        _Spec("enrollment", models.Enrollment,
              (("class_id", 0), ("person_id", 1), *_same("role", "primary", "begin_date", "end_date")),
              parents=(_Parent("class_sourced_id", "class", required=True),
                       _Parent("person_sourced_id", "person", required=True)),
              natural=_Natural("person_id", ("class_id", "person_id", "role")),
              within={"class": "class_id", "person": "person_id"}),
        _Spec("guardian_link", models.GuardianLink, (("guardian_id", 0), ("student_id", 1), ("relation", "relation")),
              parents=(_Parent("guardian_sourced_id", "person", required=True),
                       _Parent("student_sourced_id", "person", required=True)),
              natural=_Natural("student_id", ("guardian_id", "student_id")),
              within={"person": "student_id"}),
        _Spec("module", models.Module,
              (("class_id", 0), *_same("title", "position"), ("prerequisite_ids", 1), ("published", "published"),
               ("access_conditions", _access_conditions)),
              parents=(_Parent("class_sourced_id", "class", required=True),
                       _Parent("prerequisite_sourced_ids", "module", many="all")),
              within={"class": "class_id"}),
        _Spec("activity", models.Activity,
              (("class_id", 0), ("module_id", 1), *_same("title", "score_maximum", "due_at", "category")),
              parents=(_Parent("class_sourced_id", "class", required=True),
                       _Parent("module_sourced_id", "module")),
              within={"class": "class_id", "module": "module_id"}),
        _Spec("competency", models.Competency,
              (("class_id", 0), *_same("title", "description", "points_possible", "mastery_points"),
               ("ratings", _ratings), *_same("calculation_method", "calculation_int")),
              parents=(_Parent("class_sourced_id", "class"),), within={"class": "class_id"}),
        _Spec("alignment", models.Alignment, (("activity_id", 0), ("competency_id", 1)),
              parents=(_Parent("activity_sourced_id", "activity", required=True),
                       _Parent("competency_sourced_id", "competency", required=True)),
              natural=_Natural("activity_id", ("activity_id", "competency_id")),
              within={"activity": "activity_id", "competency": "competency_id"}),
        _Spec("result", models.Result,
              (("person_id", 0), ("activity_id", 1), ("competency_id", 2),
               *_same("score", "score_maximum", "scored_at", "score_status", "comment"),
               ("origin", _Const("sync"))),
              parents=(_Parent("person_sourced_id", "person", required=True),
                       _Parent("activity_sourced_id", "activity"),
                       _Parent("competency_sourced_id", "competency")),
              natural=_Natural("person_id", ("person_id", "activity_id", "competency_id")),
              check=_result_check, within={"activity": "activity_id", "person": "person_id",
                                           "competency": "competency_id"}),
    )
}
# The parent a Complete marker refers to when it names none.
DEFAULT_WITHIN = {"enrollment": "class", "module": "class", "activity": "class", "competency": "class",
                  "alignment": "activity", "result": "activity", "guardian_link": "person", "class": "course",
                  "course": "org", "org": "org", "academic_session": "academic_session"}
# Keys other sources rely on to recognise a row: a source that does not know them leaves them alone.
KEEP_WHEN_NULL = frozenset({"sis_id", "email", "username", "lti_context_id"})
PARENT_KINDS = frozenset(p.kind for s in SPECS.values() for p in s.parents)
_CLASS_COLUMN_KINDS = ("enrollment", "module", "activity", "competency")


def _foreign_keys(spec: _Spec) -> tuple[tuple[int, str], ...]:
    """Return (column index, referenced table) for each foreign key among the spec's columns."""
    return tuple((i, fk.column.table.name) for i, name in enumerate(spec.columns)
                 for fk in spec.table.c[name].foreign_keys)


FOREIGN_KEYS: Mapping[str, tuple[tuple[int, str], ...]] = {kind: _foreign_keys(spec) for kind, spec in SPECS.items()}

# Roles that may be one person: a clash between groups is a conflict, not a match.
ROLE_GROUPS = {"student": "learner", "teacher": "staff", "aide": "staff", "administrator": "staff",
               "proctor": "staff", "parent": "family", "guardian": "family", "relative": "family"}


def _columns(spec: _Spec, records: Sequence[Any], resolved: Mapping[int, Mapping[str, int]],
             procs: Mapping[int, Callable[[Any], Any]]) -> tuple[list[Sequence[Any]], set[int]]:
    """Build the column values of ``records`` (bound for the driver) and the rows with an unfound parent.

    Columnar on purpose: ``map`` and ``zip`` run in C, so a batch costs a few passes, not a call per field.
    """
    parents: list[list[Any]] = []
    partial: set[int] = set()
    for i, p in enumerate(spec.parents):
        found = resolved.get(i, {})
        given = list(map(attrgetter(p.attr), records))
        if p.many == "all":
            ids = [[found[x] for x in v if x in found] for v in given]
            partial.update(j for j, (v, e) in enumerate(zip(given, ids, strict=True)) if len(v) != len(e))
        else:
            if p.many == "first":
                given = [v[0] if v else None for v in given]
            ids = list(map(found.get, given))
            if None in ids:
                partial.update(j for j, (v, e) in enumerate(zip(given, ids, strict=True)) if v and e is None)
        parents.append(ids)
    n = len(records)
    cols: list[Sequence[Any]] = []
    for c, (_name, source) in enumerate(spec.fill):
        col: Sequence[Any]
        if isinstance(source, str):
            col = list(map(attrgetter(source), records))
        elif isinstance(source, int):
            col = parents[source]
        elif isinstance(source, _Const):
            col = [source.value] * n
        else:
            col = list(map(source, records))
        proc = procs.get(c)
        if proc is not None:
            col = list(map(proc, col))
        cols.append(col)
    return cols, partial


# --------------------------------------------------------------------------- fingerprints


def _fingerprinter(cls: type) -> Callable[[Any], str]:
    """Build a fast, stable hash of a record's fields (marshal v2 has no object back-references).

    The function is generated per record class, as ``dataclasses`` generates ``__init__``: one expression
    reading every field, dates as ordinals and datetimes as ISO text (marshal takes neither).
    """
    parts = []
    for f in fields(cls):
        hint = str(f.type)
        if "datetime" in hint:
            parts.append(f"None if r.{f.name} is None else r.{f.name}.isoformat()")
        elif "date" in hint:
            parts.append(f"None if r.{f.name} is None else r.{f.name}.toordinal()")
        else:
            parts.append(f"r.{f.name}")
    source = ("def fingerprint(r):\n"
              f"    return _sha1(_prefix + _dumps(({', '.join(parts)},), 2)).hexdigest()[:20]\n")
    namespace: dict[str, Any] = {"_sha1": hashlib.sha1, "_dumps": marshal.dumps,
                                 "_prefix": f"{FINGERPRINT_VERSION}:{cls.__name__}:".encode()}
    exec(compile(source, f"<fingerprint {cls.__name__}>", "exec"), namespace)  # noqa: S102 - generated above
    return namespace["fingerprint"]  # type: ignore[no-any-return]


FINGERPRINTS: Mapping[type, Callable[[Any], str]] = {cls: _fingerprinter(cls) for cls in RECORD_KINDS}
PARTIAL = "~"  # suffix of a fingerprint whose optional parents were not all found: retried next run
_SOURCED_ID = attrgetter("sourced_id")
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


# --------------------------------------------------------------------------- raw SQL on the session


class _Sql:
    """Batched statements on the run's session connection (SQLite and PostgreSQL)."""

    def __init__(self, session: Session):
        self.session = session
        self.conn = session.connection()
        self.dbapi = self.conn.connection.driver_connection  # reads only; writes go through SQLAlchemy
        self.dialect = self.conn.dialect
        self.pg = self.dialect.name == "postgresql"
        self.quote = self.dialect.identifier_preparer.quote
        # one statement carries many rows: far fewer round trips (and, on SQLite, per-row binding) than executemany
        self.max_params = 30_000
        self._next_id: dict[str, int] = {}
        self.first_id: dict[str, int] = {}  # SQLite: the first id this run allocated per table (the rest follow)
        self._locked = False
        self._sequences: dict[str, str] = {}
        self._values_sql: dict[tuple[str, int], str] = {}
        self.inserted: dict[str, int] = defaultdict(int)  # rows this run inserted, per table, since analyzed
        self._estimates: dict[str, float] = {}

    def sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.pg else text

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read on the transaction's own DBAPI connection and return plain tuples (no Row objects)."""
        cursor = self.dbapi.cursor()
        try:
            cursor.execute(self.sql(text), tuple(params))
            return cursor.fetchall()  # type: ignore[no-any-return]
        finally:
            cursor.close()

    def scalar(self, text: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.exec_driver_sql(self.sql(text), tuple(params)).scalar()

    def stream(self, text: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Yield rows without holding the whole result (a server-side cursor on PostgreSQL)."""
        opts = {"stream_results": True, "max_row_buffer": 20_000} if self.pg else {}
        with self.conn.exec_driver_sql(self.sql(text), tuple(params), execution_options=opts) as result:
            while chunk := result.fetchmany(20_000):
                yield from chunk  # type: ignore[misc]

    def rows_in(self, select: str, where: str, params: Sequence[Any], column: str, values: Iterable[Any], *,
                type_: str = "text", chunk: int = 10_000) -> Iterator[tuple[Any, ...]]:
        """Run ``select … WHERE where AND column IN values`` (``= ANY(array)`` on PostgreSQL), in chunks."""
        values = list(dict.fromkeys(values))
        for start in range(0, len(values), chunk):
            part = values[start:start + chunk]
            if self.pg:
                cond = f"{column} = ANY(CAST(? AS {type_}[]))"
                yield from self.rows(f"{select} WHERE {where} AND {cond}" if where else f"{select} WHERE {cond}",
                                     (*params, part))
            else:
                cond = f"{column} IN ({','.join('?' * len(part))})"
                yield from self.rows(f"{select} WHERE {where} AND {cond}" if where else f"{select} WHERE {cond}",
                                     (*params, *part))

    def watch_statistics(self, tables: Iterable[str]) -> None:
        """PostgreSQL: analyze tables never analyzed, and remember each table's row estimate."""
        if not self.pg:
            return
        for name, estimate in self.rows("SELECT relname, reltuples FROM pg_class WHERE relkind = 'r'"
                                        " AND relname = ANY(CAST(? AS text[]))", (list(tables),)):
            if estimate < 0:
                self.execute(f"ANALYZE {self.quote(name)}")
                estimate = self.scalar("SELECT reltuples FROM pg_class WHERE relname = ? AND relkind = 'r'",
                                       (name,))
            self._estimates[name] = max(float(estimate), 0.0)

    def refresh_statistics(self) -> None:
        """PostgreSQL: re-analyze a table once this run has grown it past its last estimate.

        Keyed lookups only stay index lookups if the planner knows how big the table is; statistics from
        before a bulk import (or from early in it) make ``= ANY(…)`` read the whole key range per batch.
        ``ANALYZE`` in the run's transaction sees the rows it inserted; doubling keeps it to a few per table.
        """
        if not self.pg:
            return
        for name, added in list(self.inserted.items()):
            estimate = self._estimates.get(name, 0.0)
            if added >= max(5_000, estimate):
                self.execute(f"ANALYZE {self.quote(name)}")
                self._estimates[name] = estimate + added
                self.inserted[name] = 0

    def execute(self, text: str, params: Sequence[Any] = ()) -> int:
        return self.conn.exec_driver_sql(self.sql(text), tuple(params)).rowcount

    def executemany(self, text: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.conn.exec_driver_sql(self.sql(text), rows)

    def insert(self, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]], n: int) -> None:
        """Insert the ``n`` ``rows``: multi-row ``VALUES`` statements on SQLite, ``COPY`` on PostgreSQL."""
        if not n:
            return
        self.inserted[table] += n
        if self.pg:  # COPY: several times faster than any INSERT form through psycopg
            names = ", ".join(self.quote(c) for c in columns)
            with self.dbapi.cursor() as cursor, cursor.copy(f"COPY {self.quote(table)} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        width = len(columns)
        per = max(1, min(1000, self.max_params // width))
        head = f"INSERT INTO {self.quote(table)} ({', '.join(self.quote(c) for c in columns)}) VALUES "
        one = "(" + ", ".join(["?"] * width) + ")"
        flat = itertools.chain.from_iterable(rows)  # the parameters of every row, in order, never a list of rows
        for start in range(0, n, per):
            size = min(per, n - start)
            key = (head, size)
            text = self._values_sql.get(key)
            if text is None:
                text = self._values_sql[key] = head + ", ".join([one] * size)
            self.conn.exec_driver_sql(text, tuple(itertools.islice(flat, size * width)))

    def update_sql(self, table: str, columns: Sequence[str], keep: Iterable[str] = ()) -> str:
        """``UPDATE … WHERE id = ?``; columns in ``keep`` keep their value when given NULL."""
        keep = set(keep)
        sets = ", ".join(f"{self.quote(c)} = COALESCE(?, {self.quote(c)})" if c in keep
                         else f"{self.quote(c)} = ?" for c in columns)
        return f"UPDATE {self.quote(table)} SET {sets} WHERE id = ?"

    def lock(self, source_id: int) -> None:
        """SQLite: take the database's write lock now (a no-op write), so that no other process writes until commit.

        SQLite has one writer: from here on, what this transaction reads (``max(id)``, whether a table is empty)
        cannot change under it.
        """
        if not self.pg and not self._locked:
            self.execute("UPDATE source SET lock_expires_at = lock_expires_at WHERE id = ?", (source_id,))
            self._locked = True

    def allocate(self, table: str, n: int, *, lock_source_id: int) -> range | list[int]:
        """Reserve ``n`` primary keys of ``table`` for rows this transaction is about to insert."""
        if n == 0:
            return []
        if self.pg:
            seq = self._sequences.get(table)
            if seq is None:
                seq = self._sequences[table] = self.scalar("SELECT pg_get_serial_sequence(?, 'id')", (table,))
            return [r[0] for r in self.rows("SELECT nextval(CAST(? AS regclass)) FROM generate_series(1, ?)",
                                            (seq, n))]
        self.lock(lock_source_id)
        start = self._next_id.get(table)
        if start is None:
            start = self.first_id[table] = (self.scalar(f"SELECT max(id) FROM {self.quote(table)}") or 0) + 1
        self._next_id[table] = start + n
        return range(start, start + n)


class _Seen:
    """Which refs a run mentioned: one byte per ``external_ref.id`` (1 MB per million refs)."""

    def __init__(self) -> None:
        self.flags = bytearray(1 << 16)

    def ensure(self, top: int) -> bytearray:
        if top >= len(self.flags):
            self.flags.extend(bytes(max(top + 1 - len(self.flags), len(self.flags))))
        return self.flags

    def __contains__(self, ref_id: int) -> bool:
        return ref_id < len(self.flags) and self.flags[ref_id] == 1


class _Bloom:
    """A one-probe Bloom filter, one byte per slot (16 MB), over keys a run has applied.

    Where the store held nothing of a kind when the run started (a first import), only keys this run may
    already have applied need a lookup. A whole batch is tested and added in C (``map`` over the filter's
    own methods); a false positive (about n / 2**24 of them) costs one needless lookup, never a wrong answer.
    """

    def __init__(self, slots: int = 1 << 24) -> None:
        self.mask = slots - 1
        self.flags = bytearray(slots)

    def maybe_seen(self, tag: str, keys: Sequence[str]) -> list[str]:
        """Add ``keys`` to the set named ``tag``; return those that may have been added to it before."""
        slots = list(map(self.mask.__and__, map(hash(tag).__xor__, map(hash, keys))))
        found = bytes(map(self.flags.__getitem__, slots))
        deque(map(self.flags.__setitem__, slots, itertools.repeat(1)), maxlen=0)
        return list(itertools.compress(keys, found)) if 1 in found else []


def _fast_processor(col_type: Any, dialect: Any) -> Callable[[Any], Any] | None:
    """Return the bind conversion SQLAlchemy would apply (a quicker one for SQLite dates)."""
    if isinstance(col_type, (Boolean, Float)):
        return None  # both drivers take Python bools and floats as they are
    if dialect.name == "sqlite":
        if isinstance(col_type, DateTime):
            # SQLAlchemy's SQLite storage format: "YYYY-MM-DD HH:MM:SS.ffffff", the offset dropped
            # (not memoised: datetimes equal across time zones would share one text)
            return lambda v: None if v is None else v.isoformat(" ", "microseconds")[:26]
        if isinstance(col_type, Date):
            return _Memo(date.isoformat).__getitem__
    return col_type.dialect_impl(dialect).bind_processor(dialect)


class _Memo(dict[Any, Any]):
    """``convert(value)`` remembered per value (a district has few distinct dates); None stays None.

    Its ``__getitem__`` is the processor: a hit costs one lookup in C instead of a Python call.
    """

    def __init__(self, convert: Callable[[Any], Any], limit: int = 50_000) -> None:
        super().__init__()
        self.convert = convert
        self.limit = limit

    def __missing__(self, value: Any) -> Any:
        if len(self) >= self.limit:
            self.clear()
        out = self[value] = None if value is None else self.convert(value)
        return out


# --------------------------------------------------------------------------- one run


class _Apply:
    """The state of one run inside its transaction."""

    def __init__(self, session: Session, *, district_id: int, source: models.Source, run_id: int,
                 now: datetime, match_on: Sequence[str], batch_size: int, progress: Progress | None,
                 track_classes: bool, heartbeat: Callable[[], None] | None = None, erasures: Any = None):
        self.sql = _Sql(session)
        self.district_id = district_id
        # plugin.privacy's erasure list: asked about the people a batch would create (None: not configured)
        self.erased = erasures.checker(self.sql.conn, district_id) if erasures is not None else None
        self.source_id = source.id
        self.ns = source.name
        self.run_id = run_id
        self.now = now
        self.match_on = [k for k in match_on if k in ("email", "username")]
        self.batch_size = batch_size
        self.progress = progress
        self.track_classes = track_classes
        self.heartbeat = heartbeat
        self.counts: dict[str, dict[str, int]] = {}
        self.errors: list[dict[str, Any]] = []
        self.error_total = 0
        self.seen = _Seen()
        self.seen_active: dict[str, int] = defaultdict(int)  # mentioned refs left active, per kind
        self.added_refs: dict[str, int] = defaultdict(int)
        self.reactivated: dict[str, int] = defaultdict(int)
        self.cache: dict[str, dict[str, int]] = defaultdict(dict)
        self.cache_size = 0
        self.fresh: dict[str, bool] = {}
        self.bloom: _Bloom | None = None
        self.empty_tables: dict[str, bool] = {}  # kind → its table had no rows of the district when the run began
        self.completes: dict[tuple[str, str | None], set[str | None]] = defaultdict(set)
        self.tombstone_ids: dict[str, list[str]] = defaultdict(list)
        self.mentioned: dict[str, list[str]] = defaultdict(list)
        self.other_sources: dict[str, bool] = {}
        self.changed_classes: set[int] = set()
        self.changed_activities: set[int] = set()
        self.tombstoned_entities: dict[str, list[int]] = defaultdict(list)
        self.removals: dict[str, tuple[int, int]] = {}
        self.changed_ids: frozenset[int] = frozenset()
        self._active: dict[str, int] = {}
        # SQLite runs without per-row foreign-key checks (Store.bulk_session): the engine checks the references
        # it writes to rows it did not create itself, once per batch
        self.fk_unchecked = self.sql.dialect.name == "sqlite" and not self.sql.scalar("PRAGMA foreign_keys")
        self.unverified: dict[str, set[int]] = defaultdict(set)  # parent table → ids to check before commit
        self.district_checked = False
        self.sql.watch_statistics(["external_ref", *(spec.table.name for spec in SPECS.values())])
        self._prepare_statements()

    def _prepare_statements(self) -> None:
        sql, dialect = self.sql, self.sql.dialect
        self.procs: dict[str, dict[int, Callable[[Any], Any]]] = {}
        self.update_stmts: dict[str, str] = {}
        now_proc = _fast_processor(models.Person.__table__.c.updated_at.type, dialect)
        self.now_bound = now_proc(self.now) if now_proc else self.now
        for kind, spec in SPECS.items():
            table = spec.table
            procs = {}
            for i, name in enumerate(spec.columns):
                proc = _fast_processor(table.c[name].type, dialect)
                if proc is not None:
                    procs[i] = proc
            self.procs[kind] = procs
            self.update_stmts[kind] = sql.update_sql(table.name, ("status", "updated_at", *spec.columns),
                                                     keep=KEEP_WHEN_NULL)
        self.ref_update = sql.update_sql("external_ref", ("fingerprint", "status", "last_seen_run_id"))

    # ----------------------------------------------------------------- bookkeeping

    def count(self, kind: str, what: str, n: int = 1) -> None:
        c = self.counts.get(kind)
        if c is None:
            c = self.counts[kind] = dict.fromkeys(COUNT_FIELDS, 0)
        c[what] = c.get(what, 0) + n

    def error(self, kind: str, record_id: str | None, fld: str | None, reason: str, *,
              type_: str = "rejected") -> None:
        self.count(kind, "rejected")
        self.error_total += 1
        if len(self.errors) < ERROR_LIMIT:
            self.errors.append({"type": type_, "source": self.ns, "kind": kind, "record_id": record_id,
                                "field": fld, "reason": reason})

    def mark_seen(self, kind: str, ref_ids: Iterable[int], *, active: Iterable[bool] | None = None) -> None:
        """Flag refs as mentioned by this run; count those that stay active."""
        if isinstance(ref_ids, range) and ref_ids.step == 1 and active is None:  # refs this run just inserted
            if ref_ids:
                flags = self.seen.ensure(ref_ids.stop - 1)
                self.seen_active[kind] += flags.count(0, ref_ids.start, ref_ids.stop)
                flags[ref_ids.start:ref_ids.stop] = b"\x01" * len(ref_ids)
            return
        ids = list(ref_ids)
        if not ids:
            return
        flags = self.seen.ensure(max(ids))
        if active is None and len(set(ids)) == len(ids):  # the common case, in C
            before = bytes(map(flags.__getitem__, ids))
            deque(map(flags.__setitem__, ids, itertools.repeat(1)), maxlen=0)
            self.seen_active[kind] += before.count(0)
            return
        fresh = 0
        for i, ref_id in enumerate(ids):
            if not flags[ref_id]:
                flags[ref_id] = 1
                if active is None or active[i]:  # type: ignore[index]
                    fresh += 1
        self.seen_active[kind] += fresh

    def remember(self, kind: str, pairs: Iterable[tuple[str, int]]) -> None:
        """Keep parent ids for the rest of the run, up to PARENT_CACHE_LIMIT."""
        if kind not in PARENT_KINDS or self.cache_size >= PARENT_CACHE_LIMIT:
            return
        bucket = self.cache[kind]
        before = len(bucket)
        bucket.update(pairs)
        self.cache_size += len(bucket) - before

    # ----------------------------------------------------------------- the stream

    def consume(self, items: Iterable[Any]) -> None:
        """Apply the stream batch by batch."""
        buffer: dict[str, list[Any]] = defaultdict(list)
        pending = consumed = 0
        kinds = RECORD_KINDS
        for item in items:
            consumed += 1
            kind = kinds.get(type(item))
            if kind is not None:
                if item.status != ACTIVE:
                    self.tombstone_ids[kind].append(item.sourced_id)
                    continue
                buffer[kind].append(item)
                pending += 1
                if pending >= self.batch_size:
                    self.flush(buffer)
                    buffer.clear()
                    pending = 0
                    if self.progress:
                        self.progress(consumed)
                        consumed = 0
                    if self.heartbeat:
                        self.heartbeat()
            elif isinstance(item, Complete):
                within_kind = item.within_kind or (DEFAULT_WITHIN.get(item.kind) if item.within else None)
                self.completes[(item.kind, within_kind if item.within is not None else None)].add(item.within)
            elif isinstance(item, Tombstone):
                self.tombstone_ids[item.kind].append(item.sourced_id)
            elif isinstance(item, Rejected):
                self.error(item.kind, item.record_id, item.field, item.reason)
                if item.record_id:
                    self.mentioned[item.kind].append(item.record_id)
            else:
                raise TypeError(f"connector yielded {type(item).__name__}, not a record or a marker")
        self.flush(buffer)
        if self.progress and consumed:
            self.progress(consumed)

    def flush(self, buffer: Mapping[str, list[Any]]) -> None:
        for kind in KIND_ORDER:
            records = buffer.get(kind)
            if records:
                self.apply(SPECS[kind], records)
        for kind, ids in self.mentioned.items():
            refs = self.lookup_refs(kind, ids).values()
            self.mark_seen(kind, [r[0] for r in refs], active=[r[3] == ACTIVE for r in refs])
        self.mentioned.clear()
        if self.unverified:
            self.check_references()
        self.sql.refresh_statistics()

    # ----------------------------------------------------------------- lookups

    def lookup_refs(self, kind: str, external_ids: Iterable[str]) -> dict[str, tuple[int, int, str | None, str]]:
        """Return external id → (ref id, entity id, fingerprint, status) for this source's refs."""
        return {row[0]: row[1:] for row in self.sql.rows_in(
            "SELECT external_id, id, entity_id, fingerprint, status FROM external_ref",
            "district_id = ? AND kind = ? AND namespace = ?", (self.district_id, kind, self.ns), "external_id",
            external_ids)}

    def is_fresh(self, kind: str) -> bool:
        """Whether this source had no refs of ``kind`` when the run started (a first import)."""
        fresh = self.fresh.get(kind)
        if fresh is None:
            fresh = self.fresh[kind] = not self.sql.rows(
                "SELECT 1 FROM external_ref WHERE district_id = ? AND kind = ? AND namespace = ? LIMIT 1",
                (self.district_id, kind, self.ns))
            if fresh and self.bloom is None:
                self.bloom = _Bloom()
        return fresh

    def current_refs(self, kind: str, ids: list[str]) -> dict[str, tuple[int, int, str | None, str]]:
        """Look up the refs of the records ``ids``; in a first import only ids this run may already have applied."""
        if self.is_fresh(kind):
            maybe = self.bloom.maybe_seen(f"ref:{kind}", ids)  # type: ignore[union-attr]
            return self.lookup_refs(kind, maybe) if maybe else {}
        return self.lookup_refs(kind, ids)

    def resolve(self, kind: str, external_ids: Iterable[str], local: Mapping[str, int] | None = None
                ) -> dict[str, int]:
        """Map this source's ids of ``kind`` to canonical ids: batch-local, cache, then one query."""
        cache = self.cache.get(kind, {})
        wanted = list(external_ids)
        hits = list(map(cache.get, wanted)) if local is None else [local.get(x) or cache.get(x) for x in wanted]
        if None not in hits:
            return dict(zip(wanted, hits, strict=True))
        found = {ext: eid for ext, eid in zip(wanted, hits, strict=True) if eid is not None}
        missing = [ext for ext, eid in zip(wanted, hits, strict=True) if eid is None]
        if missing:
            fetched = [(ext, ref[1]) for ext, ref in self.lookup_refs(kind, missing).items() if ref[3] != ERASED]
            found.update(fetched)
            self.remember(kind, fetched)
        return found

    def table_was_empty(self, spec: _Spec) -> bool:
        """Whether the district had no rows of ``spec``'s table before this run wrote any (asked before it does).

        Matching then looks up only the key values a Bloom filter says this run may already have written; the
        values of rows it updates are added to the filter too (see ``apply``).
        """
        empty = self.empty_tables.get(spec.kind)
        if empty is None:
            self.sql.lock(self.source_id)
            empty = self.empty_tables[spec.kind] = not self.sql.rows(
                f"SELECT 1 FROM {self.sql.quote(spec.table.name)} WHERE district_id = ? LIMIT 1", (self.district_id,))
            if empty and self.bloom is None:
                self.bloom = _Bloom()
        return empty

    def has_other_sources(self, kind: str) -> bool:
        """Whether any other namespace references rows of ``kind`` (only then natural keys are matched)."""
        known = self.other_sources.get(kind)
        if known is None:
            base = "SELECT 1 FROM external_ref WHERE district_id = ? AND kind = ? AND namespace {} ? LIMIT 1"
            params = (self.district_id, kind, self.ns)
            known = bool(self.sql.rows(base.format("<"), params) or self.sql.rows(base.format(">"), params))
            self.other_sources[kind] = known
        return known

    def refs_of_ours(self, kind: str, entity_ids: Iterable[int]) -> set[int]:
        """Return the entities among ``entity_ids`` this source already references."""
        return {row[0] for row in self.sql.rows_in(
            "SELECT entity_id FROM external_ref", "district_id = ? AND kind = ? AND namespace = ?",
            (self.district_id, kind, self.ns), "entity_id", entity_ids, type_="bigint")}

    # ----------------------------------------------------------------- applying one kind

    def apply(self, spec: _Spec, records: list[Any]) -> None:
        kind = spec.kind
        ids = list(map(_SOURCED_ID, records))
        if len(set(ids)) != len(ids):  # the same id twice in a batch: the later one wins
            by_id = dict(zip(ids, records, strict=True))
            records, ids = list(by_id.values()), list(by_id)
        fingerprint = FINGERPRINTS[type(records[0])]
        refs = self.current_refs(kind, ids)
        changed: list[tuple[Any, str, tuple[int, int, str | None, str]]] = []
        retry: list[tuple[Any, str, tuple[int, int, str | None, str]]] = []  # same record, a parent was missing
        new: list[tuple[Any, str]] = []
        if refs:
            seen_ids = []
            unchanged = 0
            for r in records:
                fp = fingerprint(r)
                ref = refs.get(r.sourced_id)
                if ref is None:
                    new.append((r, fp))
                    continue
                seen_ids.append(ref[0])
                if ref[3] == ERASED:
                    self.error(kind, r.sourced_id, None, "erased on request; not imported again", type_="erased")
                    continue
                stored = ref[2]
                if stored == fp and ref[3] == ACTIVE:
                    unchanged += 1
                elif stored is not None and stored[:-1] == fp and stored[-1:] == PARTIAL and ref[3] == ACTIVE:
                    retry.append((r, fp, ref))
                else:
                    changed.append((r, fp, ref))
            self.mark_seen(kind, seen_ids)
            if unchanged:
                self.count(kind, "unchanged", unchanged)
            if changed and spec.match is not None and self.empty_tables.get(kind):
                for key in self.match_keys(spec):  # values this run writes where matching asks the Bloom filter
                    self.bloom.maybe_seen(f"{kind}.{key}", [v for c in changed if (v := getattr(c[0], key))])  # type: ignore[union-attr]
        else:
            new = list(zip(records, map(fingerprint, records), strict=True))
        if not changed and not new and not retry:
            return

        # Parents of other kinds, in bulk; records missing a required parent are rejected.
        parents = spec.parents
        resolved: dict[int, dict[str, int]] = {}
        todo = [*map(_FIRST, changed), *map(_FIRST, retry), *map(_FIRST, new)]
        for i, p in enumerate(parents):
            if p.kind != kind:
                resolved[i] = self._resolve_parent(p, todo)
        if any(p.required for p in parents) or spec.check is not None:
            changed = self._valid(spec, changed, resolved)
            new = self._valid(spec, new, resolved)

        # Records this source never sent before: match to an existing row, or allocate a new one.
        entity_for: dict[str, int] = {}
        if new:
            if spec.match is not None or spec.natural is not None:
                entity_for, conflicts = self._match(spec, [r for r, _ in new], resolved)
                if conflicts:
                    new = [n for n in new if n[0].sourced_id not in conflicts]
            matched = set(entity_for)
            if kind == "person" and self.erased is not None:
                new = self._drop_erased(new, matched)
            fresh = [r.sourced_id for r, _ in new if r.sourced_id not in matched] if matched else \
                [r.sourced_id for r, _ in new]
            entity_for.update(zip(fresh, self.sql.allocate(spec.table.name, len(fresh),
                                                           lock_source_id=self.source_id), strict=True))
        else:
            matched = set()
        if kind in PARENT_KINDS:
            self.remember(kind, ((c[0].sourced_id, c[2][1]) for c in changed))
            self.remember(kind, entity_for.items())
        for i, p in enumerate(parents):
            if p.kind == kind:  # a parent of the same kind may be in this very batch
                local = {**{c[0].sourced_id: c[2][1] for c in changed}, **entity_for}
                resolved[i] = self._resolve_parent(p, [*map(_FIRST, changed), *map(_FIRST, retry),
                                                       *map(_FIRST, new)], local)
        if retry:  # written before with a parent missing: rewrite only once that parent is known
            _cols, still = _columns(spec, [c[0] for c in retry], resolved, {})
            changed += [c for j, c in enumerate(retry) if j not in still]
            if still:
                self.count(kind, "unchanged", len(still))
        if changed or new:
            self._write(spec, changed, new, entity_for, matched, resolved)

    def _drop_erased(self, new: list[tuple[Any, str]], matched: set[str]) -> list[tuple[Any, str]]:
        """Report, and leave out, the people this batch would create who were erased on request."""
        gone = self.erased.people(self.ns, [r for r, _ in new if r.sourced_id not in matched])  # type: ignore[union-attr]
        for sourced_id in gone:
            self.error("person", sourced_id, None, "erased on request; not imported again", type_="erased")
        return [n for n in new if n[0].sourced_id not in gone] if gone else new

    def _resolve_parent(self, parent: _Parent, records: Iterable[Any],
                        local: Mapping[str, int] | None = None) -> dict[str, int]:
        get = attrgetter(parent.attr)
        if parent.many == "one":
            wanted = set(map(get, records))
        else:
            wanted = set()
            for r in records:
                v = get(r)
                if v:
                    if parent.many == "first":
                        wanted.add(v[0])
                    else:
                        wanted.update(v)
        wanted.discard(None)
        wanted.discard("")
        return self.resolve(parent.kind, wanted, local) if wanted else {}

    def _valid(self, spec: _Spec, items: list[Any], resolved: Mapping[int, Mapping[str, int]]) -> list[Any]:
        """Drop (and report) records missing a required parent or breaking the kind's own rule."""
        if not items:
            return items
        records = [it[0] for it in items]
        bad: dict[int, tuple[str, str]] = {}
        for i, p in enumerate(spec.parents):
            if not p.required:
                continue
            found = resolved[i]
            given = list(map(attrgetter(p.attr), records))
            if all(map(found.__contains__, given)):
                continue
            for j, v in enumerate(given):
                if j not in bad and v not in found:
                    bad[j] = (p.attr, f"unknown {p.kind} {v!r}" if v else f"no {p.kind} given")
        if spec.check is not None:
            for j, r in enumerate(records):
                if j not in bad and (problem := spec.check(r)) is not None:
                    bad[j] = problem
        if not bad:
            return items
        for j, (fld, reason) in sorted(bad.items()):
            self.error(spec.kind, records[j].sourced_id, fld, reason)
        return [it for j, it in enumerate(items) if j not in bad]

    # ----------------------------------------------------------------- matching

    def match_keys(self, spec: _Spec) -> tuple[str, ...]:
        """The keys that recognise a new record of ``spec`` as a row another source wrote, in order."""
        return ("sis_id", *self.match_on) if spec.match == "person" else ("sis_id",)

    def _match(self, spec: _Spec, records: list[Any], resolved: Mapping[int, Mapping[str, int]]
               ) -> tuple[dict[str, int], set[str]]:
        """Match new records to rows other sources wrote; return (record id → row id, conflicting ids)."""
        if spec.match is not None:
            return self._match_keys(spec, records, self.match_keys(spec))
        if spec.natural is not None and self.has_other_sources(spec.kind):
            return self._match_natural(spec, records, resolved), set()
        return {}, set()

    def _conflict(self, conflicts: set[str], kind: str, record_id: str, fld: str | None, reason: str) -> None:
        conflicts.add(record_id)
        self.error(kind, record_id, fld, reason, type_="conflict")

    def _match_keys(self, spec: _Spec, records: list[Any], keys: Sequence[str]
                    ) -> tuple[dict[str, int], set[str]]:
        """Match by ``sis_id``, then each fallback key: exactly one free candidate of a compatible role."""
        kind = spec.kind
        people = kind == "person"
        table = self.sql.quote(spec.table.name)
        out: dict[str, int] = {}
        conflicts: set[str] = set()
        remaining = records
        empty = self.table_was_empty(spec)
        for key in keys:
            keyed: dict[str, list[Any]] = defaultdict(list)
            for r in remaining:
                v = getattr(r, key)
                if v:
                    keyed[v].append(r)
            if not keyed:
                continue
            # In a table this run found empty, only values this run itself wrote can have candidates.
            wanted = self.bloom.maybe_seen(f"{kind}.{key}", list(keyed)) if empty else keyed  # type: ignore[union-attr]
            extra = "role, sis_id" if people else "NULL, sis_id"
            rows: dict[str, list[tuple[int, str | None, str | None]]] = defaultdict(list)
            for eid, role, sis, value in self.sql.rows_in(
                    f"SELECT id, {extra}, {self.sql.quote(key)} FROM {table}", "district_id = ?",
                    (self.district_id,), self.sql.quote(key), wanted):
                rows[value].append((eid, role, sis))
            ours = self.refs_of_ours(kind, (c[0] for cs in rows.values() for c in cs)) if rows else set()
            for value, group in keyed.items():
                if len(group) > 1:
                    if key != "sis_id":
                        continue  # several of this source's records share it: not a key to match them by
                    for r in group[1:]:
                        self._conflict(conflicts, kind, r.sourced_id, key,
                                       f"{key} {value!r} is also used by {group[0].sourced_id!r} in this source")
                r = group[0]
                candidates = rows.get(value, [])
                free = [c for c in candidates if c[0] not in ours]
                if not free:
                    if candidates and key == "sis_id":
                        self._conflict(conflicts, kind, r.sourced_id, key,
                                       f"{key} {value!r} already belongs to another record of this source")
                    continue
                if len(free) > 1:
                    self._conflict(conflicts, kind, r.sourced_id, key,
                                   f"{len(free)} {kind} rows have {key} {value!r}")
                    continue
                eid, role, sis = free[0]
                if people and ROLE_GROUPS.get(role or "", role) != ROLE_GROUPS.get(r.role, r.role):
                    self._conflict(conflicts, kind, r.sourced_id, "role",
                                   f"matches person {eid} by {key} {value!r} but is a {r.role}, not a {role}")
                elif key != "sis_id" and sis and r.sis_id and sis != r.sis_id:
                    self._conflict(conflicts, kind, r.sourced_id, key,
                                   f"matches {kind} {eid} by {key} {value!r} but their sis_ids differ")
                else:
                    out[r.sourced_id] = eid
            remaining = [r for r in remaining if r.sourced_id not in out and r.sourced_id not in conflicts]
            if not remaining:
                break
        return out, conflicts

    def _match_natural(self, spec: _Spec, records: list[Any], resolved: Mapping[int, Mapping[str, int]]
                       ) -> dict[str, int]:
        nat = spec.natural
        assert nat is not None
        cols, _partial = _columns(spec, records, resolved, {})
        keys = dict(zip(zip(*(cols[spec.column_index(c)] for c in nat.key), strict=True), records, strict=True))
        lookup_idx = nat.key.index(nat.lookup)
        table = self.sql.quote(spec.table.name)
        names = ", ".join(self.sql.quote(c) for c in nat.key)
        found: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for eid, *key in self.sql.rows_in(f"SELECT id, {names} FROM {table}", "district_id = ?",
                                          (self.district_id,), self.sql.quote(nat.lookup),
                                          {k[lookup_idx] for k in keys if k[lookup_idx] is not None},
                                          type_="bigint"):
            if tuple(key) in keys:
                found[tuple(key)].append(eid)
        ours = self.refs_of_ours(spec.kind, (e for ids in found.values() for e in ids)) if found else set()
        out = {}
        for key, ids in found.items():
            free = [e for e in ids if e not in ours]
            if len(free) == 1:
                out[keys[key].sourced_id] = free[0]
        return out

    # ----------------------------------------------------------------- writing

    def _write(self, spec: _Spec, changed: list[tuple[Any, str, tuple[int, int, str | None, str]]],
               new: list[tuple[Any, str]], entity_for: Mapping[str, int], matched: set[str],
               resolved: Mapping[int, Mapping[str, int]]) -> None:
        kind = spec.kind
        district, now, run_id, ns = self.district_id, self.now_bound, self.run_id, self.ns
        records = [*map(_FIRST, changed), *map(_FIRST, new)]
        fps = [*map(_SECOND, changed), *map(_SECOND, new)]
        cols, partial = _columns(spec, records, resolved, self.procs[kind])
        for j in partial:  # a parent not found yet: the stored fingerprint makes the next run try again
            fps[j] += PARTIAL
        if self.fk_unchecked:
            self._note_references(spec, cols)
        if self.track_classes:
            self._track(spec, cols, changed, entity_for)

        # Rows are zipped from columns in C; ``repeat`` stands in for the columns that are the same on every row.
        k = len(changed)
        same = itertools.repeat
        updates: list[tuple[Any, ...]] = []
        if changed:  # (zip stops at the real columns: repeat() is endless)
            ref_of = list(map(_THIRD, changed))
            updates = list(zip(same(ACTIVE), same(now), *(c[:k] for c in cols), map(_SECOND, ref_of)))  # noqa: B905
            self.sql.executemany(self.ref_update, list(zip(  # noqa: B905
                fps[:k], same(ACTIVE), same(run_id), map(_FIRST, ref_of))))
            self.reactivated[kind] += sum(1 for ref in ref_of if ref[3] != ACTIVE)
        sids = list(map(_SOURCED_ID, records[k:]))
        eids = list(map(entity_for.__getitem__, sids))
        new_cols = [c[k:] for c in cols] if k else cols
        if matched:  # rows another source wrote: this source's values win from now on
            mine = [sid in matched for sid in sids]
            updates += zip(same(ACTIVE), same(now), *(itertools.compress(c, mine) for c in new_cols),  # noqa: B905
                           itertools.compress(eids, mine))
            keep = [not m for m in mine]
            new_cols = [list(itertools.compress(c, keep)) for c in new_cols]
            insert_eids = list(itertools.compress(eids, keep))
            insert_sids = list(itertools.compress(sids, keep))
        else:
            insert_eids, insert_sids = eids, sids
        self.sql.insert(spec.table.name, _INSERT_HEAD + spec.columns, zip(  # noqa: B905 - repeat() is endless
            insert_eids, same(district), map(f"{ns}:".__add__, insert_sids), same(ACTIVE), same(now), *new_cols),
            len(insert_eids))
        self.sql.executemany(self.update_stmts[kind], updates)
        if new:
            ref_ids = self.sql.allocate("external_ref", len(new), lock_source_id=self.source_id)
            new_fps = fps[k:]
            if self._can_copy_refs(insert_eids):
                # the refs of the rows just inserted are copied from them in SQL: one bound blob of fingerprints
                m = len(new) - len(insert_eids)
                if matched:
                    self.sql.insert("external_ref", _REF_COLUMNS, zip(  # noqa: B905 - repeat() is endless
                        ref_ids[:m], same(district), same(kind), same(ns), itertools.compress(sids, mine),
                        itertools.compress(eids, mine), itertools.compress(new_fps, mine), same(ACTIVE),
                        same(run_id)), m)
                    new_fps = list(itertools.compress(new_fps, keep))
                self._copy_refs(spec, ref_ids[m:], insert_eids, new_fps)
            else:
                self.sql.insert("external_ref", _REF_COLUMNS, zip(  # noqa: B905 - repeat() is endless
                    ref_ids, same(district), same(kind), same(ns), sids, eids, new_fps, same(ACTIVE), same(run_id)),
                    len(new))
            self.mark_seen(kind, ref_ids)
            self.added_refs[kind] += len(new)
        self.count(kind, "added", len(new) - len(matched))
        self.count(kind, "updated", len(changed) + len(matched))
        if matched:
            self.count(kind, "matched", len(matched))

    def _can_copy_refs(self, eids: Sequence[int]) -> bool:
        """SQLite: whether ``eids`` are one ascending run of ids (those a batch allocated), worth copying refs from."""
        return (not self.sql.pg and len(eids) >= 64 and eids[-1] - eids[0] + 1 == len(eids)
                and list(range(eids[0], eids[-1] + 1)) == eids)

    def _copy_refs(self, spec: _Spec, ref_ids: range | list[int], eids: Sequence[int], fps: Sequence[str]) -> None:
        """Insert this source's refs of the rows ``eids`` it just inserted, reading ids back from those rows.

        Row ``eids[i]`` gets ref ``ref_ids[i]`` and fingerprint ``fps[i]``; its external id is its sourced_id
        without the ``namespace:`` prefix. It binds ten parameters in all, where the ``VALUES`` form binds nine per
        ref.
        """
        n = len(eids)
        blob = "".join(fp.ljust(_FP_WIDTH) for fp in fps).encode("ascii")
        if len(ref_ids) != n or len(blob) != n * _FP_WIDTH:
            raise RuntimeError(f"ref copy of {spec.kind}: {len(ref_ids)} refs, {len(fps)} fingerprints, {n} rows")
        table = self.sql.quote(spec.table.name)
        count = self.sql.execute(
            "INSERT INTO external_ref (id, district_id, kind, namespace, external_id, entity_id, fingerprint,"
            " status, last_seen_run_id)"
            f" SELECT ?1 + (id - ?2), district_id, ?4, ?5, substr(sourced_id, ?6), id,"
            f" rtrim(CAST(substr(?7, (id - ?2) * {_FP_WIDTH} + 1, {_FP_WIDTH}) AS TEXT)), ?8, ?9"
            f" FROM {table} WHERE id BETWEEN ?2 AND ?3 AND +district_id = ?10",  # by id, never by district
            (ref_ids[0], eids[0], eids[-1], spec.kind, self.ns, len(self.ns) + 2, blob, ACTIVE, self.run_id,
             self.district_id))
        if count != n:  # never a ref short: the run fails and rolls back instead
            raise RuntimeError(f"ref copy of {spec.kind}: {count} refs written for {n} rows")
        self.sql.inserted["external_ref"] += n

    def _note_references(self, spec: _Spec, cols: list[Sequence[Any]]) -> None:
        """Remember the rows these columns reference that this run did not create, to check before commit."""
        first_id = self.sql.first_id
        for i, table in FOREIGN_KEYS[spec.kind]:
            ids = set(cols[i])
            ids.discard(None)
            low = first_id.get(table)
            if low is not None:  # ids from ``low`` on were allocated, and inserted, by this run
                ids = {x for x in ids if x < low}
            if ids:
                self.unverified[table].update(ids)
        if not self.district_checked:
            self.unverified["district"].add(self.district_id)
            self.district_checked = True

    def check_references(self) -> None:
        """Raise MissingReference unless every row noted by ``_note_references`` exists."""
        for table, ids in self.unverified.items():
            found = {row[0] for row in self.sql.rows_in(f"SELECT id FROM {self.sql.quote(table)}", "", (), "id",
                                                        ids, type_="bigint")}
            missing = sorted(ids - found)
            if missing:
                raise MissingReference(f"FOREIGN KEY constraint failed: {len(missing):,} {table} row(s) referenced "
                                       f"but missing (ids {', '.join(map(str, missing[:5]))})")
        self.unverified.clear()

    def _track(self, spec: _Spec, cols: list[Sequence[Any]], changed: list[Any], entity_for: Mapping[str, int]
               ) -> None:
        """Remember which classes (directly, or through an activity) this batch touched."""
        columns = spec.columns
        if spec.kind == "class":
            self.changed_classes.update(c[2][1] for c in changed)
            self.changed_classes.update(entity_for.values())
        elif spec.kind in _CLASS_COLUMN_KINDS:
            self.changed_classes.update(v for v in cols[columns.index("class_id")] if v is not None)
        elif "activity_id" in columns:
            self.changed_activities.update(v for v in cols[columns.index("activity_id")] if v is not None)

    # ----------------------------------------------------------------- removals

    def active_refs(self, kind: str) -> int:
        """Count this source's active refs of ``kind`` (before any tombstone of this run)."""
        cached = self._active.get(kind)
        if cached is None:
            cached = self._active[kind] = self.sql.scalar(
                "SELECT count(*) FROM external_ref WHERE district_id = ? AND kind = ? AND namespace = ?"
                " AND status = ?", (self.district_id, kind, self.ns, ACTIVE))
        return cached

    def plan_removals(self) -> dict[str, dict[int, int]]:
        """Return kind → {ref id: entity id} of refs to tombstone (listed removals and whole listings)."""
        plan: dict[str, dict[int, int]] = defaultdict(dict)
        for kind, ids in self.tombstone_ids.items():
            for ref_id, eid, _fp, status in self.lookup_refs(kind, ids).values():
                if status == ACTIVE and ref_id not in self.seen:
                    plan[kind][ref_id] = eid
        for (kind, within_kind), withins in self.completes.items():
            spec = SPECS.get(kind)
            if spec is None:
                continue
            target = plan[kind]
            if within_kind is None:
                if self.active_refs(kind) == self.seen_active[kind]:
                    continue  # every active ref of the kind was mentioned: nothing to look for
                for ref_id, eid in self.sql.stream(
                        "SELECT id, entity_id FROM external_ref WHERE district_id = ? AND kind = ?"
                        " AND namespace = ? AND status = ?", (self.district_id, kind, self.ns, ACTIVE)):
                    if ref_id not in self.seen:
                        target[ref_id] = eid
                continue
            column = spec.within.get(within_kind)
            if column is None:
                log.warning("sync.complete.ignored source=%s kind=%s within_kind=%s", self.ns, kind, within_kind)
                continue
            parents = self.resolve(within_kind, {w for w in withins if w})
            if not parents:
                continue
            table = self.sql.quote(spec.table.name)
            for ref_id, eid in self.sql.rows_in(
                    f"SELECT r.id, r.entity_id FROM external_ref r JOIN {table} t ON t.id = r.entity_id",
                    "r.district_id = ? AND r.kind = ? AND r.namespace = ? AND r.status = ?",
                    (self.district_id, kind, self.ns, ACTIVE), f"t.{self.sql.quote(column)}", parents.values(),
                    type_="bigint"):
                if ref_id not in self.seen:
                    target[ref_id] = eid
        return {k: v for k, v in plan.items() if v}

    def check_removals(self, plan: Mapping[str, Mapping[int, int]], max_share: float) -> None:
        """Record what the plan would remove; raise NeedsConfirm when a kind loses too large a share."""
        too_many = []
        for kind, refs in plan.items():
            active_now = self.active_refs(kind)
            before = max(active_now - self.added_refs[kind] - self.reactivated[kind], 0)
            self.removals[kind] = (len(refs), before)
            if before and len(refs) > max_share * before:
                too_many.append(f"{len(refs):,} of {before:,} {kind} records ({len(refs) / before:.0%})")
        if too_many:
            raise NeedsConfirm(
                f"this run would tombstone {'; '.join(too_many)} of source {self.ns!r}, more than the allowed "
                f"{max_share:.0%}; check the export, then rerun with --confirm", self.removals)

    def apply_removals(self, plan: Mapping[str, Mapping[int, int]]) -> None:
        for kind in reversed(KIND_ORDER):
            refs = plan.get(kind)
            if not refs:
                continue
            self.sql.executemany("UPDATE external_ref SET status = ?, last_seen_run_id = ? WHERE id = ?",
                                 [(TOBEDELETED, self.run_id, ref_id) for ref_id in refs])
            entities = set(refs.values())
            kept = {row[0] for row in self.sql.rows_in(
                "SELECT entity_id FROM external_ref", "district_id = ? AND kind = ? AND status = ? AND namespace <> ?",
                (self.district_id, kind, ACTIVE, self.ns), "entity_id", entities, type_="bigint")}
            gone = sorted(entities - kept)
            table = self.sql.quote(SPECS[kind].table.name)
            self.sql.executemany(f"UPDATE {table} SET status = ?, updated_at = ? WHERE id = ? AND status <> ?",
                                 [(TOBEDELETED, self.now_bound, eid, TOBEDELETED) for eid in gone])
            self.count(kind, "tombstoned", len(refs))
            if self.track_classes:
                self.tombstoned_entities[kind].extend(gone)

    def changed_class_ids(self) -> frozenset[int]:
        """Collect the classes whose roster, content or progress this run changed."""
        classes = set(self.changed_classes)
        classes.update(self.tombstoned_entities.get("class", ()))
        for kind in _CLASS_COLUMN_KINDS:
            ids = self.tombstoned_entities.get(kind)
            if ids:
                table = self.sql.quote(SPECS[kind].table.name)
                classes.update(r[0] for r in self.sql.rows_in(f"SELECT class_id FROM {table}", "", (), "id", ids,
                                                              type_="bigint") if r[0] is not None)
        activities = set(self.changed_activities)
        for kind in ("result", "alignment"):
            ids = self.tombstoned_entities.get(kind)
            if ids:
                table = self.sql.quote(SPECS[kind].table.name)
                activities.update(r[0] for r in self.sql.rows_in(f"SELECT activity_id FROM {table}", "", (), "id",
                                                                 ids, type_="bigint") if r[0] is not None)
        if activities:
            classes.update(r[0] for r in self.sql.rows_in("SELECT class_id FROM activity", "", (), "id", activities,
                                                          type_="bigint"))
        return frozenset(classes)


# --------------------------------------------------------------------------- the cycle collector

# A run allocates hundreds of thousands of short-lived records and tuples, none of them in cycles; with the
# default thresholds CPython runs a collection every 700 of them and a full one (over every object of the
# process) about fifteen times in a 50,000-student import. While any run applies, collections are rarer; the
# thresholds in force before the first run come back when the last one ends.
_RUN_GC_THRESHOLD = (100_000, 50, 1_000)
_gc_lock = threading.Lock()
_gc_runs = 0
_gc_saved: tuple[int, int, int] | None = None


@contextlib.contextmanager
def _rare_collections() -> Iterator[None]:
    global _gc_runs, _gc_saved
    with _gc_lock:
        if _gc_runs == 0:
            _gc_saved = gc.get_threshold()
            gc.set_threshold(*_RUN_GC_THRESHOLD)
        _gc_runs += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_runs -= 1
            if _gc_runs == 0 and _gc_saved is not None:
                gc.set_threshold(*_gc_saved)
                _gc_saved = None


# --------------------------------------------------------------------------- leases and health


def lease_owner() -> str:
    """Name this process (host, pid and a random suffix) as a lease holder."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire_lease(session: Session, source_id: int, owner: str, now: datetime, ttl: timedelta = LEASE_TTL) -> bool:
    """Take the source's sync lease unless another live run holds it (one conditional UPDATE)."""
    src = models.Source.__table__
    result = session.execute(
        update(src)
        .where(src.c.id == source_id,
               or_(src.c.lock_owner.is_(None), src.c.lock_owner == owner, src.c.lock_expires_at.is_(None),
                   src.c.lock_expires_at < now))
        .values(lock_owner=owner, lock_expires_at=now + ttl))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_lease(session: Session, source_id: int, owner: str, expires_at: datetime) -> bool:
    """Extend a lease this owner holds."""
    src = models.Source.__table__
    result = session.execute(update(src).where(src.c.id == source_id, src.c.lock_owner == owner)
                             .values(lock_expires_at=expires_at))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def release_lease(session: Session, source_id: int, owner: str) -> None:
    """Give the lease back (only if this owner still holds it)."""
    src = models.Source.__table__
    session.execute(update(src).where(and_(src.c.id == source_id, src.c.lock_owner == owner))
                    .values(lock_owner=None, lock_expires_at=None))


def pause_delay(failures: int) -> timedelta:
    """Return how long a source rests after ``failures`` consecutive failures (1 min, 2, 4 … 1 h)."""
    if failures <= 0:
        return timedelta(0)
    return min(PAUSE_FIRST * (2 ** min(failures - 1, 16)), PAUSE_MAX)


def record_failure(session: Session, source: models.Source, error: str, now: datetime) -> None:
    """Count a failed run and pause the source with exponential backoff."""
    source.consecutive_failures = (source.consecutive_failures or 0) + 1
    source.paused_until = now + pause_delay(source.consecutive_failures)
    source.last_error = error[:2000]


def record_success(source: models.Source) -> None:
    """Reset the source's health after a successful run."""
    source.consecutive_failures = 0
    source.paused_until = None
    source.last_error = None


def get_source(session: Session, district_id: int, name: str) -> models.Source | None:
    return session.scalars(select(models.Source).where(models.Source.district_id == district_id,
                                                       models.Source.name == name)).first()


def ensure_source(session: Session, district_id: int, name: str, kind: str, now: datetime,
                  schedule: str | None = None) -> models.Source:
    """Return the district's source row called ``name``, creating it (or updating its kind and schedule)."""
    source = get_source(session, district_id, name)
    if source is None:
        source = models.Source(district_id=district_id, name=name, kind=kind, schedule=schedule, cursor={},
                               consecutive_failures=0, created_at=now)
        session.add(source)
        session.flush()
    else:
        source.kind = kind
        source.schedule = schedule
    return source


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they are UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --------------------------------------------------------------------------- watermarks


def scopes_of(scope: Scope) -> list[Scope]:
    return [Scope.ROSTER, Scope.CONTENT, Scope.PROGRESS] if scope is Scope.ALL else [scope]


def since_for(cursor: Mapping[str, Any], scope: Scope) -> datetime | None:
    """Return the delta watermark covering every part of ``scope``, or None when one was never synced."""
    marks = cursor.get("since", {})
    values = [marks.get(s.value) for s in scopes_of(scope)]
    if not values or not all(values):
        return None
    return min(datetime.fromisoformat(v) for v in values)


def advanced_cursor(cursor: Mapping[str, Any], scope: Scope, now: datetime, *, full: bool) -> dict[str, Any]:
    """Return the cursor after a successful run that started at ``now``."""
    out = {**cursor}
    since = dict(out.get("since", {}))
    fulls = dict(out.get("full_at", {}))
    for s in scopes_of(scope):
        since[s.value] = now.isoformat()
        if full:
            fulls[s.value] = now.isoformat()
    out["since"] = since
    out["full_at"] = fulls
    return out


def last_full(cursor: Mapping[str, Any], scope: Scope) -> datetime | None:
    """Return when every part of ``scope`` was last pulled in full, or None."""
    marks = cursor.get("full_at", {})
    values = [marks.get(s.value) for s in scopes_of(scope)]
    if not values or not all(values):
        return None
    return min(datetime.fromisoformat(v) for v in values)


# --------------------------------------------------------------------------- the run


def run_sync(
    store: Store,
    district_id: int,
    source_row_or_name: models.Source | str,
    connector: Connector,
    *,
    scope: Scope | str = Scope.ALL,
    full: bool = False,
    dry_run: bool = False,
    confirm: bool = False,
    now: datetime,
    progress: Progress | None = None,
    max_removal_share: float = 0.10,
    match_on: Sequence[str] | None = None,
    on_applied: OnApplied | None = None,
    batch_size: int = BATCH_SIZE,
    ignore_pause: bool = False,
    owner: str | None = None,
    lease_ttl: timedelta = LEASE_TTL,
) -> SyncRunResult:
    """Pull from ``connector`` and apply the stream to the store in one transaction; record a SyncRun.

    ``match_on`` defaults to the district's ``settings["match_on"]``; ``on_applied(session, district_id,
    class_ids)`` runs after a successful run that changed something, in its own transaction.
    """
    scope = Scope(scope)
    owner = owner or lease_owner()
    name = source_row_or_name if isinstance(source_row_or_name, str) else source_row_or_name.name
    if scope is not Scope.ALL and SCOPE_CAPABILITY[scope] not in connector.capabilities:
        return SyncRunResult(SKIPPED, name, message=f"source {name!r} cannot read {scope.value}")

    # 1. The lease and a "running" SyncRun row, in their own short transaction.
    with store.session() as session:
        district = session.get(models.District, district_id)
        if district is None:
            raise ValueError(f"no district with id {district_id}")
        source = get_source(session, district_id, name) or ensure_source(session, district_id, name,
                                                                         connector.kind, now)
        paused_until = _aware(source.paused_until)
        if paused_until is not None and paused_until > now and not ignore_pause:
            return SyncRunResult(SKIPPED, name, message=(
                f"source {name!r} is paused until {paused_until.isoformat(timespec='seconds')} after "
                f"{source.consecutive_failures} failed run(s): {source.last_error or ''}").strip())
        if not acquire_lease(session, source.id, owner, now, lease_ttl):
            session.refresh(source)
            until = _aware(source.lock_expires_at)
            return SyncRunResult(SKIPPED, name, message=(
                f"source {name!r} is already syncing (lease held by {source.lock_owner} until "
                f"{until.isoformat(timespec='seconds') if until else '?'})"))
        if match_on is None:
            match_on = list((district.settings or {}).get("match_on") or ["sis_id"])
        full_pull = full or Capability.READ_DELTA not in connector.capabilities
        since = None if full_pull else since_for(source.cursor or {}, scope)
        run = models.SyncRun(district_id=district_id, source_id=source.id, scope=scope.value,
                             full=since is None, dry_run=dry_run, status=RUNNING, started_at=now, counts={},
                             errors=[])
        session.add(run)
        session.flush()
        run_id, source_id = run.id, source.id

    # 2. The run itself: one transaction for rows, refs, tombstones, the watermark and the outcome.
    clock = time.monotonic()
    applier: _Apply | None = None
    status, message = SUCCEEDED, ""
    changed: frozenset[int] = frozenset()
    heartbeat = _heartbeat(store, source_id, owner, now, lease_ttl, clock)
    try:
        with _rare_collections(), store.bulk_session() as session:
            source = session.get(models.Source, source_id)
            assert source is not None
            applier = _Apply(session, district_id=district_id, source=source, run_id=run_id, now=now,
                             match_on=match_on, batch_size=batch_size, progress=progress,
                             track_classes=on_applied is not None, heartbeat=heartbeat, erasures=store.erasures)
            message = _apply_run(session, applier, connector, scope, since, source, run_id, now, clock,
                                 owner=owner, dry_run=dry_run, confirm=confirm,
                                 max_removal_share=max_removal_share)
            if on_applied is not None and not dry_run:
                changed = applier.changed_ids
    except NeedsConfirm as exc:
        status, message = NEEDS_CONFIRM, str(exc)
        log.warning("sync.needs_confirm source=%s %s", name, message)
    except Exception as exc:  # a failed pull or write: nothing of the run was applied
        status, message = FAILED, _describe(exc)
        log.warning("sync.failed source=%s error=%s", name, message,
                    exc_info=not isinstance(exc, ConnectorError))

    # 3. Anything but a committed run is recorded (and the lease released) in its own transaction.
    if status != SUCCEEDED or dry_run:
        with store.session() as session:
            source = session.get(models.Source, source_id)
            assert source is not None
            if status == FAILED and not dry_run:
                record_failure(session, source, message, now)
            _finish_run(session, run_id, status, applier, message, now, clock)
            release_lease(session, source_id, owner)

    if status == SUCCEEDED and not dry_run and on_applied is not None and changed:
        try:
            with store.session() as session:
                on_applied(session, district_id, changed)
        except Exception:  # derived state can be recomputed; the sync itself stands
            log.exception("sync.on_applied.failed source=%s", name)
            message = (message + "; " if message else "") + "the follow-up recompute failed (see the log)"
    if status == SUCCEEDED and not dry_run and applier is not None and any(
            c.get("added") or c.get("updated") or c.get("tombstoned") for c in applier.counts.values()):
        store.refresh_statistics()  # SQLite: planner statistics after a bulk load (PostgreSQL: autovacuum)

    counts = {k: dict(v) for k, v in applier.counts.items()} if applier else {}
    return SyncRunResult(
        status=status, source=name, run_id=run_id, counts=counts,
        errors=list(applier.errors) if applier else [], error_total=applier.error_total if applier else 0,
        message=message, removals=dict(applier.removals) if applier else {}, dry_run=dry_run,
        started_at=now, finished_at=now + timedelta(seconds=time.monotonic() - clock))


def _apply_run(session: Session, applier: _Apply, connector: Connector, scope: Scope, since: datetime | None,
               source: models.Source, run_id: int, now: datetime, clock: float, *, owner: str, dry_run: bool,
               confirm: bool, max_removal_share: float) -> str:
    """Consume the stream, plan and apply removals, then commit the outcome (or roll back a dry run)."""
    message = ""
    applier.consume(connector.pull(scope, since))
    plan = applier.plan_removals()
    try:
        applier.check_removals(plan, max_removal_share)
    except NeedsConfirm as exc:
        if not confirm:
            raise
        message = f"confirmed: {exc}"
    applier.apply_removals(plan)
    if applier.track_classes:
        applier.changed_ids = applier.changed_class_ids()
    if dry_run:
        session.rollback()
        return message or "dry run: nothing was written"
    cursor = advanced_cursor(source.cursor or {}, scope, now, full=since is None)
    state = getattr(connector, "cursor", None)  # e.g. an NRPS differences link for the next run
    if isinstance(state, Mapping):
        cursor["connector"] = dict(state)
    source.cursor = cursor
    record_success(source)
    _finish_run(session, run_id, SUCCEEDED, applier, message, now, clock)
    release_lease(session, source.id, owner)
    return message


def _heartbeat(store: Store, source_id: int, owner: str, now: datetime, ttl: timedelta,
               clock: float) -> Callable[[], None] | None:
    """Renew the lease from a second connection while a long run works (not on SQLite: one writer)."""
    if store.engine.dialect.name == "sqlite":
        return None
    state = {"renewed": clock}

    def beat() -> None:
        t = time.monotonic()
        if t - state["renewed"] < ttl.total_seconds() / 4:
            return
        state["renewed"] = t
        with store.session() as session:
            renew_lease(session, source_id, owner, now + timedelta(seconds=t - clock) + ttl)

    return beat


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


def _finish_run(session: Session, run_id: int, status: str, applier: _Apply | None, message: str,
                now: datetime, clock: float) -> None:
    run = session.get(models.SyncRun, run_id)
    assert run is not None
    run.status = status
    run.finished_at = now + timedelta(seconds=time.monotonic() - clock)
    errors: list[dict[str, Any]] = []
    if applier is not None:
        counts: dict[str, Any] = {k: dict(v) for k, v in sorted(applier.counts.items())}
        if applier.removals:
            counts["_removals"] = {k: list(v) for k, v in applier.removals.items()}
        run.counts = counts
        errors = list(applier.errors)
        if applier.error_total > len(errors):
            hidden = applier.error_total - len(errors)
            errors.append({"type": "truncated", "reason": f"{hidden:,} more not shown"})
    if message:
        errors.insert(0, {"type": status if status != SUCCEEDED else "note", "reason": message})
    run.errors = errors
