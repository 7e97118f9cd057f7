"""OneRoster 1.0/1.1/1.2 CSV packages (a zip or a folder), streamed row by row into canonical items.

``manifest.csv`` is read first and decides, file by file, ``bulk`` (a full snapshot: ``Complete`` follows the
last row), ``delta`` (changes only: no ``Complete``; ``tobedeleted`` rows become ``Tombstone`` items) or
``absent``. Files are read with ``csv.reader`` straight out of the archive, never whole into memory.

Every row is validated by its marshmallow row schema (:mod:`connectors.oneroster.schemas`). The big files
(users, enrollments, classes, results) first try a fast reader that accepts only rows in the plain form the
schema would load unchanged (exact vocabulary, ``YYYY-MM-DD`` dates, ``true``/``false``) and builds the very
record the schema would; any other row goes through the schema, which accepts it leniently or explains the
rejection. A rejected row never reaches the store, and a bulk file with a rejected row gets no ``Complete``
marker, so a bad export cannot remove anything.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

from marshmallow import Schema, ValidationError

from connectors.base import (
    ACTIVE,
    TOBEDELETED,
    Activity,
    Class,
    Complete,
    ConfigurationError,
    Enrollment,
    Item,
    Person,
    Rejected,
    Result,
    Scope,
    Tombstone,
    first_error,
)
from connectors.oneroster import schemas as s
from connectors.oneroster.guardians import GuardianLinker, StudentAgents

T = TypeVar("T")

MODES = ("bulk", "delta", "absent")
VERSIONS = ("1.0", "1.1", "1.2")
# The files a OneRoster 1.1 manifest names (file.<name> = bulk | delta | absent).
MANIFEST_FILES_1_1 = (
    "academicSessions",
    "categories",
    "classes",
    "classResources",
    "courses",
    "courseResources",
    "demographics",
    "enrollments",
    "lineItems",
    "orgs",
    "resources",
    "results",
    "users",
)

#: The column order the spec gives each file (1.1; 1.2 where it differs). Used in messages and by writers.
HEADERS_1_1: Mapping[str, tuple[str, ...]] = {
    "academicSessions": (
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "type",
        "startDate",
        "endDate",
        "parentSourcedId",
        "schoolYear",
    ),
    "categories": ("sourcedId", "status", "dateLastModified", "title"),
    "classes": (
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "grades",
        "courseSourcedId",
        "classCode",
        "classType",
        "location",
        "schoolSourcedId",
        "termSourcedIds",
        "subjects",
        "subjectCodes",
        "periods",
    ),
    "courses": (
        "sourcedId",
        "status",
        "dateLastModified",
        "schoolYearSourcedId",
        "title",
        "courseCode",
        "grades",
        "orgSourcedId",
        "subjects",
        "subjectCodes",
    ),
    "demographics": (
        "sourcedId",
        "status",
        "dateLastModified",
        "birthDate",
        "sex",
        "americanIndianOrAlaskaNative",
        "asian",
        "blackOrAfricanAmerican",
        "nativeHawaiianOrOtherPacificIslander",
        "white",
        "demographicRaceTwoOrMoreRaces",
        "hispanicOrLatinoEthnicity",
        "countryOfBirthCode",
        "stateOfBirthAbbreviation",
        "cityOfBirth",
        "publicSchoolResidenceStatus",
    ),
    "enrollments": (
        "sourcedId",
        "status",
        "dateLastModified",
        "classSourcedId",
        "schoolSourcedId",
        "userSourcedId",
        "role",
        "primary",
        "beginDate",
        "endDate",
    ),
    "lineItems": (
        "sourcedId",
        "status",
        "dateLastModified",
        "title",
        "description",
        "assignDate",
        "dueDate",
        "classSourcedId",
        "categorySourcedId",
        "gradingPeriodSourcedId",
        "resultValueMin",
        "resultValueMax",
    ),
    "orgs": ("sourcedId", "status", "dateLastModified", "name", "type", "identifier", "parentSourcedId"),
    "results": (
        "sourcedId",
        "status",
        "dateLastModified",
        "lineItemSourcedId",
        "studentSourcedId",
        "scoreStatus",
        "score",
        "scoreDate",
        "comment",
    ),
    "users": (
        "sourcedId",
        "status",
        "dateLastModified",
        "enabledUser",
        "orgSourcedIds",
        "role",
        "username",
        "userIds",
        "givenName",
        "familyName",
        "middleName",
        "identifier",
        "email",
        "sms",
        "phone",
        "agentSourcedIds",
        "grades",
        "password",
    ),
}
HEADERS_1_2: Mapping[str, tuple[str, ...]] = {
    **HEADERS_1_1,
    "users": (
        "sourcedId",
        "status",
        "dateLastModified",
        "enabledUser",
        "username",
        "userIds",
        "givenName",
        "familyName",
        "middleName",
        "identifier",
        "email",
        "sms",
        "phone",
        "agentSourcedIds",
        "grades",
        "password",
        "userMasterIdentifier",
        "resourceSourcedIds",
        "preferredGivenName",
        "preferredMiddleName",
        "preferredFamilyName",
        "primaryOrgSourcedId",
        "pronouns",
    ),
    "roles": (
        "sourcedId",
        "status",
        "dateLastModified",
        "userSourcedId",
        "roleType",
        "role",
        "beginDate",
        "endDate",
        "orgSourcedId",
        "userProfileSourcedId",
    ),
    "userProfiles": (
        "sourcedId",
        "status",
        "dateLastModified",
        "userSourcedId",
        "profileType",
        "vendorId",
        "applicationId",
        "description",
        "credentialType",
        "username",
        "password",
    ),
}
_KNOWN_COLUMNS = {c.lower(): c for header in (*HEADERS_1_1.values(), *HEADERS_1_2.values()) for c in header}

_DATE_CACHE_LIMIT = 20_000
_PRIMARY = {"": False, "true": True, "false": False}
_ENABLED = {"": True, "true": True, "false": False}


# --------------------------------------------------------------------------- the package


class CsvFile:
    """One open CSV file: its canonical header, column index and ``(line, cells)`` rows."""

    def __init__(self, name: str, text: io.TextIOBase) -> None:
        self.name = name
        self._text = text
        self.reader = csv.reader(text)
        try:
            raw = next(self.reader)
        except StopIteration:
            raw = []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(name, 1, exc) from None
        self.header = [_KNOWN_COLUMNS.get(h.strip().lower(), h.strip()) for h in raw]
        self.index = {h: i for i, h in reversed(list(enumerate(self.header)))}

    def add_column(self, name: str) -> int:
        """Add a virtual column (filled in per row by the caller) and return its index."""
        self.header.append(name)
        self.index[name] = len(self.header) - 1
        return self.index[name]

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        reader = self.reader
        previous = reader.line_num
        try:
            for row in reader:
                start, previous = previous + 1, reader.line_num
                if row:
                    yield start, row
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(self.name, previous + 1, exc) from None


def _unreadable(name: str, line: int, exc: Exception) -> ConfigurationError:
    if isinstance(exc, UnicodeDecodeError):
        return ConfigurationError(f"{name} near line {line} is not UTF-8; export the package as UTF-8 CSV")
    return ConfigurationError(f"{name} line {line} is not valid CSV ({exc}); fix or re-export the file")


class CsvPackage:
    """A OneRoster CSV package on disk: a ``.zip`` file or a folder, with ``manifest.csv`` at its root."""

    def __init__(self, path: str | os.PathLike[str], *, source: str = "oneroster-csv") -> None:
        self.path = Path(path)
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, str] = {}
        self.properties: dict[str, str] = {}
        self.modes: dict[str, str] = {}
        self.version = "1.1"

    # ------------------------------------------------------------------ opening

    def open(self) -> CsvPackage:
        """Open the archive or folder and read ``manifest.csv``."""
        if not self.path.exists():
            raise ConfigurationError(
                f"{self.source}: {self.path} does not exist; set path to a OneRoster CSV zip or folder",
                source=self.source,
            )
        if self.path.is_dir():
            names = [p.name for p in self.path.iterdir() if p.is_file()]
            self._members = {n.lower(): n for n in names}
        else:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except zipfile.BadZipFile:
                raise ConfigurationError(
                    f"{self.source}: {self.path} is neither a folder nor a zip archive", source=self.source
                ) from None
            self._members = self._zip_members(self._zip.namelist())
        self._read_manifest()
        return self

    def _zip_members(self, names: list[str]) -> dict[str, str]:
        """Map lower-cased file names to members; a package zipped inside one folder is accepted too."""
        files = [n for n in names if not n.endswith("/")]
        prefix = ""
        if not any(n.lower() == "manifest.csv" for n in files):
            nested = [n for n in files if n.lower().endswith("/manifest.csv") and n.count("/") == 1]
            if len(nested) == 1:
                prefix = nested[0][: -len("manifest.csv")]
        return {
            n[len(prefix) :].lower(): n for n in files if n.startswith(prefix) and "/" not in n[len(prefix) :]
        }

    def close(self) -> None:
        """Close the archive."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __enter__(self) -> CsvPackage:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, name: str) -> bool:
        """Return whether ``{name}.csv`` is in the package."""
        return f"{name.lower()}.csv" in self._members

    def mode(self, name: str) -> str:
        """Return ``bulk``, ``delta`` or ``absent`` for ``{name}.csv`` as the manifest declares it."""
        return self.modes.get(name.lower(), "absent")

    @contextmanager
    def read(self, name: str) -> Iterator[CsvFile]:
        """Open ``{name}.csv`` for streaming (UTF-8, BOM stripped)."""
        member = self._members.get(f"{name.lower()}.csv")
        if member is None:
            raise ConfigurationError(
                f"{self.source}: {name}.csv is not in {self.path}; add it, or set file.{name},absent in "
                "manifest.csv",
                source=self.source,
            )
        if self._zip is not None:
            raw: Any = self._zip.open(member)
        else:
            raw = open(self.path / member, "rb")  # noqa: SIM115 - closed below
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        try:
            yield CsvFile(f"{name}.csv", text)
        finally:
            text.close()

    # ------------------------------------------------------------------ manifest

    def _read_manifest(self) -> None:
        if "manifest.csv" not in self._members:
            raise ConfigurationError(
                f"{self.source}: {self.path} has no manifest.csv at its root; a OneRoster CSV package needs "
                "one (rows propertyName,value such as oneroster.version,1.1 and file.users,bulk)",
                source=self.source,
            )
        with self.read("manifest") as f:
            for line, row in f:
                self._manifest_row(line, row)
        version = self.properties.get("oneroster.version", "1.1")
        if version not in VERSIONS:
            raise ConfigurationError(
                f"{self.source}: manifest.csv says oneroster.version,{version}; supported versions are "
                f"{', '.join(VERSIONS)}",
                source=self.source,
            )
        self.version = version

    def _manifest_row(self, line: int, row: list[str]) -> None:
        if len(row) < 2:
            raise ConfigurationError(
                f"{self.source}: manifest.csv line {line} needs two cells: propertyName,value",
                source=self.source,
            )
        name, value = row[0].strip(), row[1].strip()
        self.properties[name] = value
        if name.lower().startswith("file."):
            mode = value.lower()
            if mode not in MODES:
                raise ConfigurationError(
                    f"{self.source}: manifest.csv line {line}: {name} is {value!r}; "
                    "expected bulk, delta or absent",
                    source=self.source,
                )
            self.modes[name[5:].lower()] = mode

    def check(self) -> None:
        """Raise ConfigurationError if the manifest names a file the package lacks."""
        for name, mode in sorted(self.modes.items()):
            if mode != "absent" and not self.has(name):
                raise ConfigurationError(
                    f"{self.source}: manifest.csv declares file.{name},{mode} but {name}.csv is not in "
                    f"{self.path}; add {name}.csv or set file.{name},absent",
                    source=self.source,
                )


