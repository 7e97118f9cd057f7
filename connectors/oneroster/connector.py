"""The OneRoster connectors: REST (1.1 signed, 1.2 client credentials) and CSV packages, one contract.

Records stream in dependency order: orgs, academic sessions, courses, classes, people, guardian links,
enrollments, then activities (line items) and finally results. A full listing ends each kind with
``Complete`` (unless a row of that kind was rejected, so a bad row can never remove anything); a delta
(``since`` set, or a CSV delta file) emits no ``Complete`` and turns ``tobedeleted`` into ``Tombstone``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from connectors.base import (
    TOBEDELETED,
    Activity,
    Capability,
    Complete,
    ConfigurationError,
    Item,
    NotFound,
    PushResult,
    Rejected,
    RemoteRejected,
    Scope,
    ScoreWrite,
    Tombstone,
    Write,
    first_error,
)
from connectors.http import HttpClient
from connectors.oneroster import schemas as s
from connectors.oneroster.client import ClientCredentials, OneRosterClient, oauth1_signer, scopes_for
from connectors.oneroster.csvpkg import iter_package
from connectors.oneroster.guardians import GuardianLinker

READ = frozenset({Capability.READ_ROSTER, Capability.READ_CONTENT, Capability.READ_PROGRESS})

#: ScoreWrite.grading_progress (AGS vocabulary) → OneRoster scoreStatus.
SCORE_STATUS_FOR_PROGRESS = {
    "FullyGraded": "fully graded",
    "Pending": "submitted",
    "PendingManual": "submitted",
    "NotReady": "not submitted",
    "Failed": "not submitted",
}


# --------------------------------------------------------------------------- configuration


class _SourceConfig(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(required=True, validate=validate.Length(min=1))
    kind = fields.String(required=True)


class RestConfigSchema(_SourceConfig):
    """Keys of a ``oneroster-rest`` source in the district file (secrets already resolved)."""

    base_url = fields.String(
        required=True, validate=validate.URL(schemes={"http", "https"}, require_tld=False)
    )
    version = fields.String(required=True, validate=validate.OneOf(["1.1", "1.2"]))
    client_id = fields.String(required=True, validate=validate.Length(min=1))
    client_secret = fields.String(required=True, validate=validate.Length(min=1))
    token_url = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.URL(schemes={"http", "https"}, require_tld=False),
    )
    auth = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["oauth1", "oauth2"]))
    signature_method = fields.String(
        load_default="HMAC-SHA256", validate=validate.OneOf(["HMAC-SHA256", "HMAC-SHA1"])
    )
    scope = fields.String(load_default=None, allow_none=True)
    page_size = fields.Integer(load_default=100, validate=validate.Range(1, 10_000))
    demographics = fields.Boolean(load_default=False)
    write_results = fields.Boolean(load_default=False)
    gradebook = fields.Boolean(load_default=True)
    rostering_url = fields.String(load_default=None, allow_none=True)
    gradebook_url = fields.String(load_default=None, allow_none=True)
    timeout_seconds = fields.Float(load_default=30.0, validate=validate.Range(1.0, 600.0))

    @validates_schema
    def _token_url(self, data: Mapping[str, Any], **kwargs: Any) -> None:
        auth = data.get("auth") or ("oauth1" if data.get("version") == "1.1" else "oauth2")
        if auth == "oauth2" and not data.get("token_url"):
            raise ValidationError("required for OAuth 2.0 client credentials (OneRoster 1.2)", "token_url")
        if data.get("version") == "1.2" and auth == "oauth1":
            raise ValidationError("OneRoster 1.2 uses OAuth 2.0 client credentials, not oauth1", "auth")


class CsvConfigSchema(_SourceConfig):
    """Keys of a ``oneroster-csv`` source: where the package (zip or folder) is dropped."""

    path = fields.String(required=True, validate=validate.Length(min=1))


def _load_config(schema: Schema, cfg: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(dict(cfg))
    except ValidationError as exc:
        name = cfg.get("name") or "oneroster"
        field, reason = first_error(exc.messages)
        raise ConfigurationError(f"source {name!r}: {field}: {reason}", source=str(name)) from None


def service_urls(base_url: str, version: str) -> tuple[str, str]:
    """Return the (rostering, gradebook) roots for ``base_url`` as a district writes it.

    A full service root is used as given (``…/ims/oneroster/v1p1``, ``…/ims/oneroster/rostering/v1p2`` or
    a single ``…/ims/oneroster/v1p2``); a host or ``…/ims/oneroster`` prefix gets the standard paths.
    """
    base = base_url.rstrip("/")
    if version == "1.1":
        if base.endswith("/v1p1"):
            return base, base
        root = base if base.endswith("/ims/oneroster") else f"{base}/ims/oneroster"
        return f"{root}/v1p1", f"{root}/v1p1"
    if base.endswith("/rostering/v1p2"):
        root = base[: -len("/rostering/v1p2")]
        return base, f"{root}/gradebook/v1p2"
    if base.endswith("/v1p2"):
        return base, base
    root = base if base.endswith("/ims/oneroster") else f"{base}/ims/oneroster"
    return f"{root}/rostering/v1p2", f"{root}/gradebook/v1p2"


# --------------------------------------------------------------------------- connectors


class OneRosterConnector:
    """A OneRoster source; :meth:`from_config` returns the REST or CSV connector its kind names."""

    kind: str = "oneroster"
    name: str
    capabilities: frozenset[Capability] = READ

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> OneRosterConnector:
        """Build the connector for one ``sources`` entry of the district file."""
        kind = cfg.get("kind")
        if kind == "oneroster-rest":
            return OneRosterRestConnector.from_config(cfg, session=session, sleep=sleep, clock=clock)
        if kind == "oneroster-csv":
            return OneRosterCsvConnector.from_config(cfg)
        raise ConfigurationError(
            f"source {cfg.get('name')!r}: kind {kind!r} is not oneroster-rest or oneroster-csv",
            source=cfg.get("name"),
        )

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream canonical records (parents before children), markers and rejections."""
        raise NotImplementedError

    def push(self, write: Write) -> PushResult:
        """Apply one write remotely."""
        raise ConfigurationError(f"{self.name}: this OneRoster source takes no writes", source=self.name)


