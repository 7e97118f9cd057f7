"""Compiled Canvas loaders: equal to marshmallow on every row they accept, marshmallow's own answer otherwise."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, post_load, validate

from connectors.base import first_error
from connectors.canvas import schemas
from tests.connectors.canvas.canvas_support import FIXTURES, fixture

# every shared schema with the fixtures whose rows (or row) it loads
ROWS: dict[str, tuple[Schema, list[str]]] = {
    "account": (schemas.ACCOUNT, ["account.json"]),
    "course": (schemas.COURSE, ["courses_page1.json", "courses_page2.json", "courses_malformed.json"]),
    "enrollment": (schemas.ENROLLMENT, ["enrollments_101_page1.json", "enrollments_101_page2.json",
                                        "enrollments_101_test_student.json", "enrollments_102.json",
                                        "enrollments_102_malformed.json"]),
    "module": (schemas.MODULE, ["modules_101.json"]),
    "module_item": (schemas.MODULE_ITEM, ["module_items_202.json"]),
    "assignment": (schemas.ASSIGNMENT, ["assignments_101.json", "assignment_802.json"]),
    "outcome_link": (schemas.OUTCOME_LINK, ["outcome_group_links_101.json"]),
    "submission": (schemas.SUBMISSION, ["submissions_101_page1.json", "submissions_101_page2.json",
                                        "submission_graded.json"]),
    "outcome_result": (schemas.OUTCOME_RESULT, ["outcome_results_101.json"]),
    "token": (schemas.TOKEN, ["oauth_token.json"]),
}


def rows_of(names: list[str]) -> list[Any]:
    rows: list[Any] = []
    for name in names:
        payload = fixture(name)
        if isinstance(payload, dict) and "outcome_results" in payload:
            payload = payload["outcome_results"]
        rows.extend(payload if isinstance(payload, list) else [payload])
    return rows


def plain(value: Any) -> Any:
    """A comparable form: dicts as sorted items, NaN as text."""
    if isinstance(value, dict):
        return sorted((k, plain(v)) for k, v in value.items())
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def outcome(load: Any) -> tuple[str, Any]:
    try:
        return "ok", plain(load())
    except ValidationError as exc:
        return "rejected", exc.messages


def assert_same(schema: Schema, row: Any) -> None:
    assert outcome(lambda: schemas.load(schema, row)) == outcome(lambda: schema.load(row))


def test_fixtures_cover_every_shared_schema() -> None:
    shared = {name for name, value in vars(schemas).items() if isinstance(value, schemas._Base)}
    assert shared == {name.upper() for name in ROWS}
    assert all((FIXTURES / f).exists() for _, names in ROWS.values() for f in names)


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_compiled_loader_equals_marshmallow_on_documented_payloads(kind: str) -> None:
    schema, names = ROWS[kind]
    assert schema.fast_load is not None
    rows = rows_of(names)
    assert rows
    for row in rows:
        assert_same(schema, row)


def test_well_formed_rows_take_the_compiled_path() -> None:
    row = rows_of(["enrollments_102.json"])[0]
    assert schemas.ENROLLMENT.fast_load(row) == schemas.ENROLLMENT.load(row)
    course = rows_of(["courses_page1.json"])[0]  # dates are parsed by the marshmallow field itself
    assert course["start_at"] and schemas.COURSE.fast_load(course) == schemas.COURSE.load(course)


def test_rows_the_compiled_loader_refuses_are_loaded_by_marshmallow() -> None:
    row = {**rows_of(["enrollments_102.json"])[0], "user_id": " 501 "}  # a padded string id
    with pytest.raises(schemas.NeedsMarshmallow):
        schemas.ENROLLMENT.fast_load(row)
    assert schemas.load(schemas.ENROLLMENT, row)["user_id"] == "501"


def test_malformed_rows_are_rejected_with_marshmallows_field_and_reason() -> None:
    reasons = []
    for schema, name in ((schemas.ENROLLMENT, "enrollments_102_malformed.json"),
                         (schemas.COURSE, "courses_malformed.json")):
        for row in rows_of([name]):
            try:
                schema.load(row)
            except ValidationError as expected:
                with pytest.raises(ValidationError) as got:
                    schemas.load(schema, row)
                assert got.value.messages == expected.messages
                reasons.append(first_error(got.value.messages))
    assert len(reasons) >= 2


# --------------------------------------------------------------------------- mutated rows

ODD_VALUES = [None, True, False, 0, 1, -7, 2**60, 2**70, 1.5, -0.0, float("nan"), float("inf"), "", "12",
              " 12 ", "١٢", "abc", "2024-08-20T06:00:00Z", "2024-08-20", "not a date", b"bytes", [], [1, "2"],
              {}, {"id": 5}, {"id": "x"}, "StudentEnrollment", "average", "submitted"]
KINDS = sorted(ROWS)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[Schema, Any]:
    schema, names = ROWS[draw(st.sampled_from(KINDS))]
    rows = [r for r in rows_of(names) if isinstance(r, dict)]
    row = draw(st.sampled_from(rows))
    for _ in range(draw(st.integers(1, 4))):
        row = mutate(draw, row)
    return schema, row


def mutate(draw: st.DrawFn, node: Any) -> Any:
    """Return ``node`` with one key dropped or one value replaced, somewhere inside it."""
    if isinstance(node, list) and node and draw(st.booleans()):
        i = draw(st.integers(0, len(node) - 1))
        return [*node[:i], mutate(draw, node[i]), *node[i + 1:]]
    if not isinstance(node, dict) or not node:
        return draw(st.sampled_from(ODD_VALUES))
    key = draw(st.sampled_from(sorted(node)))
    copy = dict(node)
    action = draw(st.sampled_from(["drop", "replace", "descend"]))
    if action == "drop":
        del copy[key]
    elif action == "replace":
        copy[key] = draw(st.sampled_from(ODD_VALUES))
    else:
        copy[key] = mutate(draw, copy[key])
    return copy


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_compiled_loader_never_disagrees_with_marshmallow(case: tuple[Schema, Any]) -> None:
    schema, row = case
    assert_same(schema, row)


# --------------------------------------------------------------------------- what is not compiled


def test_schemas_needing_marshmallows_machinery_are_not_compiled() -> None:
    class Hooked(Schema):
        class Meta:
            unknown = EXCLUDE

        id = fields.Integer()

        @post_load
        def wrap(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            return {"wrapped": data}

    class Keeps(Schema):
        class Meta:
            unknown = INCLUDE

        id = fields.Integer()

    class Dotted(Schema):
        class Meta:
            unknown = EXCLUDE

        id = fields.Integer(attribute="a.b")

    assert schemas.compile_loader(Hooked()) is None
    assert schemas.compile_loader(Keeps()) is None
    assert schemas.compile_loader(Dotted()) is None
    assert schemas.compile_loader(schemas.EnrollmentSchema(many=True)) is None
    assert schemas.compile_loader(schemas.EnrollmentSchema(partial=True)) is None


def test_fields_it_does_not_specialise_defer_to_the_field() -> None:
    class Odd(Schema):
        class Meta:
            unknown = EXCLUDE

        when = fields.Date(allow_none=True, load_default=None)
        email = fields.Email(required=True)
        name = fields.String(load_default="", pre_load=[str.strip])
        grade = fields.String(validate=[validate.Length(max=3), lambda v: v != "F"], load_default=None)
        key = fields.String(data_key="Key", load_default=None)

    loader = schemas.compile_loader(Odd())
    assert loader is not None
    row = {"when": "2024-08-20", "email": "a@b.org", "name": "  Ada ", "grade": "A", "Key": "k", "x": 1}
    assert loader(row) == Odd().load(row)
    for other in ({**row, "email": "nope"}, {**row, "grade": "F"}, {**row, "grade": "ABCD"},
                  {**row, "when": "soon"}, {k: v for k, v in row.items() if k != "email"}, {**row, "name": None}):
        try:
            expected = Odd().load(other)
        except ValidationError:
            with pytest.raises(schemas.NeedsMarshmallow):
                loader(other)
        else:
            assert loader(other) == expected