# --------------------------------------------------------------------------- fast readers


def record_builder(cls: type[T]) -> Callable[..., T]:
    """Return a constructor for a frozen, slotted record that takes every field positionally.

    It fills the slots directly instead of going through the frozen ``__init__`` (one guarded
    ``object.__setattr__`` per field), which halves the cost of building the millions of records a big
    district import makes. The result is the same record: equal, hashable and still frozen.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    setters = {f"_set_{n}": cls.__dict__[n].__set__ for n in names}
    args = ", ".join(names)
    body = "".join(f"    _set_{n}(obj, {n})\n" for n in names)
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls, **setters}
    exec(f"def build({args}):\n    obj = _new(_cls)\n{body}    return obj\n", namespace)  # noqa: S102
    build: Callable[..., T] = namespace["build"]
    build.__doc__ = f"Build a {cls.__name__} from all of its fields, in order."
    return build


_new_enrollment = record_builder(Enrollment)
_new_person = record_builder(Person)
_new_class = record_builder(Class)
_new_result = record_builder(Result)


class _Dates:
    """A ``YYYY-MM-DD`` parser with a bounded cache (a district has few distinct dates)."""

    def __init__(self) -> None:
        self.known: dict[str, date | None] = {"": None}

    def parse(self, text: str) -> date | None | bool:
        """Return the date, None for an empty cell, or False for anything the schema must judge."""
        found = self.known.get(text, False)
        if found is False:
            if len(text) != 10:
                return False
            try:
                found = date.fromisoformat(text)
            except ValueError:
                return False
            if len(self.known) < _DATE_CACHE_LIMIT:
                self.known[text] = found
        return found


def _datetimes() -> Callable[[str], datetime | None | bool]:
    """Return a cached datetime parser (the schema's own); False means the schema must judge the value."""
    cache: dict[str, datetime | None] = {"": None}

    def parse(text: str) -> datetime | None | bool:
        found = cache.get(text, False)
        if found is False:
            try:
                found = s.parse_datetime(text)
            except ValueError:
                return False
            if len(cache) < _DATE_CACHE_LIMIT:
                cache[text] = found
        return found

    return parse


FastReader = Callable[[list[str]], Any]


def _width(*indexes: int | None) -> int:
    return max(i for i in indexes if i is not None) + 1


def fast_enrollment(ix: Mapping[str, int]) -> FastReader:
    """Build the fast reader for ``enrollments.csv`` rows."""
    i_sid, i_class, i_user, i_role = ix["sourcedId"], ix["classSourcedId"], ix["userSourcedId"], ix["role"]
    i_status, i_primary, i_begin, i_end = (
        ix.get("status"),
        ix.get("primary"),
        ix.get("beginDate"),
        ix.get("endDate"),
    )
    width = _width(i_sid, i_class, i_user, i_role, i_status, i_primary, i_begin, i_end)
    roles, dates = s.ENROLLMENT_ROLES, _Dates()
    cached, parse = dates.known.get, dates.parse

    def read(row: list[str]) -> Enrollment | None:
        if len(row) < width:
            return None
        sid, cls, user, role = row[i_sid], row[i_class], row[i_user], roles.get(row[i_role])
        if not sid or not cls or not user or role is None:
            return None
        if i_status is not None and row[i_status] not in ("", ACTIVE):
            return None
        primary = _PRIMARY.get(row[i_primary]) if i_primary is not None else False
        begin = end = None
        if i_begin is not None:
            begin = cached(row[i_begin], False)
            if begin is False and (begin := parse(row[i_begin])) is False:
                return None
        if i_end is not None:
            end = cached(row[i_end], False)
            if end is False and (end := parse(row[i_end])) is False:
                return None
        if primary is None:
            return None
        return _new_enrollment(sid, cls, user, role, primary, begin, end, ACTIVE)

    return read


def fast_user(ix: Mapping[str, int]) -> FastReader:
    """Build the fast reader for ``users.csv`` rows (``role`` filled in from roles.csv for 1.2)."""
    i_sid, i_role = ix["sourcedId"], ix["role"]
    i_status, i_enabled = ix.get("status"), ix.get("enabledUser")
    i_given, i_family, i_email = ix.get("givenName"), ix.get("familyName"), ix.get("email")
    i_username, i_grades, i_agents = ix.get("username"), ix.get("grades"), ix.get("agentSourcedIds")
    width = _width(
        i_sid, i_role, i_status, i_enabled, i_given, i_family, i_email, i_username, i_grades, i_agents
    )
    roles, split = s.USER_ROLES, s.split_ids

    def read(row: list[str]) -> s.LoadedUser | None:
        if len(row) < width:
            return None
        sid, role = row[i_sid], roles.get(row[i_role])
        if not sid or role is None:
            return None
        if i_status is not None and row[i_status] not in ("", ACTIVE):
            return None
        enabled = _ENABLED.get(row[i_enabled]) if i_enabled is not None else True
        if enabled is None:
            return None
        person = _new_person(
            sid,
            role,
            row[i_given] if i_given is not None else "",
            row[i_family] if i_family is not None else "",
            (row[i_email] or None) if i_email is not None else None,
            (row[i_username] or None) if i_username is not None else None,
            sid,
            None,
            split(row[i_grades]) if i_grades is not None else (),
            enabled,
            ACTIVE,
        )
        return s.LoadedUser(person, split(row[i_agents]) if i_agents is not None else ())

    return read


def fast_class(ix: Mapping[str, int]) -> FastReader:
    """Build the fast reader for ``classes.csv`` rows."""
    i_sid, i_title, i_course, i_school = (
        ix["sourcedId"],
        ix["title"],
        ix["courseSourcedId"],
        ix["schoolSourcedId"],
    )
    i_status, i_terms, i_code = ix.get("status"), ix.get("termSourcedIds"), ix.get("classCode")
    width = _width(i_sid, i_title, i_course, i_school, i_status, i_terms, i_code)
    split = s.split_ids

    def read(row: list[str]) -> Class | None:
        if len(row) < width:
            return None
        sid, title, course, school = row[i_sid], row[i_title], row[i_course], row[i_school]
        if not sid or not title or not course or not school:
            return None
        if i_status is not None and row[i_status] not in ("", ACTIVE):
            return None
        return _new_class(
            sid,
            title,
            course,
            school,
            split(row[i_terms]) if i_terms is not None else (),
            (row[i_code] or None) if i_code is not None else None,
            sid,
            None,
            ACTIVE,
        )

    return read


def fast_result(ix: Mapping[str, int]) -> FastReader:
    """Build the fast reader for ``results.csv`` rows."""
    i_sid, i_item, i_student = ix["sourcedId"], ix["lineItemSourcedId"], ix["studentSourcedId"]
    i_state, i_status = ix["scoreStatus"], ix.get("status")
    i_score, i_date, i_comment = ix.get("score"), ix.get("scoreDate"), ix.get("comment")
    width = _width(i_sid, i_item, i_student, i_state, i_status, i_score, i_date, i_comment)
    states, datetimes = s.SCORE_STATUSES, _datetimes()

    def read(row: list[str]) -> Result | None:
        if len(row) < width:
            return None
        sid, item, student, state = row[i_sid], row[i_item], row[i_student], states.get(row[i_state])
        if not sid or not item or not student or state is None:
            return None
        if i_status is not None and row[i_status] not in ("", ACTIVE):
            return None
        score: float | None = None
        if i_score is not None and row[i_score]:
            try:
                score = float(row[i_score])
            except ValueError:
                return None
            if not math.isfinite(score):
                return None
        scored_at = datetimes(row[i_date]) if i_date is not None else None
        if scored_at is False:
            return None
        comment = (row[i_comment] or None) if i_comment is not None else None
        return _new_result(sid, student, item, None, score, None, scored_at, state, comment, ACTIVE)

    return read


# --------------------------------------------------------------------------- streaming a package


class _FileStats:
    def __init__(self) -> None:
        self.rejected = 0
        self.rejected_ids: set[str] = set()


class PackageReader:
    """Stream one package's records in dependency order, with markers, tombstones and rejections."""

    def __init__(self, package: CsvPackage, *, remember_students: int = 250_000) -> None:
        self.pkg = package
        self.source = package.source
        self.remember_students = remember_students

    def iter_items(self, scope: Scope = Scope.ALL) -> Iterator[Item]:
        """Yield the package's items for ``scope``: roster files, then gradebook content, then results."""
        self.pkg.check()
        if scope.includes(Scope.ROSTER):
            yield from self._plain("orgs", "org", s.OrgRowSchema())
            yield from self._plain("academicSessions", "academic_session", s.AcademicSessionRowSchema())
            yield from self._plain("courses", "course", s.CourseRowSchema())
            yield from self._plain("classes", "class", s.ClassRowSchema(), fast_class)
            yield from self._users()
            yield from self._plain("enrollments", "enrollment", s.EnrollmentRowSchema(), fast_enrollment)
        if scope.includes(Scope.CONTENT):
            categories: dict[str, str] = {}
            yield from self._categories(categories)
            yield from self._line_items(categories)
        if scope.includes(Scope.PROGRESS):
            yield from self._plain("results", "result", s.ResultRowSchema(), fast_result)

    # ------------------------------------------------------------------ generic

    def _rows(
        self,
        f: CsvFile,
        kind: str,
        schema: Schema,
        fast: FastReader | None,
        stats: _FileStats,
        fill: Callable[[list[str]], None] | None = None,
    ) -> Iterator[Any]:
        """Yield one loaded object, Tombstone or Rejected per row (the hot loop of every import)."""
        i_sid, i_status = f.index["sourcedId"], f.index.get("status")
        header, reader = f.header, f.reader
        previous = reader.line_num
        try:
            for row in reader:
                line, previous = previous + 1, reader.line_num
                if not row:
                    continue
                if fill is not None:
                    fill(row)
                if fast is not None:
                    loaded = fast(row)
                    if loaded is not None:
                        yield loaded
                        continue
                if (
                    i_status is not None
                    and len(row) > i_status
                    and row[i_status] not in ("", ACTIVE)
                    and s.normalise_status(row[i_status]) == TOBEDELETED
                    and len(row) > i_sid
                    and row[i_sid]
                ):
                    yield Tombstone(kind, row[i_sid])
                    continue
                data = dict(zip(header, row, strict=False))
                try:
                    yield schema.load(data)
                except ValidationError as exc:
                    field, reason = first_error(exc.messages)
                    record_id = data.get("sourcedId") or None
                    stats.rejected += 1
                    if record_id:
                        stats.rejected_ids.add(record_id)
                    yield Rejected(kind, record_id, field, f"{f.name} line {line}: {reason}")
        except (csv.Error, UnicodeDecodeError) as exc:
            raise _unreadable(f.name, previous + 1, exc) from None

    def _require(self, f: CsvFile, schema: Schema, skip: tuple[str, ...] = ()) -> None:
        """Raise ConfigurationError if the header lacks a column the schema requires."""
        for name, fld in schema.fields.items():
            column = fld.data_key or name
            if fld.required and column not in f.index and column not in skip:
                spec = (HEADERS_1_2 if self.pkg.version == "1.2" else HEADERS_1_1).get(f.name[:-4], ())
                raise ConfigurationError(
                    f"{self.source}: {f.name} has no {column!r} column; OneRoster {self.pkg.version} "
                    f"{f.name} columns are: {','.join(spec)}",
                    source=self.source,
                )

    def _plain(
        self,
        name: str,
        kind: str,
        schema: Schema,
        fast_factory: Callable[[Mapping[str, int]], FastReader] | None = None,
    ) -> Iterator[Item]:
        mode = self.pkg.mode(name)
        if mode == "absent":
            return
        stats = _FileStats()
        with self.pkg.read(name) as f:
            self._require(f, schema)
            fast = fast_factory(f.index) if fast_factory is not None else None
            yield from self._rows(f, kind, schema, fast, stats)
        if mode == "bulk" and not stats.rejected:
            yield Complete(kind)

    # ------------------------------------------------------------------ users and guardians

    def _read_roles(self, stats: _FileStats) -> tuple[dict[str, str], list[Rejected]]:
        """Read 1.2 ``roles.csv`` into a user → role map (a primary role wins over secondary ones)."""
        primary: dict[str, str] = {}
        other: dict[str, str] = {}
        rejected: list[Rejected] = []
        schema = s.RoleRowSchema()
        with self.pkg.read("roles") as f:
            self._require(f, schema)
            for line, row in f:
                data = dict(zip(f.header, row, strict=False))
                try:
                    role = schema.load(data)
                except ValidationError as exc:
                    field, reason = first_error(exc.messages)
                    stats.rejected += 1
                    rejected.append(
                        Rejected(
                            "person",
                            data.get("userSourcedId") or None,
                            field,
                            f"{f.name} line {line}: {reason}",
                        )
                    )
                    continue
                if role is not None:
                    target = primary if role.role_type == "primary" else other
                    target.setdefault(role.user_sourced_id, role.role)
        return {**other, **primary}, rejected

    def _users(self) -> Iterator[Item]:
        mode = self.pkg.mode("users")
        if mode == "absent":
            return
        schema = s.UserRowSchema()
        stats = _FileStats()
        roles: dict[str, str] | None = None
        if self.pkg.mode("roles") != "absent":
            roles, role_rejections = self._read_roles(stats)
            yield from role_rejections
        linker = GuardianLinker(
            complete=mode == "bulk",
            remember=self.remember_students,
            field="agentSourcedIds",
            where="users.csv",
        )
        with self.pkg.read("users") as f:
            fill = self._role_filler(f, roles)
            self._require(f, schema)
            fast = fast_user(f.index)
            reader = f.reader
            for loaded in self._rows(f, "person", schema, fast, stats, fill):
                if isinstance(loaded, s.LoadedUser):
                    linker.observe(loaded.person, loaded.agents, reader.line_num)
                    yield loaded.person
                else:
                    yield loaded
        if mode == "bulk" and not stats.rejected:
            yield Complete("person")
        students = self._student_agents(roles, stats.rejected_ids) if linker.overflowed else None
        yield from linker.links(students)
        if mode == "bulk" and not stats.rejected:
            # A link to an agent missing from users.csv cannot exist; it never blocks the marker.
            yield Complete("guardian_link")

    def _role_filler(self, f: CsvFile, roles: dict[str, str] | None) -> Callable[[list[str]], None] | None:
        """For 1.2 users.csv, add a ``role`` cell to every row from roles.csv."""
        if roles is None:
            if self.pkg.version == "1.2" and "role" not in f.index:
                raise ConfigurationError(
                    f"{self.source}: OneRoster 1.2 users.csv has no role column and the package has no "
                    "roles.csv; "
                    "add roles.csv and set file.roles,bulk in manifest.csv",
                    source=self.source,
                )
            return None
        i_sid = f.index["sourcedId"]
        width = len(f.header)
        f.add_column("role")

        def fill(row: list[str]) -> None:
            if len(row) < width:
                row.extend([""] * (width - len(row)))
            del row[width:]
            row.append(roles.get(row[i_sid], ""))

        return fill

    def _student_agents(self, roles: dict[str, str] | None, rejected: set[str]) -> Iterator[StudentAgents]:
        """Read users.csv again for the student side of agent links (keeps memory flat on big districts)."""
        with self.pkg.read("users") as f:
            i_sid, i_agents, i_status = (
                f.index["sourcedId"],
                f.index.get("agentSourcedIds"),
                f.index.get("status"),
            )
            i_role = f.index.get("role") if roles is None else None
            if i_agents is None:
                return
            for line, row in f:
                if len(row) <= i_agents or not row[i_agents] or not row[i_sid]:
                    continue
                sid = row[i_sid]
                if sid in rejected:
                    continue
                if (
                    i_status is not None
                    and row[i_status] not in ("", ACTIVE)
                    and s.normalise_status(row[i_status]) == TOBEDELETED
                ):
                    continue
                if roles is not None:
                    role = roles.get(sid)
                else:
                    raw = row[i_role] if i_role is not None and len(row) > i_role else ""
                    role = s.lookup(s.USER_ROLES, s._USER_ROLES_FOLDED, raw)
                if role == "student":
                    yield line, sid, s.split_ids(row[i_agents])

    # ------------------------------------------------------------------ gradebook

    def _categories(self, titles: dict[str, str]) -> Iterator[Item]:
        """Read categories.csv into ``titles``: categories name activities and have no record of their own."""
        if self.pkg.mode("categories") == "absent":
            return
        schema = s.CategoryRowSchema()
        stats = _FileStats()
        with self.pkg.read("categories") as f:
            self._require(f, schema)
            for loaded in self._rows(f, "category", schema, None, stats):
                if isinstance(loaded, s.Category):
                    titles[loaded.sourced_id] = loaded.title
                elif isinstance(loaded, Rejected):
                    yield loaded

    def _line_items(self, categories: Mapping[str, str]) -> Iterator[Item]:
        mode = self.pkg.mode("lineItems")
        if mode == "absent":
            return
        schema = s.LineItemRowSchema()
        stats = _FileStats()
        with self.pkg.read("lineItems") as f:
            self._require(f, schema)
            for loaded in self._rows(f, "activity", schema, None, stats):
                if isinstance(loaded, Activity) and loaded.category in categories:
                    loaded = replace(loaded, category=categories[loaded.category])
                yield loaded
        if mode == "bulk" and not stats.rejected:
            yield Complete("activity")


def iter_package(
    path: str | os.PathLike[str], scope: Scope = Scope.ALL, *, source: str = "oneroster-csv"
) -> Iterator[Item]:
    """Open the package at ``path`` and stream its items for ``scope``."""
    with CsvPackage(path, source=source) as package:
        yield from PackageReader(package).iter_items(scope)