class OneRosterCsvConnector(OneRosterConnector):
    """A OneRoster 1.0/1.1/1.2 CSV package (zip or folder) dropped where the district file points."""

    kind = "oneroster-csv"
    capabilities = READ

    def __init__(self, name: str, path: str | Path) -> None:
        self.name = name
        self.path = Path(path)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], **_: Any) -> OneRosterCsvConnector:  # type: ignore[override]
        """Build the connector from a ``oneroster-csv`` source entry."""
        conf = _load_config(CsvConfigSchema(), cfg)
        return cls(conf["name"], Path(conf["path"]).expanduser())

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream the package; its manifest says, file by file, bulk or delta (``since`` is unused)."""
        return iter_package(self.path, scope, source=self.name)


class OneRosterRestConnector(OneRosterConnector):
    """A OneRoster 1.1 or 1.2 REST provider."""

    kind = "oneroster-rest"

    def __init__(
        self,
        name: str,
        client: OneRosterClient,
        *,
        demographics: bool = False,
        write_results: bool = False,
        gradebook: bool = True,
    ) -> None:
        self.name = name
        self.client = client
        self.demographics = demographics
        self.write_results = write_results
        self.gradebook = gradebook
        caps = {Capability.READ_ROSTER, Capability.READ_DELTA}
        if gradebook:
            caps |= {Capability.READ_CONTENT, Capability.READ_PROGRESS}
        if write_results:
            caps.add(Capability.WRITE_SCORES)
        self.capabilities = frozenset(caps)

    @classmethod
    def from_config(
        cls,
        cfg: Mapping[str, Any],
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> OneRosterRestConnector:
        """Build the connector from a ``oneroster-rest`` source entry."""
        conf = _load_config(RestConfigSchema(), cfg)
        name, version = conf["name"], conf["version"]
        rostering, gradebook = service_urls(conf["base_url"], version)
        rostering = conf["rostering_url"] or rostering
        gradebook = conf["gradebook_url"] or gradebook
        timeout = (5.0, conf["timeout_seconds"])
        auth_kind = conf["auth"] or ("oauth1" if version == "1.1" else "oauth2")
        auth: Any
        if auth_kind == "oauth1":
            auth = oauth1_signer(conf["client_id"], conf["client_secret"], conf["signature_method"])
        else:
            scope = conf["scope"]
            if scope is None and version == "1.2":
                scope = scopes_for(demographics=conf["demographics"], write_results=conf["write_results"])
            token_http = HttpClient("", source=name, timeout=timeout, sleep=sleep, session=session)
            auth = ClientCredentials(
                token_http,
                conf["token_url"],
                conf["client_id"],
                conf["client_secret"],
                scope=scope,
                clock=clock,
            )
        http = HttpClient(
            rostering,
            source=name,
            auth=auth,
            timeout=timeout,
            sleep=sleep,
            session=session,
            headers={"Accept": "application/json"},
        )
        client = OneRosterClient(
            http,
            version=version,
            rostering_url=rostering,
            gradebook_url=gradebook,
            page_size=conf["page_size"],
        )
        return cls(
            name,
            client,
            demographics=conf["demographics"],
            write_results=conf["write_results"],
            gradebook=conf["gradebook"],
        )

    # ------------------------------------------------------------------ pull

    def pull(self, scope: Scope = Scope.ALL, since: datetime | None = None) -> Iterator[Item]:
        """Stream the provider's records; ``since`` asks only for changes (and emits no Complete markers)."""
        c = self.client
        if scope.includes(Scope.ROSTER):
            yield from self._listing("org", c.iter_orgs(since), s.OrgSchema(), since)
            yield from self._listing(
                "academic_session", c.iter_academic_sessions(since), s.AcademicSessionSchema(), since
            )
            yield from self._listing("course", c.iter_courses(since), s.CourseSchema(), since)
            yield from self._listing("class", c.iter_classes(since), s.ClassSchema(), since)
            yield from self._users(since)
            yield from self._listing("enrollment", c.iter_enrollments(since), s.EnrollmentSchema(), since)
        if not self.gradebook:
            return
        if scope.includes(Scope.CONTENT):
            titles: dict[str, str] = {}
            yield from self._categories(titles)
            line_items = self._gradebook("lineItems", c.iter_line_items(since))
            for item in self._listing("activity", line_items, s.LineItemSchema(), since):
                if isinstance(item, Activity) and item.category in titles:
                    item = _with_category(item, titles[item.category])
                yield item
        if scope.includes(Scope.PROGRESS):
            results = self._gradebook("results", c.iter_results(since))
            yield from self._listing("result", results, s.ResultSchema(), since)

    def _categories(self, titles: dict[str, str]) -> Iterator[Item]:
        """Read every category into ``titles`` (a short list, always read whole; optional for providers)."""
        try:
            for item in self._listing(
                "category", self.client.iter_categories(), s.CategorySchema(), None, markers=False
            ):
                if isinstance(item, s.Category):
                    titles[item.sourced_id] = item.title
                elif isinstance(item, Rejected):
                    yield item
        except NotFound:
            titles.clear()  # activities keep their category's sourcedId

    def _gradebook(self, collection: str, objects: Iterator[Any]) -> Iterator[Any]:
        """Read a gradebook collection; a provider without the gradebook service gets a clear fix."""
        try:
            yield from objects
        except NotFound as exc:
            raise ConfigurationError(
                f"{self.name}: the provider has no gradebook service (GET /{collection} was not found); set "
                "gradebook = false for this source to sync rosters only",
                source=self.name,
                status=exc.status,
            ) from exc

    def _listing(
        self,
        kind: str,
        objects: Iterable[Any],
        schema: Schema,
        since: datetime | None,
        *,
        markers: bool = True,
    ) -> Iterator[Any]:
        """Validate and translate one collection; end a full listing without rejections with Complete."""
        rejected = 0
        for obj in objects:
            if not isinstance(obj, Mapping):
                rejected += 1
                yield Rejected(kind, None, None, f"expected a JSON object, got {type(obj).__name__}")
                continue
            sourced_id = obj.get("sourcedId")
            sourced_id = sourced_id if isinstance(sourced_id, str) and sourced_id else None
            if since is not None and _unchanged_since(obj.get("dateLastModified"), since):
                continue  # a provider that ignores the filter sends everything; keep only the delta
            status = obj.get("status")
            if sourced_id and isinstance(status, str) and s.normalise_status(status) == TOBEDELETED:
                yield Tombstone(kind, sourced_id)
                continue
            try:
                loaded = schema.load(obj)
            except ValidationError as exc:
                field, reason = first_error(exc.messages)
                rejected += 1
                yield Rejected(kind, sourced_id, field, reason)
                continue
            yield loaded
        if markers and since is None and not rejected:
            yield Complete(kind)

    def _users(self, since: datetime | None) -> Iterator[Item]:
        """Stream users, then the guardian links their agents describe."""
        linker = GuardianLinker(complete=since is None, field="agents", where="/users")
        complete = True
        for item in self._listing("person", self.client.iter_users(since), s.UserSchema(), since):
            if isinstance(item, s.LoadedUser):
                linker.observe(item.person, item.agents)
                yield item.person
            else:
                if isinstance(item, Rejected):
                    complete = False
                yield item
        yield from linker.links()
        if since is None and complete:
            yield Complete("guardian_link")

    def iter_demographics(self, since: datetime | None = None) -> Iterator[s.Demographics | Rejected]:
        """Stream demographics; only where the district has granted them (otherwise never requested)."""
        if not self.demographics:
            raise ConfigurationError(
                f"{self.name}: demographics are not granted for this source; set "
                "demographics = true once the district allows it",
                source=self.name,
            )
        for item in self._listing(
            "demographics", self.client.iter_demographics(since), s.DemographicsSchema(), since, markers=False
        ):
            if isinstance(item, s.Demographics | Rejected):
                yield item

    # ------------------------------------------------------------------ push

    def push(self, write: Write) -> PushResult:
        """Write a score into the SIS gradebook as a OneRoster result (created or replaced, idempotently)."""
        if not isinstance(write, ScoreWrite):
            raise ConfigurationError(f"{self.name}: OneRoster accepts score writes only", source=self.name)
        if not self.write_results:
            raise ConfigurationError(f"{self.name}: write_results is off for this source", source=self.name)
        sourced_id = self._result_id(write)
        result = self._result(sourced_id, write)
        response = self.client.put_result(sourced_id, result)
        return PushResult(
            remote_id=sourced_id,
            detail={
                "status": response.status_code,
                "scoreStatus": result["scoreStatus"],
                "score": result.get("score"),
            },
        )

    def _result_id(self, write: ScoreWrite) -> str:
        """Return the sourcedId of the SIS's result for this student and line item, or a stable new one."""
        try:
            for obj in self.client.iter_student_results(write.class_sourced_id, write.person_sourced_id):
                ref = obj.get("lineItem") if isinstance(obj, Mapping) else None
                if isinstance(ref, Mapping) and ref.get("sourcedId") == write.activity_sourced_id:
                    found = obj.get("sourcedId")
                    if isinstance(found, str) and found:
                        return found
        except (NotFound, RemoteRejected):
            pass  # the provider cannot list a student's results; a stable id keeps the write idempotent
        key = f"oneroster-result:{write.activity_sourced_id}:{write.person_sourced_id}"
        return f"trailmark-{uuid.uuid5(uuid.NAMESPACE_URL, key)}"

    def _result(self, sourced_id: str, write: ScoreWrite) -> dict[str, Any]:
        status = SCORE_STATUS_FOR_PROGRESS.get(write.grading_progress, "submitted")
        if write.score_given is None and status == "fully graded":
            status = "not submitted"
        stamp = s.format_datetime(write.timestamp)
        result: dict[str, Any] = {
            "sourcedId": sourced_id,
            "status": "active",
            "dateLastModified": stamp,
            "lineItem": {"sourcedId": write.activity_sourced_id, "type": "lineItem"},
            "student": {"sourcedId": write.person_sourced_id, "type": "user"},
            "scoreStatus": status,
            "scoreDate": stamp if self.client.version == "1.2" else stamp[:10],
        }
        if self.client.version == "1.2":
            result["class"] = {"sourcedId": write.class_sourced_id, "type": "class"}
        if write.score_given is not None:
            result["score"] = write.score_given
        if write.comment:
            result["comment"] = write.comment
        return result

    def close(self) -> None:
        """Release the HTTP connections."""
        self.client.http.close()


def _unchanged_since(value: Any, since: datetime) -> bool:
    """Return whether a ``dateLastModified`` is known to be at or before ``since``."""
    if not isinstance(value, str) or not value:
        return False
    try:
        modified = s.parse_datetime(value)
    except ValueError:
        return False
    if since.tzinfo is None:
        return modified.replace(tzinfo=None) <= since
    return modified <= since


def _with_category(activity: Activity, title: str) -> Activity:
    return replace(activity, category=title)
