"""Moodle restrict-access ("availability") trees: read grade conditions, write the rule a teacher sets.

A tree is ``{"op": "&"|"|"|"!&"|"!|", "c": [condition | subtree, ...], "showc"|"show": ...}``; a grade
condition is ``{"type": "grade", "id": <grade item id>, "min": <percent>, "max": <percent>}`` with the
score taken as a percentage of the item's range, ``min`` inclusive and ``max`` exclusive. No core web
service can write these trees, so a gate is set once by a teacher from ``restriction_instructions``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.base import Activity, Module

_NEGATED = ("!&", "!|")


def _tree(availability: str | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if availability is None or availability == "":
        return None
    if isinstance(availability, Mapping):
        return availability
    try:
        parsed = json.loads(availability)
    except ValueError:
        return None
    return parsed if isinstance(parsed, Mapping) else None


def _number(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def availability_grade_conditions(
    availability: str | Mapping[str, Any] | None,
) -> list[tuple[int, float | None, float | None]]:
    """Return ``(grade_item_id, min, max)`` of every grade condition not under a negation, in tree order."""
    found: list[tuple[int, float | None, float | None]] = []

    def walk(node: Any, negated: bool) -> None:
        if not isinstance(node, Mapping):
            return
        if "type" in node:
            if node.get("type") == "grade" and not negated:
                try:
                    item = int(node["id"])
                except (KeyError, TypeError, ValueError):
                    return
                found.append((item, _number(node.get("min")), _number(node.get("max"))))
            return
        inner = negated or node.get("op") in _NEGATED
        for child in node.get("c") or ():
            walk(child, inner)

    walk(_tree(availability), False)
    return found


def requires_grade(availability: str | Mapping[str, Any] | None, grade_item_id: int | str,
                   min_percent: float) -> bool:
    """Return whether every way through the tree demands ``grade_item_id`` ≥ ``min_percent``."""
    item = int(grade_item_id)

    def required(node: Any) -> bool:
        if not isinstance(node, Mapping):
            return False
        if "type" in node:
            if node.get("type") != "grade":
                return False
            try:
                same = int(node["id"]) == item
            except (KeyError, TypeError, ValueError):
                return False
            low = _number(node.get("min"))
            return same and low is not None and low >= min_percent - 1e-9
        children = node.get("c") or []
        op = node.get("op", "&")
        if op == "&":
            return any(required(c) for c in children)
        if op == "|":
            return bool(children) and all(required(c) for c in children)
        return False  # a negation never guarantees a minimum

    tree = _tree(availability)
    return tree is not None and required(tree)


def grade_condition_tree(grade_item_id: int | str, min_percent: float) -> dict[str, Any]:
    """Return the availability tree 'grade item ≥ min %' (shown greyed out to students who lack it)."""
    return {"op": "&", "c": [{"type": "grade", "id": int(grade_item_id), "min": round(min_percent, 5)}],
            "showc": [True]}


def to_percent(min_score: float, score_maximum: float | None, score_minimum: float = 0.0) -> float:
    """Convert a score on an item to the percentage of the item's range a grade condition compares."""
    if score_maximum is None or score_maximum <= score_minimum:
        return float(min_score)
    return (float(min_score) - score_minimum) / (score_maximum - score_minimum) * 100.0


@dataclass(frozen=True, slots=True)
class RestrictionInstructions:
    """What a teacher does once in Moodle so a module opens only after the mastery check."""

    module_title: str
    grade_item_title: str
    min_percent: float
    steps: tuple[str, ...]
    availability: Mapping[str, Any]

    @property
    def availability_json(self) -> str:
        return json.dumps(self.availability, separators=(",", ":"))

    def as_text(self) -> str:
        """Return the steps as a numbered list followed by the availability JSON."""
        lines = [f"{n}. {step}" for n, step in enumerate(self.steps, start=1)]
        lines.append(f"Resulting restriction (availability JSON): {self.availability_json}")
        return "\n".join(lines)


def restriction_instructions(
    module: Module, grade_item: Activity, min_score: float
) -> RestrictionInstructions:
    """Return the exact steps and availability JSON that gate ``module`` on ``grade_item`` ≥ ``min_score``.

    ``min_score`` is in the item's points (``grade_item.score_maximum``); Moodle's condition takes a
    percentage, so it is converted here.
    """
    percent = round(to_percent(min_score, grade_item.score_maximum), 5)
    shown = f"{percent:g}"
    tree = grade_condition_tree(grade_item.sourced_id, percent)
    steps = (
        "Check that restricted access is on: Site administration → Advanced features → "
        "Enable restricted access (a site administrator does this once).",
        "Open the course and turn editing on.",
        f"On the section “{module.title}”, choose Edit → Edit settings.",
        "Expand “Restrict access” and choose Add restriction… → Grade.",
        f"Pick the grade item “{grade_item.title}”, tick “must be ≥” and enter {shown} %. "
        "Leave “must be <” unticked.",
        "Leave the eye icon open so students see what unlocks the section, then Save changes.",
        "So Trailmark can confirm the gate, add the same restriction to each activity in the section "
        "(Moodle's web services report activity restrictions but not section ones).",
    )
    return RestrictionInstructions(
        module_title=module.title,
        grade_item_title=grade_item.title,
        min_percent=percent,
        steps=steps,
        availability=tree,
    )
