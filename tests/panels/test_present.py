"""Page models and charts without a server: grid bands, wording, plans, SVG output."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from marshmallow import ValidationError

from plugin.panels import charts, present, schemas
from plugin.store.queries import (
    AlertRow,
    ClassInfo,
    CompetencyInfo,
    GateRow,
    MasteryRow,
    ModuleInfo,
    PaceRow,
    PlanRow,
    SnapshotRow,
    StudentInfo,
)

RATINGS = ((4.0, "Exceeds"), (3.0, "Mastery"), (2.0, "Near mastery"), (1.0, "Well below"))
COMP = CompetencyInfo(7, 1, "Graph lines", 4.0, 3.0, RATINGS, 10)


def _mastery(score, mastered, level=None, count=1):
    return MasteryRow(1, 5, 7, score, mastered, level, count, None)


@pytest.mark.parametrize(("score", "mastered", "band", "letter"), [
    (4.0, True, "e", "E"), (3.5, True, "m", "M"), (3.0, True, "m", "M"), (2.0, False, "n", "N"),
    (2.99, False, "n", "N"), (1.99, False, "b", "B"), (0.0, False, "b", "B"),
])
def test_cells_have_a_band_a_letter_and_words(score, mastered, band, letter):
    cell = present.cell_for(_mastery(score, mastered, "Level"), present.scale_of(COMP))
    assert (cell.band, cell.letter) == (band, letter)
    assert cell.label.startswith("Level, ")


def test_cells_without_evidence_or_score():
    scale = present.scale_of(COMP)
    assert present.cell_for(None, scale) == present.Cell("na", "–", "not assessed")
    pending = present.cell_for(_mastery(None, False, count=1), scale)
    assert (pending.band, pending.letter, pending.label) == ("p", "P", "pending, 1 results so far")
    # a scale with nothing above mastery never says "exceeds"
    flat = CompetencyInfo(8, 1, "x", 5.0, 5.0, ((5.0, "Done"),), None)
    assert present.cell_for(_mastery(5.0, True, "Done"), present.scale_of(flat)).band == "m"


def test_every_band_is_explained_in_the_legend():
    assert {b.band.value for b in present.BANDS} == {"e", "m", "n", "b", "p", "na"}
    assert len({b.letter for b in present.BANDS}) == len(present.BANDS)


def test_columns_are_numbered_by_module_and_grouped():
    modules = [ModuleInfo(10, 1, "Lines", 1, ()), ModuleInfo(11, 1, "Curves", 2, (10,))]
    comps = [CompetencyInfo(1, 1, "a", 4, 3, RATINGS, 10), CompetencyInfo(2, 1, "b", 4, 3, RATINGS, 10),
             CompetencyInfo(3, 1, "c", 4, 3, RATINGS, 11), CompetencyInfo(4, 1, "d", 4, 3, RATINGS, None)]
    columns, groups = present.columns_for(comps, modules)
    assert [c.code for c in columns] == ["1.1", "1.2", "2.1", "X.1"]
    assert [(g.number, g.title, g.span) for g in groups] == [("1", "Lines", 2), ("2", "Curves", 1),
                                                             ("X", "Not in a module", 1)]


def test_far_behind_is_a_behind_alert_at_the_top_level():
    assert present.alert_kind("behind", 3) == "far_behind"
    assert present.alert_kind("behind", 2) == "behind"
    assert present.alert_kind("stalled", 3) == "stalled"
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    views = present.alert_views([AlertRow(1, 1, 5, "behind", 3, "x", now - timedelta(days=4), now)],
                                {5: StudentInfo(5, "Ada", "L", "s5")}, now.date())
    assert (views[0].kind_label, views[0].days_open) == ("Far behind", 4)


def test_gate_reasons_are_worded_for_the_student_and_for_others():
    modules = [ModuleInfo(1, 1, "Lines", 1, ()), ModuleInfo(2, 1, "Curves", 2, (1,))]
    gates = {1: GateRow(1, 5, 1, "open", "no_prerequisites", (), False, None),
             2: GateRow(1, 5, 2, "locked", "missing_mastery", ({"competency_id": "9", "title": "Slope",
                                                                 "module_title": "Lines", "score": 2.5,
                                                                 "needed": 3.0},), False, None)}
    steps, summary = present.path_steps(modules, gates, own=True, name="Ada")
    assert summary == "Next: continue with Lines."
    assert steps[1].message == "Locked until you master Slope (from Lines)."
    assert steps[1].next_step == "Next: work on Slope in Lines (2.5 of 3 points so far)."
    assert [s.is_next for s in steps] == [True, False]
    steps, summary = present.path_steps(modules, gates, own=False, name="Ada")
    assert summary == "Next for Ada: Lines (open)."
    assert steps[1].message == "Locked until Ada masters Slope (2.5 of 3), from Lines."
    assert steps[1].next_step == ""


def test_plan_ignores_stale_edits_and_follows_the_term():
    info = ClassInfo(1, "Algebra", "Fall", date(2026, 9, 1), date(2026, 12, 20))
    row = PlanRow(1, None, None, {"10": "2026-10-01", "99": "2026-10-02", "11": "2030-01-01", "12": "bad"}, False,
                  (), None)
    plan = present.plan_for(info, row, [10, 11, 12])
    assert plan is not None
    due = dict(plan.due)
    assert due["10"] == date(2026, 10, 1)  # the teacher's date
    assert due["11"] < date(2026, 12, 20)  # an edit outside the term is left out: the even date stands
    assert due["12"] == date(2026, 12, 20)  # the last module is due on the last day
    assert present.plan_for(ClassInfo(1, "x", None, None, None), None, [10]) is None
    lines = present.plan_lines(plan, [ModuleInfo(10, 1, "A", 1, ()), ModuleInfo(11, 1, "B", 2, ())])
    assert [line.edited for line in lines] == [True, False]


def test_growth_lists_what_moved():
    cols, _ = present.columns_for([COMP], [ModuleInfo(10, 1, "Lines", 1, ())])
    snaps = [SnapshotRow(1, date(2026, 3, 1), {"skills": {}}),
             SnapshotRow(1, date(2026, 3, 8), {"skills": {"7": [2.0, False, 1]}}),
             SnapshotRow(1, date(2026, 3, 15), {"skills": {"7": [3.5, True, 2]}})]
    points, changes = present.growth_of(snaps, 5, cols)
    assert [(p.mastered, p.assessed) for p in points] == [(0, 0), (0, 1), (1, 1)]
    (change,) = changes
    assert (change.first, change.last, change.change) == (2.0, 3.5, 1.5)
    assert change.first_assessed == date(2026, 3, 8) and change.mastered_on == date(2026, 3, 15)


def test_pace_sentence_uses_the_rules_wording():
    row = PaceRow(1, 5, "behind", "in_term", 1, 3, 5, 2, 9, 0, 0, None, None, False)
    assert present.pace_sentence(row) == "2 modules (9 days) behind the minimum pace"
    assert present.pace_sentence(None) == "no pace plan yet"


def test_pace_chart_draws_every_student_with_a_shape_and_a_label():
    start = date(2026, 9, 1)
    svg = str(charts.pace_chart(
        chart_id="t", start=start, end=start + timedelta(days=99), today=start + timedelta(days=50),
        line=[(start, 0), (start + timedelta(days=30), 1), (start + timedelta(days=60), 2)], total=2,
        students=[charts.ChartStudent("Ada <Lovelace>", "Ada", "behind", 0, ()),
                  charts.ChartStudent("Bo", "Bo", "far_ahead", 2, (start + timedelta(days=5),
                                                                   start + timedelta(days=20)))],
        title="Pace", summary="Two students."))
    assert svg.startswith('<svg class="chart"') and 'role="img"' in svg and 'aria-labelledby="t-t t-d"' in svg
    assert "<title>Ada &lt;Lovelace&gt;: 0 of 2 modules, behind</title>" in svg
    assert "<title>Bo: 2 of 2 modules, far ahead</title>" in svg
    assert svg.count("<title>Minimum pace</title>") == 1 and ">Today</text>" in svg
    assert "<script" not in svg and "<Lovelace>" not in svg
    assert re.search(r'<text [^>]*class="names">Ada</text>', svg)


def test_growth_chart_marks_each_snapshot():
    svg = str(charts.growth_chart(chart_id="g", points=[(date(2026, 3, 1), 0), (date(2026, 3, 8), 2)], total=4,
                                  title="Growth", summary="0 then 2."))
    assert svg.count("mastered</title>") == 2 and "<desc id=\"g-d\">0 then 2.</desc>" in svg


def test_form_messages_name_the_field():
    with pytest.raises(ValidationError) as caught:
        schemas.EntryForm().load({"kind": "goal", "text": "", "target_date": "tomorrow"})
    field, message = schemas.first_error(caught.value)
    assert (field, message) == ("text", "Text: Write something before saving.")
    loaded = schemas.PacePlanForm().load({"due_4": "2026-10-01", "due_5": "", "skip_weekends": "on"})
    assert loaded["due"] == {4: date(2026, 10, 1), 5: None} and loaded["skip_weekends"] is True
    assert schemas.OverrideForm().load({"student_id": "3", "module_id": "4", "kind": "accommodation",
                                        "note": "  ", "extra": "ignored"})["note"] == ""
