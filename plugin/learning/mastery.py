"""Competency scores from evidence, computed the way Canvas's Learning Mastery Gradebook computes them.

Canvas's rules (canvas-lms ``RollupScore`` and ``RollupScoreAggregatorHelper``), reproduced so that the same
results give the same number to the cent:

- results without a score are dropped; no results left means no score (``None``, never 0);
- a result's value is ``percent × points_possible`` when it has a percent (0.0 counts), ``percent ×
  mastery_points`` when the competency has no points possible, else its raw score; classic-quiz results
  (``quiz_key``) are first averaged per quiz, weighted by ``possible``, except for highest and n_mastery;
- time order is ``submitted_at`` else ``assessed_at``, truncated to whole seconds, a missing time counting as
  the Unix epoch; ties keep input order;
- sums are compensated (``math.fsum``, which agrees with Ruby's Kahan-Babuska ``Array#sum`` on scores);
- the one rounding is Ruby's ``Float#round(2)``, ported exactly in :func:`round_score`.

The method names a competency carries are Canvas's stored names (what its REST API returns) unless
``vocabulary=Vocabulary.DISPLAY`` says they are the names Canvas's screens show; see :func:`resolve_calculation`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter

Rating = tuple[float, str]

DEFAULT_POINTS_POSSIBLE = 5.0
DEFAULT_MASTERY_POINTS = 3.0
DEFAULT_RATINGS: tuple[Rating, ...] = (
    (5.0, "Exceeds Expectations"),
    (3.0, "Meets Expectations"),
    (0.0, "Does Not Meet Expectations"),
)

STORED_METHODS: tuple[str, ...] = (
    "decaying_average",
    "weighted_average",
    "standard_decaying_average",
    "n_mastery",
    "highest",
    "latest",
    "average",
)


class Formula(enum.StrEnum):
    """The arithmetic behind a calculation method."""

    HIGHEST = "highest"
    LATEST = "latest"
    AVERAGE = "average"
    N_MASTERY = "n_mastery"
    WEIGHTED_AVERAGE = "weighted_average"  # latest × w + mean(earlier) × (1 − w): Canvas's legacy decaying average
    DECAYING_AVERAGE = "decaying_average"  # dₖ = dₖ₋₁ × (1 − r) + sₖ × r: Canvas's new decaying average


class Vocabulary(enum.StrEnum):
    """Which set of Canvas method names a competency's ``calculation_method`` uses."""

    STORED = "stored"  # as stored and returned by the REST API: the iterative one is standard_decaying_average
    DISPLAY = "display"  # as Canvas's screens show them: with the new calculation on, "decaying_average" is iterative


