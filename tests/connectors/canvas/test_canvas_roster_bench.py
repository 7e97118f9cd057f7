"""The roster benchmark's latency bound: the shortest schedule of the paged requests, checked exhaustively."""

from __future__ import annotations

import itertools
import math
from functools import cache

import pytest

from bench.canvas_roster import latency_rounds


def pages(courses: int, people: int, per_page: int) -> dict[str, str | None]:
    """Every page of the roster pull with the page whose answer makes it known (``None``: known at once)."""
    parent: dict[str, str | None] = {"account": None}
    listing = math.ceil(courses / per_page)
    for k in range(listing):
        parent[f"courses{k}"] = f"courses{k - 1}" if k else None
    for n in range(courses):
        above = f"courses{n // per_page}"
        for j in range(math.ceil(people / per_page)):
            parent[f"c{n}e{j}"] = above
            above = f"c{n}e{j}"
    return parent


def fewest_rounds(parent: dict[str, str | None], slots: int) -> int:
    """Search every schedule (each round fetches ``slots`` known pages, or all of them)."""
    names = sorted(parent)

    @cache
    def rounds(done: frozenset[str]) -> int:
        if len(done) == len(names):
            return 0
        known = [n for n in names if n not in done and (parent[n] is None or parent[n] in done)]
        return 1 + min(rounds(done | set(pick))
                       for pick in itertools.combinations(known, min(slots, len(known))))

    return rounds(frozenset())


@pytest.mark.parametrize(("courses", "people", "slots", "per_page"), [
    (3, 5, 2, 2),  # course listing of two pages, three-page enrollment chains
    (4, 3, 2, 2),
    (5, 2, 3, 2),
    (2, 7, 3, 3),
    (6, 1, 4, 4),
    (3, 4, 1, 10),
])
def test_latency_rounds_is_the_optimal_schedule(courses: int, people: int, slots: int, per_page: int) -> None:
    assert latency_rounds(courses, people, slots, per_page) == fewest_rounds(pages(courses, people, per_page), slots)


def test_latency_rounds_for_the_issue_scenario() -> None:
    # 203 pages; round one can only hold the account and the first course page, then 201 in 26 rounds of 8
    assert latency_rounds(200, 31, 8) == 27
    assert latency_rounds(200, 31, 1) == 203
    assert latency_rounds(1, 31, 8) == 2
    assert latency_rounds(5, 350, 8) == 5  # chains dominate: course page, then four enrollment pages
