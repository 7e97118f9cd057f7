"""Mastery scores match Canvas's Learning Mastery Gradebook to the cent.

Worked examples marked "canvas spec" reproduce cases from canvas-lms
spec/lib/outcomes/result_analytics_spec.rb (default criterion: 5 points possible, mastery at 3).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.learning.mastery import (
    DEFAULT_RATINGS,
    Calculation,
    Competency,
    Evidence,
    Formula,
    MasteryScore,
    Vocabulary,
    aggregate_scores,
    calculate_score,
    calculation_for,
    is_mastered,
    level_of,
    rating_for,
    resolve_calculation,
    rollup,
    rollup_rows,
    round_score,
    scaled_value,
    time_key,
    validate_calculation,
)

T = datetime(2025, 10, 6, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def comp(method: str | None = "highest", n: int | None = None, **kw: object) -> Competency:
    return Competency("c1", "Fractions", calculation_method=method, calculation_int=n, **kw)  # type: ignore[arg-type]


def ev(score: float | None, at: datetime | None = None, **kw: object) -> Evidence:
    return Evidence("s1", "c1", score, submitted_at=at, **kw)  # type: ignore[arg-type]


def days_before(scores: list[float | None], method: str, n: int | None = None, **kw: object) -> float | None:
    """Score results given newest first, one day apart (the canvas spec's ``time - i.days``)."""
    rows = [ev(s, T - i * DAY) for i, s in enumerate(scores)]
    return calculate_score(comp(method, n), rows, **kw)  # type: ignore[arg-type]


def days_after(scores: list[float | None], method: str, n: int | None = None, **kw: object) -> float | None:
    """Score results given oldest first, one day apart (the canvas spec's ``time + i.days``)."""
    rows = [ev(s, T + i * DAY) for i, s in enumerate(scores)]
    return calculate_score(comp(method, n), rows, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- worked examples


class TestHighest:
    def test_maximum(self) -> None:
        # canvas spec: [3.0, 1.0] → 3.0
        assert calculate_score(comp("highest"), [ev(3.0), ev(1.0)]) == 3.0

    def test_no_method_means_highest(self) -> None:
        # canvas spec "returns maximum score when no method is set"
        assert calculate_score(comp(None), [ev(3.0), ev(1.0)]) == 3.0

    def test_rounds_once_at_the_end(self) -> None:
        assert calculate_score(comp("highest"), [ev(2.345), ev(1.0)]) == 2.35


class TestLatest:
    def test_latest_by_time_not_input_order(self) -> None:
        # canvas spec: 4.0 (no time), 3.0 (now), 1.0 (a day ago) → 3.0; a missing time sorts first
        rows = [ev(4.0), ev(3.0, T), ev(1.0, T - DAY)]
        assert calculate_score(comp("latest"), rows) == 3.0

    def test_assessed_at_when_not_submitted(self) -> None:
        rows = [ev(2.0, assessed_at=T), ev(4.0, assessed_at=T - DAY)]
        assert calculate_score(comp("latest"), rows) == 2.0

    def test_submitted_at_wins_over_assessed_at(self) -> None:
        rows = [ev(2.0, T - DAY, assessed_at=T + DAY), ev(4.0, T)]
        assert calculate_score(comp("latest"), rows) == 4.0

    def test_same_second_keeps_input_order(self) -> None:
        # 10:00:00.900 and 10:00:00.100 are the same whole second: the later row in input order is latest
        early_row, late_row = ev(2.0, T.replace(microsecond=900_000)), ev(3.0, T.replace(microsecond=100_000))
        assert calculate_score(comp("latest"), [early_row, late_row]) == 3.0
        assert calculate_score(comp("latest"), [late_row, early_row]) == 2.0

    def test_identical_times_keep_input_order(self) -> None:
        assert calculate_score(comp("latest"), [ev(1.0, T), ev(2.0, T)]) == 2.0
        assert calculate_score(comp("latest"), [ev(2.0, T), ev(1.0, T)]) == 1.0

    def test_no_times_at_all_takes_the_last_row(self) -> None:
        assert calculate_score(comp("latest"), [ev(1.0), ev(2.0), ev(1.5)]) == 1.5

    def test_naive_times_count_as_utc(self) -> None:
        naive = datetime(2025, 10, 6, 13, 0)  # 13:00 UTC, after T (12:00 UTC)
        rows = [ev(1.0, naive), ev(2.0, T)]
        assert calculate_score(comp("latest"), rows) == 1.0

    def test_other_time_zones_compare_by_instant(self) -> None:
        plus2 = timezone(timedelta(hours=2))
        rows = [ev(1.0, datetime(2025, 10, 6, 13, 0, tzinfo=plus2)), ev(2.0, T)]  # 13:00+02 = 11:00 UTC
        assert calculate_score(comp("latest"), rows) == 2.0


class TestAverage:
    def test_mean(self) -> None:
        # (1 + 2 + 4) / 3 = 2.333… → 2.33
        assert calculate_score(comp("average"), [ev(1.0), ev(2.0), ev(4.0)]) == 2.33

    def test_half_cent_rounds_up(self) -> None:
        # (2.0 + 2.25) / 2 = 2.125 → 2.13 (Python's round would give 2.12)
        assert calculate_score(comp("average"), [ev(2.0), ev(2.25)]) == 2.13

    def test_compensated_sum(self) -> None:
        # a naive left-to-right sum of ten 0.1s is 0.9999999999999999; fsum gives 1.0
        rows = [ev(0.1) for _ in range(10)]
        assert calculate_score(comp("average"), rows) == 0.1


class TestNMastery:
    @pytest.mark.parametrize(
        "scores, n, expected",
        [
            ([3.0, 1.0], 3, None),  # fewer results than n
            ([3.0, 1.0, 2.0], 3, None),  # 3 results but only one ≥ 3
            ([4.0, 5.0, 1.0, 3.0, 2.0, 3.0], 3, 3.75),  # kept 4, 5, 3, 3 → 15 / 4
            ([1.0, 2.0], 1, None),  # nothing reaches mastery
            ([1.0, 2.0, 3.0], 1, 3.0),  # kept 3 → 3
            ([1.0, 2.0, 3.0, 4.0], 1, 3.5),  # kept 3, 4 → mean of all kept, not the best n
            ([3.0, 4.0, 3.0], 3, 3.33),  # canvas spec "rounds results": 10 / 3
        ],
    )
    def test_canvas_spec(self, scores: list[float], n: int, expected: float | None) -> None:
        assert calculate_score(comp("n_mastery", n), [ev(s) for s in scores]) == expected

    def test_nil_scores_are_dropped_first(self) -> None:
        # canvas spec: [4, 5, 1, 3, nil, 3] with n = 3 → 3.75
        assert calculate_score(comp("n_mastery", 3), [ev(s) for s in [4.0, 5.0, 1.0, 3.0, None, 3.0]]) == 3.75

    def test_exactly_mastery_points_counts(self) -> None:
        assert calculate_score(comp("n_mastery", 2), [ev(3.0), ev(3.0)]) == 3.0

    def test_default_n_is_five(self) -> None:
        assert calculate_score(comp("n_mastery"), [ev(4.0)] * 4) is None
        assert calculate_score(comp("n_mastery"), [ev(4.0)] * 5) == 4.0


class TestWeightedAverage:
    """Canvas's legacy "decaying_average": latest × w + mean(earlier) × (100 − w)."""

    def test_single_result(self) -> None:
        # canvas spec: one 3.0 with calc_int 75 → 3.0
        assert days_before([3.0], "decaying_average", 75) == 3.0

    def test_canvas_spec_75(self) -> None:
        # newest first 4, 5, 1, 3 → time order 3, 1, 5, 4: 4 × 0.75 + (3 + 1 + 5) / 3 × 0.25 = 3.0 + 0.75
        assert days_before([4.0, 5.0, 1.0, 3.0], "decaying_average", 75) == 3.75

    def test_canvas_spec_assessed_times(self) -> None:
        # 3 now, 2 a day ago: 3 × 0.65 + 2 × 0.35 = 1.95 + 0.70 = 2.65
        rows = [ev(3.0, assessed_at=T), ev(2.0, assessed_at=T - DAY)]
        assert calculate_score(comp("decaying_average", 65), rows) == 2.65

    def test_canvas_spec_mixed_submitted_and_assessed(self) -> None:
        # 4 (now), 5 (−1 d), 1 (−2 d) assessed; 3 submitted −3 d → order 3, 1, 5, 4 → 4 × .75 + 3 × .25
        rows = [ev(4.0, assessed_at=T), ev(5.0, assessed_at=T - DAY), ev(1.0, assessed_at=T - 2 * DAY)]
        rows.append(ev(3.0, T - 3 * DAY))
        assert calculate_score(comp("decaying_average", 75), rows) == 3.75

    def test_canvas_spec_flag_off(self) -> None:
        # oldest first 2, 3, 4: 4 × 0.65 + 2.5 × 0.35 = 2.6 + 0.875 = 3.475 → 3.48
        assert days_after([2.0, 3.0, 4.0], "decaying_average", 65) == 3.48

    def test_half_cent_rounds_away_from_zero(self) -> None:
        # 1..5 oldest first: 5 × 0.65 + 2.5 × 0.35 = 3.25 + 0.875 = 4.125 → 4.13 (round() says 4.12)
        assert days_after([1.0, 2.0, 3.0, 4.0, 5.0], "decaying_average", 65) == 4.13
        assert round(4.125, 2) == 4.12

    def test_rounds_single_result(self) -> None:
        # canvas spec: a lone 2.123 → 2.12
        assert days_before([2.123], "decaying_average", 65) == 2.12

    def test_default_weight_65(self) -> None:
        assert days_after([2.0, 4.0], "decaying_average") == 3.3  # 4 × .65 + 2 × .35 = 2.6 + 0.7

    def test_weighted_average_name(self) -> None:
        assert days_after([2.0, 3.0, 4.0], "weighted_average", 65, new_decaying_average=True) == 3.48


class TestDecayingAverage:
    """Canvas's new iterative decaying average: dₖ = dₖ₋₁ × (100 − r) + sₖ × r."""

    def test_canvas_spec_flag_on(self) -> None:
        # 2, 3, 4 oldest first, r = 65: d = 2 × .35 + 3 × .65 = 2.65; 2.65 × .35 + 4 × .65 = 3.5275 → 3.53
        assert days_after([2.0, 3.0, 4.0], "standard_decaying_average", 65, new_decaying_average=True) == 3.53

    def test_single_result(self) -> None:
        assert days_after([3.0], "standard_decaying_average", 65, new_decaying_average=True) == 3.0

    def test_nil_scores_dropped(self) -> None:
        # canvas spec: [2, 3, nil, 4] without times keeps input order → 3.53
        rows = [ev(s) for s in [2.0, 3.0, None, 4.0]]
        assert calculate_score(comp("standard_decaying_average", 65), rows, new_decaying_average=True) == 3.53

    def test_order_matters(self) -> None:
        # 4, 3, 2: d = 4 × .35 + 3 × .65 = 3.35; 3.35 × .35 + 2 × .65 = 2.4725 → 2.47
        assert days_after([4.0, 3.0, 2.0], "standard_decaying_average", 65, new_decaying_average=True) == 2.47

    def test_same_second_ties_keep_input_order(self) -> None:
        a, b = ev(4.0, T.replace(microsecond=700_000)), ev(2.0, T.replace(microsecond=200_000))
        c = comp("standard_decaying_average", 65)
        # a then b: 4 × .35 + 2 × .65 = 2.7; b then a: 2 × .35 + 4 × .65 = 3.3
        assert calculate_score(c, [a, b], new_decaying_average=True) == 2.7
        assert calculate_score(c, [b, a], new_decaying_average=True) == 3.3

    def test_flag_off_means_weighted(self) -> None:
        assert days_after([2.0, 3.0, 4.0], "standard_decaying_average", 65) == 3.48

    def test_agrees_with_weighted_for_two_results(self) -> None:
        for n in (50, 65, 80, 99):
            weighted = days_after([1.25, 3.5], "decaying_average", n)
            iterative = days_after([1.25, 3.5], "standard_decaying_average", n, new_decaying_average=True)
            assert weighted == iterative


class TestValues:
    def test_percent_times_points_possible(self) -> None:
        # 0.8 × 4 points = 3.2, whatever the raw score was
        assert calculate_score(comp(points_possible=4.0), [ev(17.0, percent=0.8)]) == 3.2

    def test_zero_percent_counts(self) -> None:
        assert calculate_score(comp(points_possible=4.0), [ev(9.0, percent=0.0)]) == 0.0

    def test_percent_times_mastery_points_without_points_possible(self) -> None:
        # canvas spec "falls back to using mastery score if points possible is 0": 0.7 × 3 = 2.1
        c = comp("latest", points_possible=0.0, mastery_points=3.0)
        assert calculate_score(c, [ev(10.0, percent=0.7)]) == 2.1

    def test_raw_score_without_percent(self) -> None:
        assert calculate_score(comp(points_possible=4.0), [ev(2.5)]) == 2.5

    def test_scaled_value(self) -> None:
        c = comp(points_possible=4.0)
        assert scaled_value(ev(None, percent=0.5), c) is None
        assert scaled_value(ev(1.0, percent=0.5), c) == 2.0
        assert scaled_value(ev(1.0), c) == 1.0


class TestQuizzes:
    """Classic-quiz results are averaged per quiz, weighted by ``possible``, except for highest and n_mastery."""

    def quiz(self, percent: float, possible: float, key: str, at: datetime = T) -> Evidence:
        return Evidence("s1", "c1", 1.0, percent=percent, assessed_at=at, quiz_key=key, possible=possible)

    def test_canvas_spec_decaying(self) -> None:
        # two quizzes: 0.4 × 5 = 2.0 (now) and 0.9 × 5 = 4.5 (a day ago): 2.0 × .65 + 4.5 × .35 = 2.875 → 2.88
        rows = [self.quiz(0.4, 1.0, "q1"), self.quiz(0.9, 1.0, "q2", T - DAY)]
        assert calculate_score(comp("decaying_average", 65), rows) == 2.88

    def test_canvas_spec_n_mastery_is_not_averaged(self) -> None:
        # 0.2, 0.5, 0.8 → 1, 2.5, 4: one at mastery < 3 → None; 0.2, 0.7, 0.8, 0.9 → kept 3.5, 4, 4.5 → 4.0
        rows = [self.quiz(p, 1.0, f"q{i}") for i, p in enumerate([0.2, 0.5, 0.8])]
        assert calculate_score(comp("n_mastery", 3), rows) is None
        rows = [self.quiz(p, 1.0, f"q{i}") for i, p in enumerate([0.2, 0.7, 0.8, 0.9])]
        assert calculate_score(comp("n_mastery", 3), rows) == 4.0

    def test_results_of_one_quiz_share_their_weighted_percent(self) -> None:
        # same quiz: (0.4 × 1 + 0.8 × 3) / 4 = 0.7 → 3.5 each; the average is 3.5 (3.0 without the rule)
        rows = [self.quiz(0.4, 1.0, "q1"), self.quiz(0.8, 3.0, "q1")]
        assert calculate_score(comp("average"), rows) == 3.5
        assert calculate_score(comp("highest"), rows) == 4.0  # highest uses each result's own value

    def test_zero_weight_keeps_own_value(self) -> None:
        rows = [self.quiz(0.4, 0.0, "q1")]
        assert calculate_score(comp("average"), rows) == 2.0

    def test_quizzes_flag_is_only_a_shortcut(self) -> None:
        rows = [ev(1.0, T, percent=0.5), ev(3.0, T - DAY, percent=0.25)]
        calc = calculation_for(comp("average"))
        assert rollup_rows(calc, 5.0, 3.0, rows, quizzes=False) == rollup_rows(calc, 5.0, 3.0, rows)


class TestEmptyAndNone:
    @pytest.mark.parametrize("method", ["highest", "latest", "average", "n_mastery", "decaying_average"])
    def test_no_results_is_none_not_zero(self, method: str) -> None:
        assert calculate_score(comp(method), []) is None

    def test_only_nil_scores_is_none(self) -> None:
        assert calculate_score(comp("average"), [ev(None), ev(None)]) is None

    def test_rollup_without_results(self) -> None:
        assert rollup("s1", comp(), []) is None
        assert rollup("s1", comp(), [ev(None)]) is None

    def test_rollup_record(self) -> None:
        at = T.replace(microsecond=450_000)
        score = rollup("s1", comp("average"), [ev(3.0, at), ev(4.0, T - DAY), ev(None, T + DAY)])
        assert score == MasteryScore("s1", "c1", 3.5, 2, True, T)

    def test_rollup_below_n_mastery_has_no_score_and_no_mastery(self) -> None:
        score = rollup("s1", comp("n_mastery", 3), [ev(5.0, T), ev(5.0, T)])
        assert score is not None and score.score is None and score.count == 2 and not score.mastered

    def test_latest_time_without_any_time(self) -> None:
        score = rollup("s1", comp(), [ev(1.0), ev(2.0)])
        assert score is not None and score.latest_at is None

    def test_latest_time_with_some_times(self) -> None:
        score = rollup("s1", comp(), [ev(1.0), ev(2.0, datetime(2025, 1, 2, 3, 4, 5, 600))])
        assert score is not None and score.latest_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


# --------------------------------------------------------------------------- method names and parameters


class TestCalculationMethods:
    @pytest.mark.parametrize(
        "method, flag, vocabulary, formula",
        [
            ("decaying_average", False, Vocabulary.STORED, Formula.WEIGHTED_AVERAGE),
            ("decaying_average", True, Vocabulary.STORED, Formula.WEIGHTED_AVERAGE),
            ("standard_decaying_average", False, Vocabulary.STORED, Formula.WEIGHTED_AVERAGE),
            ("standard_decaying_average", True, Vocabulary.STORED, Formula.DECAYING_AVERAGE),
            ("weighted_average", True, Vocabulary.STORED, Formula.WEIGHTED_AVERAGE),
            ("weighted_average", False, Vocabulary.STORED, Formula.WEIGHTED_AVERAGE),
            ("decaying_average", False, Vocabulary.DISPLAY, Formula.WEIGHTED_AVERAGE),
            ("decaying_average", True, Vocabulary.DISPLAY, Formula.DECAYING_AVERAGE),
            ("weighted_average", True, Vocabulary.DISPLAY, Formula.WEIGHTED_AVERAGE),
            ("standard_decaying_average", True, Vocabulary.DISPLAY, Formula.DECAYING_AVERAGE),
            ("highest", True, Vocabulary.DISPLAY, Formula.HIGHEST),
            (None, False, Vocabulary.STORED, Formula.HIGHEST),
        ],
    )
    def test_flag_and_vocabulary(
        self, method: str | None, flag: bool, vocabulary: Vocabulary, formula: Formula
    ) -> None:
        assert resolve_calculation(method, new_decaying_average=flag, vocabulary=vocabulary).formula is formula

    def test_display_decaying_average_with_the_flag_on_is_iterative(self) -> None:
        c = comp("decaying_average", 65)
        rows = [ev(s, T + i * DAY) for i, s in enumerate([2.0, 3.0, 4.0])]
        assert calculate_score(c, rows, new_decaying_average=True, vocabulary=Vocabulary.DISPLAY) == 3.53
        assert calculate_score(c, rows, new_decaying_average=True) == 3.48
        assert calculate_score(c, rows, vocabulary=Vocabulary.DISPLAY) == 3.48

    @pytest.mark.parametrize(
        "method, flag, default",
        [("n_mastery", False, 5), ("decaying_average", False, 65), ("standard_decaying_average", True, 65)],
    )
    def test_defaults(self, method: str, flag: bool, default: int) -> None:
        assert resolve_calculation(method, None, new_decaying_average=flag).calculation_int == default

    @pytest.mark.parametrize(
        "method, flag, valid, invalid",
        [
            ("n_mastery", False, [1, 4, 5, 7, 10], [-1, 0, 11, 28]),
            ("decaying_average", False, [1, 20, 99], [-1, 0, 100, 1000]),
            ("weighted_average", True, [1, 20, 99], [0, 100]),
            ("standard_decaying_average", True, [50, 72, 99], [-1, 0, 49, 100, 1000]),
            ("standard_decaying_average", False, [1, 30, 99], [0, 100]),  # the weighted formula's range
        ],
    )
    def test_ranges(self, method: str, flag: bool, valid: list[int], invalid: list[int]) -> None:
        for n in valid:
            assert resolve_calculation(method, n, new_decaying_average=flag).calculation_int == n
        for n in invalid:
            with pytest.raises(ValueError, match=rf"calculation_int {n} is not valid for {method}.*from \d+ to \d+"):
                resolve_calculation(method, n, new_decaying_average=flag)

    @pytest.mark.parametrize("bad", [True, 2.5, "5"])
    def test_whole_numbers_only(self, bad: object) -> None:
        with pytest.raises(ValueError, match="whole number"):
            resolve_calculation("n_mastery", bad)  # type: ignore[arg-type]

    def test_unknown_method(self) -> None:
        with pytest.raises(ValueError, match="calculation_method must be one of .*got 'median'"):
            resolve_calculation("median")

    def test_unused_parameter_is_ignored_when_computing(self) -> None:
        assert resolve_calculation("highest", 4) == Calculation(Formula.HIGHEST, None)

    def test_unused_parameter_is_refused_by_validation(self) -> None:
        with pytest.raises(ValueError, match="not used with the latest calculation method"):
            validate_calculation("latest", 3)
        assert validate_calculation("latest", None) == Calculation(Formula.LATEST)
        assert validate_calculation("n_mastery", 3) == Calculation(Formula.N_MASTERY, 3)

    def test_invalid_competency_is_an_error_when_scoring(self) -> None:
        with pytest.raises(ValueError):
            calculate_score(comp("n_mastery", 0), [ev(3.0)])


# --------------------------------------------------------------------------- rounding


class TestRounding:
    @pytest.mark.parametrize(
        "value, expected",
        [
            (4.125, 4.13),
            (2.675, 2.68),  # the double is 2.67499999999999982…; Ruby still says 2.68
            (1.005, 1.01),
            (0.005, 0.01),
            (0.004999, 0.0),
            (3.0, 3.0),
            (3.333333, 3.33),
            (-4.125, -4.13),
            (5.3149999999999995, 5.32),  # x × 100 rounds to 531.5 in binary: Ruby rounds up
            (0.0001, 0.0),  # below Ruby's underflow bound
            (1e18, 1e18),  # above Ruby's overflow bound: unchanged
        ],
    )
    def test_ruby_float_round(self, value: float, expected: float) -> None:
        assert round_score(value) == expected

    def test_zero_and_non_finite(self) -> None:
        assert round_score(0.0) == 0.0
        assert math.copysign(1.0, round_score(-0.0)) == -1.0
        assert round_score(math.inf) == math.inf
        assert math.isnan(round_score(math.nan))

    @given(st.integers(min_value=-10_000_000, max_value=10_000_000))
    def test_matches_half_up_on_three_decimal_values(self, thousandths: int) -> None:
        value = thousandths / 1000
        expected = float(Decimal(repr(value)).quantize(Decimal("0.01"), ROUND_HALF_UP))
        assert round_score(value) == expected

    @given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
    def test_close_symmetric_and_idempotent(self, value: float) -> None:
        rounded = round_score(value)
        assert abs(rounded - value) <= 0.005 + 1e-9 * max(1.0, abs(value))
        assert round_score(-value) == -rounded
        assert round_score(rounded) == rounded

    @given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
    def test_monotonic(self, a: float, b: float) -> None:
        low, high = sorted((a, b))
        assert round_score(low) <= round_score(high)


# --------------------------------------------------------------------------- ratings and aggregates


class TestLevels:
    def test_mastered_at_threshold(self) -> None:
        c = comp(mastery_points=3.0)
        assert is_mastered(3.0, c) and not is_mastered(2.99, c) and not is_mastered(None, c)

    @pytest.mark.parametrize(
        "score, level",
        [(5.0, "Exceeds Expectations"), (4.99, "Meets Expectations"), (3.0, "Meets Expectations"),
         (2.99, "Does Not Meet Expectations"), (0.0, "Does Not Meet Expectations"), (-1.0, None), (None, None)],
    )
    def test_default_scale(self, score: float | None, level: str | None) -> None:
        assert level_of(score, comp()) == level

    def test_unsorted_ratings(self) -> None:
        ratings = ((0.0, "Below"), (4.0, "Exceeds"), (2.0, "Near"), (3.0, "Meets"))
        assert rating_for(3.5, ratings) == (3.0, "Meets")
        assert rating_for(2.0, ratings) == (2.0, "Near")
        assert rating_for(3.5, ()) is None
        assert DEFAULT_RATINGS[0] == (5.0, "Exceeds Expectations")


class TestAggregates:
    def test_canvas_spec_means_and_medians(self) -> None:
        # per-student highest scores 1, 2, 3, 40 → mean 11.5, median (2 + 3) / 2 = 2.5; 5, 6, 70 → 27.0 and 6
        assert aggregate_scores([1.0, 2.0, 3.0, 40.0]) == 11.5
        assert aggregate_scores([5.0, 6.0, 70.0]) == 27.0
        assert aggregate_scores([1.0, 2.0, 3.0, 40.0], "median") == 2.5
        assert aggregate_scores([5.0, 6.0, 70.0], "median") == 6.0

    def test_missing_scores(self) -> None:
        assert aggregate_scores([None, None]) is None  # canvas spec: n_mastery below mastery → nil aggregate
        assert aggregate_scores([]) is None
        assert aggregate_scores([None, 2.0, 3.0]) == 2.5

    def test_unknown_stat(self) -> None:
        with pytest.raises(ValueError, match="mean' or 'median"):
            aggregate_scores([1.0], "mode")


# --------------------------------------------------------------------------- properties

value = st.integers(min_value=0, max_value=500).map(lambda i: i / 100)  # two-decimal scores 0 … 5
values = st.lists(value, min_size=1, max_size=12)
scaled = st.builds(
    lambda part, whole, points: part / whole * points,
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=1, max_value=100),
    st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 100.0]),
)
ORDER_FREE = ("highest", "average", "n_mastery")
ALL = (
    ("highest", None), ("latest", None), ("average", None), ("n_mastery", 1), ("n_mastery", 3),
    ("decaying_average", 65), ("decaying_average", 20), ("standard_decaying_average", 65),
    ("standard_decaying_average", 90),
)


