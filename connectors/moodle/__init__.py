"""Moodle Web Services connector (REST, ``wstoken``): rosters, structure, grades, competencies, messages."""

from connectors.moodle.availability import (
    RestrictionInstructions,
    availability_grade_conditions,
    requires_grade,
    restriction_instructions,
)
from connectors.moodle.client import MoodleClient, encode_params
from connectors.moodle.connector import ActivityCompletion, MoodleConnector

__all__ = [
    "ActivityCompletion",
    "MoodleClient",
    "MoodleConnector",
    "RestrictionInstructions",
    "availability_grade_conditions",
    "encode_params",
    "requires_grade",
    "restriction_instructions",
]
