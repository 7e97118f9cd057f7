"""OneRoster schemas: vocabularies, lenient values, and REST and CSV shapes loading into the same records."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from marshmallow import ValidationError

from connectors.base import Enrollment, Person, first_error
from connectors.oneroster import schemas as s


@pytest.mark.parametrize(
    ("raw", "role"),
    [
        ("student", "student"),
        ("Teacher", "teacher"),
        ("parent", "parent"),
        ("guardian", "guardian"),
        ("relative", "relative"),
        ("aide", "aide"),
        ("proctor", "aide"),
        ("counselor", "aide"),
        ("administrator", "administrator"),
        ("districtAdministrator", "administrator"),
        ("siteadministrator", "administrator"),
        ("principal", "administrator"),
    ],
)
def test_user_roles_are_normalised(raw: str, role: str) -> None:
    loaded = s.UserRowSchema().load({"sourcedId": "u", "role": raw})
    assert loaded.person.role == role


def test_unknown_user_role_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        s.UserRowSchema().load({"sourcedId": "u", "role": "wizard"})
    assert first_error(err.value.messages) == ("role", "unknown role 'wizard'")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("", "active"),
        ("active", "active"),
        ("tobedeleted", "tobedeleted"),
        ("inactive", "tobedeleted"),
        ("Active", "active"),
        ("bogus", None),
    ],
)
def test_status_vocabulary(raw: str, status: str | None) -> None:
    assert s.normalise_status(raw) == status


def test_split_ids_trims_and_deduplicates() -> None:
    assert s.split_ids("") == ()
    assert s.split_ids("a") == ("a",)
    assert s.split_ids(" a , b,,a ") == ("a", "b")
    assert s.split_ids("a,b") == ("a", "b")


def test_datetimes_are_utc_and_dates_accept_datetimes() -> None:
    assert s.parse_datetime("2026-02-01T10:00:00.000Z") == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert s.parse_datetime("2026-02-01T11:00:00+01:00") == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert s.parse_datetime("2026-02-01") == datetime(2026, 2, 1, tzinfo=UTC)
    assert s.parse_date("2026-02-01T23:00:00Z") == date(2026, 2, 1)
    eastern = timezone(timedelta(hours=-5))
    assert (
        s.format_datetime(datetime(2026, 2, 1, 5, 0, 0, 123456, tzinfo=eastern)) == "2026-02-01T10:00:00.123Z"
    )


def test_rest_and_csv_shapes_load_into_the_same_record() -> None:
    rest = s.EnrollmentSchema().load(
        {
            "sourcedId": "e1",
            "status": "active",
            "dateLastModified": "2026-01-01T00:00:00.000Z",
            "user": {"href": "https://x/users/u1", "sourcedId": "u1", "type": "user"},
            "class": {"href": "https://x/classes/c1", "sourcedId": "c1", "type": "class"},
            "school": {"sourcedId": "s1", "type": "org"},
            "role": "student",
            "primary": "false",
            "beginDate": "2025-08-25",
            "endDate": "2026-06-12",
        }
    )
    row = s.EnrollmentRowSchema().load(
        {
            "sourcedId": "e1",
            "status": "",
            "dateLastModified": "",
            "classSourcedId": "c1",
            "schoolSourcedId": "s1",
            "userSourcedId": "u1",
            "role": "student",
            "primary": "false",
            "beginDate": "2025-08-25",
            "endDate": "2026-06-12",
        }
    )
    assert rest == row == Enrollment("e1", "c1", "u1", "student", False, date(2025, 8, 25), date(2026, 6, 12))


def test_rest_reference_must_carry_a_sourced_id() -> None:
    with pytest.raises(ValidationError) as err:
        s.EnrollmentSchema().load(
            {"sourcedId": "e1", "user": {"href": "x"}, "class": {"sourcedId": "c"}, "role": "student"}
        )
    assert first_error(err.value.messages) == ("user", "expected a reference object with a sourcedId")


def test_v1p2_user_prefers_the_primary_role_and_ignores_unknown_fields() -> None:
    loaded = s.UserSchema().load(
        {
            "sourcedId": "t1",
            "enabledUser": True,
            "givenName": "Nora",
            "familyName": "Kim",
            "pronouns": "she/her",
            "roles": [{"roleType": "secondary", "role": "aide"}, {"roleType": "primary", "role": "teacher"}],
            "userProfiles": [{"profileId": "p", "profileType": "lms"}],
            "metadata": {"x": 1},
        }
    )
    assert loaded == s.LoadedUser(Person("t1", "teacher", "Nora", "Kim", sis_id="t1"), ())


def test_nested_errors_name_the_path() -> None:
    with pytest.raises(ValidationError) as err:
        s.UserSchema().load({"sourcedId": "u", "roles": [{"roleType": "primary", "role": "wizard"}]})
    assert first_error(err.value.messages) == ("roles.0.role", "unknown role 'wizard'")