# formula → (lowest, highest, default) calculation_int
INT_RANGES: Mapping[Formula, tuple[int, int, int]] = {
    Formula.N_MASTERY: (1, 10, 5),
    Formula.WEIGHTED_AVERAGE: (1, 99, 65),
    Formula.DECAYING_AVERAGE: (50, 99, 65),
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Competency:
    """An outcome or standard with its scale and calculation method (Canvas's vocabulary)."""

    id: str
    title: str = ""
    points_possible: float = DEFAULT_POINTS_POSSIBLE
    mastery_points: float = DEFAULT_MASTERY_POINTS
    ratings: tuple[Rating, ...] = DEFAULT_RATINGS
    calculation_method: str | None = "highest"
    calculation_int: int | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """One result for a student: an outcome result on a competency, or a score on an aligned activity.

    ``percent`` is the fraction of the item's maximum (``score / score_maximum`` for an activity score);
    when it is set the value on the competency's scale is derived from it, otherwise ``score`` is used as is.
    ``quiz_key`` marks a classic-quiz result (one key per quiz) and ``possible`` its weight.
    """

    student_id: str
    competency_id: str | None
    score: float | None
    percent: float | None = None
    submitted_at: datetime | None = None
    assessed_at: datetime | None = None
    activity_id: str | None = None
    result_id: str = ""
    quiz_key: str | None = None
    possible: float | None = None
    origin: str = "sync"  # sync | ags | teacher


@dataclass(frozen=True, slots=True)
class Calculation:
    """A resolved calculation: the formula and its whole-number parameter (None where unused)."""

    formula: Formula
    calculation_int: int | None = None


@dataclass(frozen=True, slots=True)
class MasteryScore:
    """A student's rolled-up score on one competency; ``score`` is None when Canvas would show none."""

    student_id: str
    competency_id: str
    score: float | None
    count: int
    mastered: bool
    latest_at: datetime | None


# --------------------------------------------------------------------------- calculation methods


def resolve_calculation(
    method: str | None,
    calculation_int: int | None = None,
    *,
    new_decaying_average: bool = False,
    vocabulary: Vocabulary = Vocabulary.STORED,
) -> Calculation:
    """Map a method name and its parameter to a formula, applying defaults and checking ranges.

    ``new_decaying_average`` mirrors Canvas's ``outcomes_new_decaying_average_calculation`` flag. Stored names:
    with the flag off every decaying/weighted name is the weighted formula; with it on only
    ``standard_decaying_average`` is iterative. Display names: ``decaying_average`` is the weighted formula with
    the flag off and the iterative one with it on; ``weighted_average`` is always the weighted formula.
    A ``calculation_int`` given to a method that takes none is ignored (see :func:`validate_calculation`).
    """
    name = "highest" if method is None else method
    if name not in STORED_METHODS:
        raise ValueError(f"calculation_method must be one of {', '.join(STORED_METHODS)}; got {method!r}")
    formula = _formula_for(name, new_decaying_average=new_decaying_average, vocabulary=vocabulary)
    limits = INT_RANGES.get(formula)
    if limits is None:
        return Calculation(formula)
    lowest, highest, default = limits
    if calculation_int is None:
        return Calculation(formula, default)
    if isinstance(calculation_int, bool) or not isinstance(calculation_int, int):
        raise ValueError(f"calculation_int for {name} must be a whole number; got {calculation_int!r}")
    if not lowest <= calculation_int <= highest:
        raise ValueError(
            f"calculation_int {calculation_int} is not valid for {name} ({formula.value} formula): "
            f"use a whole number from {lowest} to {highest} (default {default})"
        )
    return Calculation(formula, calculation_int)


def validate_calculation(
    method: str | None,
    calculation_int: int | None,
    *,
    new_decaying_average: bool = False,
    vocabulary: Vocabulary = Vocabulary.STORED,
) -> Calculation:
    """Check a method and parameter as a form would: also refuse a parameter the method does not use."""
    calculation = resolve_calculation(
        method, calculation_int, new_decaying_average=new_decaying_average, vocabulary=vocabulary
    )
    if calculation.calculation_int is None and calculation_int is not None:
        raise ValueError(f"A calculation value is not used with the {method or 'highest'} calculation method")
    return calculation


def _formula_for(name: str, *, new_decaying_average: bool, vocabulary: Vocabulary) -> Formula:
    if name in ("highest", "latest", "average", "n_mastery"):
        return Formula(name)
    if name == "weighted_average" or not new_decaying_average:
        return Formula.WEIGHTED_AVERAGE
    if name == "standard_decaying_average":
        return Formula.DECAYING_AVERAGE
    # "decaying_average" with the new calculation on
    return Formula.DECAYING_AVERAGE if vocabulary is Vocabulary.DISPLAY else Formula.WEIGHTED_AVERAGE


def calculation_for(
    competency: Competency, *, new_decaying_average: bool = False, vocabulary: Vocabulary = Vocabulary.STORED
) -> Calculation:
    """Resolve a competency's own method and parameter."""
    return resolve_calculation(
        competency.calculation_method,
        competency.calculation_int,
        new_decaying_average=new_decaying_average,
        vocabulary=vocabulary,
    )


# --------------------------------------------------------------------------- arithmetic


def round_score(value: float) -> float:
    """Round to 2 decimals exactly as Ruby's ``Float#round(2)`` does (half away from zero).

    A port of ruby/numeric.c ``rb_float_round`` → ``round_half_up(x, 100.0)``: round ``x × 100`` half away
    from zero, then bump up when ``(f + 0.5) / 100`` still does not exceed ``x``. It gives 4.125 → 4.13 where
    Python's ``round`` gives 4.12, and also rounds up some doubles whose shortest decimal form ends just below
    5 (5.3149999999999995 → 5.32), which rounding the ``repr`` with ``decimal`` would not.
    """
    if not 0.001 <= abs(value) < 1e15:  # outside this range Ruby may return x itself or 0.0
        value = float(value)
        if value == 0.0 or not math.isfinite(value):
            return value
        binexp = math.frexp(value)[1]
        if _round_overflows(binexp):
            return value
        if value > 0.0 and _round_underflows(binexp):
            return 0.0
    scaled = value * 100.0
    if scaled > 0.0:
        whole = float(math.floor(scaled))
        if scaled - whole >= 0.5:
            whole += 1.0
        if (whole + 0.5) / 100.0 <= value:
            whole += 1.0
    else:
        whole = float(math.ceil(scaled))
        if whole - scaled >= 0.5:
            whole -= 1.0
        if (whole - 0.5) / 100.0 >= value:
            whole -= 1.0
    return whole / 100.0


def _trunc_div(a: int, b: int) -> int:
    """Divide like C: truncate toward zero."""
    q = abs(a) // b
    return q if a >= 0 else -q


def _round_overflows(binexp: int, ndigits: int = 2) -> bool:
    return ndigits >= 17 - (binexp // 4 if binexp > 0 else _trunc_div(binexp, 3) - 1)


def _round_underflows(binexp: int, ndigits: int = 2) -> bool:
    return ndigits < -(binexp // 3 + 1 if binexp > 0 else _trunc_div(binexp, 4))


def time_key(evidence: Evidence) -> datetime:
    """Return the moment Canvas orders a result by: submitted, else assessed, in whole seconds (epoch if none)."""
    moment = evidence.submitted_at if evidence.submitted_at is not None else evidence.assessed_at
    return _EPOCH if moment is None else _whole_seconds(moment)


def scaled_value(evidence: Evidence, competency: Competency) -> float | None:
    """Return one result's value on the competency's scale (None when it has no score)."""
    if evidence.score is None:
        return None
    if evidence.percent is None:
        return evidence.score
    scale = competency.points_possible if competency.points_possible > 0 else competency.mastery_points
    return evidence.percent * scale


def score_rows(
    calculation: Calculation, points_possible: float, mastery_points: float, rows: Sequence[Evidence]
) -> float | None:
    """Compute the rolled-up score of one student's scored results on one competency."""
    return rollup_rows(calculation, points_possible, mastery_points, rows)[0]


def rollup_rows(
    calculation: Calculation,
    points_possible: float,
    mastery_points: float,
    rows: Sequence[Evidence],
    *,
    quizzes: bool = True,
) -> tuple[float | None, datetime | None]:
    """Return the rolled-up score and the latest result time (whole seconds) of scored results.

    ``rows`` must all have a score; the caller drops the others, as Canvas does. ``quizzes=False`` tells that
    no row has a ``quiz_key``, which saves looking.
    """
    if not rows:
        return None, None
    ordered = in_time_order(rows)
    score = score_in_order(calculation, points_possible, mastery_points, ordered, quizzes=quizzes)
    return score, latest_time(ordered[-1])


def in_time_order(rows: Sequence[Evidence]) -> list[Evidence]:
    """Return results in Canvas's time order: by whole second submitted (else assessed), ties in input order.

    Sorting on ``submitted_at`` itself gives that order when every result has one, none has a fraction of a
    second, and naive and aware times are not mixed; otherwise :func:`time_key` builds the keys.
    """
    moments = list(map(_SUBMITTED_AT, rows))
    if None not in moments and not any(map(_MICROSECOND, moments)):
        try:
            return sorted(rows, key=_SUBMITTED_AT)
        except TypeError:  # naive and aware times mixed
            pass
    return sorted(rows, key=time_key)


def sort_in_time_order(rows: list[Evidence], *, whole_seconds: bool = False) -> None:
    """Sort results in place into Canvas's time order (see :func:`in_time_order`).

    ``whole_seconds=True`` promises that every result has a ``submitted_at`` without a fraction of a second,
    so the times themselves can be the keys.
    """
    if len(rows) < 2:
        return
    if whole_seconds:
        try:
            rows[:] = sorted(rows, key=_SUBMITTED_AT)  # a copy: a failed sort must not disturb input order
            return
        except TypeError:  # naive and aware times mixed
            pass
    rows.sort(key=time_key)


def latest_time(row: Evidence) -> datetime | None:
    """Return a result's time as Canvas orders it (whole seconds, UTC when naive), None when it has none."""
    moment = row.submitted_at if row.submitted_at is not None else row.assessed_at
    if moment is None:
        return None
    if moment.microsecond or moment.tzinfo is None:
        return _whole_seconds(moment)
    return moment


def score_in_order(
    calculation: Calculation,
    points_possible: float,
    mastery_points: float,
    rows: Sequence[Evidence],
    quizzes: bool = True,
) -> float | None:
    """Compute the rolled-up score of scored results already in Canvas's time order (oldest first)."""
    if not rows:
        return None
    formula = calculation.formula
    scale = points_possible if points_possible > 0 else mastery_points
    # identity tests throughout: hashing an enum member runs Python code
    if quizzes and formula is not Formula.HIGHEST and formula is not Formula.N_MASTERY and _has_quiz(rows):
        values = _quiz_averaged_values(rows, scale)
    else:
        values = [e.score if e.percent is None else e.percent * scale for e in rows]  # type: ignore[misc]
    if formula is Formula.HIGHEST:
        return round_score(max(values))
    if formula is Formula.LATEST:
        return round_score(values[-1])
    if formula is Formula.AVERAGE:
        return round_score(math.fsum(values) / len(values))
    n = calculation.calculation_int
    assert n is not None
    if formula is Formula.N_MASTERY:
        if len(values) < n:
            return None
        kept = [v for v in values if v >= mastery_points]
        return None if len(kept) < n else round_score(math.fsum(kept) / len(kept))
    if len(values) == 1:
        return round_score(values[0])
    if formula is Formula.WEIGHTED_AVERAGE:
        older = values[:-1]
        return round_score(values[-1] * (0.01 * n) + (math.fsum(older) / len(older)) * (0.01 * (100 - n)))
    remaining = 0.01 * (100 - n)
    rate = 0.01 * n
    average = values[0] * remaining + values[1] * rate
    for value in values[2:]:
        average = average * remaining + value * rate
    return round_score(average)


_SUBMITTED_AT = attrgetter("submitted_at")
_MICROSECOND = attrgetter("microsecond")


def _has_quiz(rows: Sequence[Evidence]) -> bool:
    return any(e.quiz_key is not None for e in rows)


def _whole_seconds(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.replace(microsecond=0) if moment.microsecond else moment


def _quiz_averaged_values(rows: Sequence[Evidence], scale: float) -> list[float]:
    """Replace each classic-quiz result's value by its quiz's possible-weighted percent (Canvas's alignment score).

    Canvas raises when a quiz's weights sum to 0 or a weighted result lacks a percent; here such a result
    keeps its own value instead.
    """
    totals: dict[str, list[float]] = {}
    for e in rows:
        if e.quiz_key is not None and e.possible is not None and e.percent is not None:
            total = totals.setdefault(e.quiz_key, [0.0, 0.0])
            total[0] += e.possible
            total[1] += e.possible * e.percent
    values: list[float] = []
    for e in rows:
        weights = totals.get(e.quiz_key) if e.quiz_key is not None else None
        if weights is not None and weights[0] != 0:
            values.append((weights[1] / weights[0]) * scale)
        else:
            values.append(e.score if e.percent is None else e.percent * scale)  # type: ignore[arg-type]
    return values


# --------------------------------------------------------------------------- public entry points


def calculate_score(
    competency: Competency,
    evidence: Iterable[Evidence],
    *,
    new_decaying_average: bool = False,
    vocabulary: Vocabulary = Vocabulary.STORED,
) -> float | None:
    """Return the competency score Canvas would show for these results (None when it would show none)."""
    calculation = calculation_for(competency, new_decaying_average=new_decaying_average, vocabulary=vocabulary)
    rows = [e for e in evidence if e.score is not None]
    return score_rows(calculation, competency.points_possible, competency.mastery_points, rows)


def rollup(
    student_id: str,
    competency: Competency,
    evidence: Iterable[Evidence],
    *,
    new_decaying_average: bool = False,
    vocabulary: Vocabulary = Vocabulary.STORED,
) -> MasteryScore | None:
    """Roll one student's results on one competency into a MasteryScore (None when there are no results)."""
    calculation = calculation_for(competency, new_decaying_average=new_decaying_average, vocabulary=vocabulary)
    rows = [e for e in evidence if e.score is not None]
    if not rows:
        return None
    score, latest = rollup_rows(calculation, competency.points_possible, competency.mastery_points, rows)
    return MasteryScore(
        student_id=student_id,
        competency_id=competency.id,
        score=score,
        count=len(rows),
        mastered=is_mastered(score, competency),
        latest_at=latest,
    )


def is_mastered(score: float | None, competency: Competency) -> bool:
    """Return whether a score reaches the competency's mastery points (no score is never mastery)."""
    return score is not None and score >= competency.mastery_points


def rating_for(score: float | None, ratings: Sequence[Rating]) -> Rating | None:
    """Return the highest rating whose points the score reaches (None for no score or below every rating)."""
    if score is None:
        return None
    for rating in sorted(ratings, key=lambda r: r[0], reverse=True):
        if score >= rating[0]:
            return rating
    return None


def level_of(score: float | None, competency: Competency) -> str | None:
    """Return the description of the rating a score falls in, e.g. "Meets Expectations"."""
    rating = rating_for(score, competency.ratings)
    return None if rating is None else rating[1]


def aggregate_scores(scores: Iterable[float | None], stat: str = "mean") -> float | None:
    """Summarise students' scores on one competency as Canvas's course aggregate does (mean or median)."""
    present = [s for s in scores if s is not None]
    if not present:
        return None
    if stat == "mean":
        return round_score(math.fsum(present) / len(present))
    if stat == "median":
        ordered = sorted(present)
        return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2.0
    raise ValueError(f"stat must be 'mean' or 'median'; got {stat!r}")