def timed(scores: list[float]) -> list[Evidence]:
    return [ev(s, T + i * timedelta(minutes=1)) for i, s in enumerate(scores)]


def score_of(method: str, n: int | None, rows: list[Evidence]) -> float | None:
    return calculate_score(comp(method, n), rows, new_decaying_average=True)


class TestProperties:
    @given(value)
    def test_single_result_is_that_result_for_every_method(self, v: float) -> None:
        for method, n in ALL:
            expected = None if method == "n_mastery" and (n != 1 or v < 3.0) else round_score(v)
            assert score_of(method, n, [ev(v, T)]) == expected

    @given(values)
    def test_highest_bounds_every_method(self, scores: list[float]) -> None:
        rows = timed(scores)
        for method, n in ALL:
            result = score_of(method, n, rows)
            if result is not None:
                assert min(scores) <= result <= max(scores) == score_of("highest", None, rows)

    @given(values)
    def test_n_mastery_is_at_least_mastery_and_at_most_highest(self, scores: list[float]) -> None:
        result = score_of("n_mastery", 2, timed(scores))
        if result is not None:
            assert 3.0 <= result <= max(scores)
            assert result >= score_of("average", None, timed(scores))  # type: ignore[operator]

    @given(values, st.randoms(use_true_random=False))
    def test_order_free_methods_ignore_input_order(self, scores: list[float], rnd: object) -> None:
        shuffled = list(scores)
        rnd.shuffle(shuffled)  # type: ignore[attr-defined]
        for method in ORDER_FREE:
            assert score_of(method, 2, [ev(s) for s in scores]) == score_of(method, 2, [ev(s) for s in shuffled])

    @given(values, st.randoms(use_true_random=False))
    def test_time_ordered_methods_ignore_input_order_when_times_differ(
        self, scores: list[float], rnd: object
    ) -> None:
        rows = timed(scores)
        shuffled = list(rows)
        rnd.shuffle(shuffled)  # type: ignore[attr-defined]
        for method, n in ALL:
            assert score_of(method, n, rows) == score_of(method, n, shuffled)

    @given(values, st.lists(st.integers(min_value=0, max_value=12), max_size=4))
    def test_nil_scores_change_nothing(self, scores: list[float], positions: list[int]) -> None:
        rows = timed(scores)
        padded = list(rows)
        for p in positions:
            padded.insert(min(p, len(padded)), ev(None, T + timedelta(days=30)))
        for method, n in ALL:
            assert score_of(method, n, rows) == score_of(method, n, padded)

    @given(value, st.integers(min_value=1, max_value=10))
    def test_repeated_value(self, v: float, count: int) -> None:
        rows = timed([v] * count)
        for method, n in ALL:
            if method == "n_mastery":
                continue
            assert score_of(method, n, rows) == round_score(v)

    @given(value, value, st.integers(min_value=50, max_value=99))
    def test_two_results_weighted_equals_decaying(self, a: float, b: float, w: int) -> None:
        rows = timed([a, b])
        assert score_of("decaying_average", w, rows) == score_of("standard_decaying_average", w, rows)

    @given(values)
    def test_latest_is_the_last_in_time(self, scores: list[float]) -> None:
        assert score_of("latest", None, timed(scores)) == round_score(scores[-1])

    @given(values)
    def test_average_between_extremes(self, scores: list[float]) -> None:
        result = score_of("average", None, [ev(s) for s in scores])
        assert result is not None and min(scores) <= result <= max(scores)

    @given(st.lists(scaled, min_size=1, max_size=40))
    def test_fsum_agrees_with_rubys_array_sum(self, xs: list[float]) -> None:
        # On scores (a fraction times the points possible) the exact fsum and Ruby's compensated sum agree;
        # they can differ in the last bit on adversarial floats (a denormal next to a rounding tie).
        assert math.fsum(xs) == ruby_array_sum(xs)

    @given(values)
    def test_naive_and_utc_times_agree(self, scores: list[float]) -> None:
        aware = timed(scores)
        naive = [ev(e.score, e.submitted_at.replace(tzinfo=None)) for e in aware]  # type: ignore[union-attr]
        mixed = [a if i % 2 else b for i, (a, b) in enumerate(zip(aware, naive, strict=True))]
        for method, n in ALL:
            assert score_of(method, n, aware) == score_of(method, n, naive) == score_of(method, n, mixed)

    @given(values)
    def test_seconds_fractions_do_not_reorder_within_a_second(self, scores: list[float]) -> None:
        plain = [ev(s, T) for s in scores]
        jittered = [ev(s, T.replace(microsecond=(997 * i) % 1_000_000)) for i, s in enumerate(scores)]
        for method, n in ALL:
            assert score_of(method, n, plain) == score_of(method, n, jittered)


def ruby_array_sum(xs: list[float]) -> float:
    """Ruby's Array#sum on floats (Kahan-Babuska), ported from ruby/array.c ``ary_sum``."""
    total, compensation = 0.0, 0.0
    for x in xs:
        t = total + x
        if abs(total) >= abs(x):
            compensation += (total - t) + x
        else:
            compensation += (x - t) + total
        total = t
    return total + compensation


def test_time_key() -> None:
    assert time_key(ev(1.0)) == datetime(1970, 1, 1, tzinfo=UTC)
    assert time_key(ev(1.0, T.replace(microsecond=5))) == T
    assert time_key(ev(1.0, assessed_at=T)) == T
