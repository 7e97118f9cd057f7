"""Server-rendered SVG charts. Every series has a shape as well as a colour, and every chart has a text summary
(its accessible name and description) next to a data table the page shows with it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 320
LEFT, RIGHT, TOP, BOTTOM = 52, 20, 18, 46

STATE_COLOURS = {"on_track": "#1a7f37", "ahead": "#0b5cad", "far_ahead": "#6f42c1", "behind": "#b42318"}
STATE_NAMES = {"on_track": "On track", "ahead": "Ahead", "far_ahead": "Far ahead", "behind": "Behind"}


def shape_path(state: str, x: float, y: float, r: float = 5.5) -> str:
    """Return an SVG path for a pace state's marker centred on (x, y): circle, triangles, diamond."""
    if state == "behind":  # triangle pointing down
        return f"M{x - r:.1f},{y - r * 0.8:.1f}H{x + r:.1f}L{x:.1f},{y + r:.1f}Z"
    if state == "ahead":  # triangle pointing up
        return f"M{x - r:.1f},{y + r * 0.8:.1f}H{x + r:.1f}L{x:.1f},{y - r:.1f}Z"
    if state == "far_ahead":  # diamond
        return f"M{x:.1f},{y - r * 1.15:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r * 1.15:.1f}L{x - r:.1f},{y:.1f}Z"
    k = r * 0.5523  # a circle from four cubic curves
    return (f"M{x - r:.1f},{y:.1f}C{x - r:.1f},{y - k:.1f} {x - k:.1f},{y - r:.1f} {x:.1f},{y - r:.1f}"
            f"C{x + k:.1f},{y - r:.1f} {x + r:.1f},{y - k:.1f} {x + r:.1f},{y:.1f}"
            f"C{x + r:.1f},{y + k:.1f} {x + k:.1f},{y + r:.1f} {x:.1f},{y + r:.1f}"
            f"C{x - k:.1f},{y + r:.1f} {x - r:.1f},{y + k:.1f} {x - r:.1f},{y:.1f}Z")


@functools.lru_cache(maxsize=64)
def marker_icon(state: str, size: int = 14) -> Markup:
    """A small inline SVG of a pace state's marker, for badges and legends (decorative: the text says it)."""
    colour = STATE_COLOURS.get(state, "#4a5560")
    half = size / 2
    return Markup(
        f'<svg class="icon" width="{size}" height="{size}" viewBox="0 0 {size} {size}" aria-hidden="true" '
        f'focusable="false"><path d="{shape_path(state, half, half, half - 1.5)}" fill="{colour}" '
        f'stroke="#fff" stroke-width="1"/></svg>')


@dataclass(frozen=True, slots=True)
class ChartStudent:
    """One student on the pace chart: their completion days and today's status."""

    name: str
    short_name: str
    state: str
    completed: int
    days: Sequence[date]  # completion days, oldest first (modules completed without a date are not in it)


def _ticks(start: date, end: date, most: int = 7) -> list[date]:
    span = (end - start).days
    step = max(7, math.ceil(span / most / 7) * 7)
    first = start + timedelta(days=(7 - start.weekday()) % 7)  # Mondays
    ticks = []
    day = first
    while day <= end:
        ticks.append(day)
        day += timedelta(days=step)
    return ticks


def _day_label(day: date) -> str:
    return f"{day.day} {day:%b}"


def pace_chart(*, chart_id: str, start: date, end: date, today: date, line: Sequence[tuple[date, int]],
               total: int, students: Sequence[ChartStudent], title: str, summary: str,
               label_names: bool = True) -> Markup:
    """Draw modules completed over the term: the minimum-pace steps, today, and every student.

    Each student is a thin step line up to today and a marker at today shaped by pace state; students sharing a
    count stand side by side, with their names beside the group. ``summary`` is the chart's description for
    screen readers; the page shows the same data as a table.
    """
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    domain_end = end + timedelta(days=1)
    span = max((domain_end - start).days, 1)
    top = max(total, 1)

    def x(day: date) -> float:
        return LEFT + plot_w * min(max((day - start).days, 0), span) / span

    def y(count: float) -> float:
        return TOP + plot_h * (1 - count / top)

    parts: list[str] = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{chart_id}-t {chart_id}-d" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(summary)}</desc>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#c9d1d9"/>',
    ]
    label_every = 1 if total <= 10 else math.ceil(total / 10)
    for count in range(0, total + 1):
        yy = y(count)
        if 0 < count < total:
            parts.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6eaef"/>')
        if count % label_every == 0 or count == total:
            parts.append(f'<text x="{LEFT - 8}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{count}</text>')
    for tick in _ticks(start, end):
        xx = x(tick)
        parts.append(f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 5}" stroke="#4a5560"/>'
                     f'<text x="{xx:.1f}" y="{TOP + plot_h + 19}" text-anchor="middle" class="tick">'
                     f'{_day_label(tick)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" class="axis">'
                 f'Term dates ({escape(_day_label(start))} – {escape(_day_label(end))})</text>')
    parts.append(f'<text transform="translate(14 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'class="axis">Modules completed</text>')

    # students' step lines, under everything else
    today_x = x(min(max(today, start), domain_end))
    for s in students:
        base = max(s.completed - len(s.days), 0)
        d = [f"M{LEFT:.1f},{y(base):.1f}"]
        level = base
        for day in s.days:
            if day > today:
                break
            d.append(f"H{x(day):.1f}V{y(level + 1):.1f}")
            level += 1
        d.append(f"H{today_x:.1f}")
        parts.append(f'<path d="{"".join(d)}" fill="none" stroke="{STATE_COLOURS.get(s.state, "#8a99a8")}" '
                     f'stroke-opacity=".45" stroke-width="1.5"><title>{escape(s.name)}</title></path>')

    # the minimum pace: expected count on a day = modules due before it, so each step rises the day after a due date
    steps = [f"M{x(start):.1f},{y(0):.1f}"]
    for due, count in line[1:] if line and line[0][1] == 0 else line:
        steps.append(f"H{x(due + timedelta(days=1)):.1f}V{y(count):.1f}")
    steps.append(f"H{x(domain_end):.1f}")
    parts.append(f'<path d="{"".join(steps)}" fill="none" stroke="#1b1f24" stroke-width="2.5" '
                 f'stroke-dasharray="7 4"><title>Minimum pace</title></path>')

    # today
    if start <= today <= domain_end:
        parts.append(f'<line x1="{today_x:.1f}" x2="{today_x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#10243e" '
                     f'stroke-width="1.5"/>'
                     f'<text x="{today_x:.1f}" y="{TOP - 5}" text-anchor="middle" class="today">Today</text>')

    # markers at today, side by side per count
    rows: dict[int, list[ChartStudent]] = {}
    for s in students:
        rows.setdefault(s.completed, []).append(s)
    gap = 12.0
    for count, members in sorted(rows.items()):
        yy = y(count)
        width = gap * (len(members) - 1)
        first = today_x - width / 2
        if first < LEFT + 6:
            first = LEFT + 6
        if first + width > LEFT + plot_w - 6:
            first = LEFT + plot_w - 6 - width
        for i, s in enumerate(members):
            xx = first + gap * i
            parts.append(f'<path d="{shape_path(s.state, xx, yy)}" fill="{STATE_COLOURS.get(s.state, "#4a5560")}" '
                         f'stroke="#fff" stroke-width="1.2"><title>{escape(s.name)}: {s.completed} of {total} '
                         f'modules, {escape(STATE_NAMES.get(s.state, s.state).lower())}</title></path>')
        if label_names:
            names = [m.short_name for m in members]
            text = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
            right_room = LEFT + plot_w - (first + width)
            if first - LEFT > right_room:
                lx, anchor = first - 10, "end"
            else:
                lx, anchor = first + width + 10, "start"
            parts.append(f'<text x="{lx:.1f}" y="{yy + 4:.1f}" text-anchor="{anchor}" class="names">'
                         f'{escape(text)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def growth_chart(*, chart_id: str, points: Sequence[tuple[date, int]], total: int, title: str,
                 summary: str) -> Markup:
    """Draw competencies mastered at each profile snapshot over the term (a line with a marker per snapshot)."""
    width, height = 560, 220
    left, right, top_m, bottom = 44, 20, 16, 40
    plot_w, plot_h = width - left - right, height - top_m - bottom
    first, last = points[0][0], points[-1][0]
    span = max((last - first).days, 1)
    top = max(total, 1)

    def x(day: date) -> float:
        return left + plot_w * (day - first).days / span

    def y(count: float) -> float:
        return top_m + plot_h * (1 - count / top)

    parts = [
        f'<svg class="chart growth" viewBox="0 0 {width} {height}" role="img" '
        f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(summary)}</desc>',
        f'<rect x="{left}" y="{top_m}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#c9d1d9"/>',
    ]
    step = 1 if total <= 10 else math.ceil(total / 8)
    for count in range(0, total + 1, step):
        yy = y(count)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e6eaef"/>'
                     f'<text x="{left - 8}" y="{yy + 4:.1f}" text-anchor="end" class="tick">{count}</text>')
    shown = points if len(points) <= 8 else points[:: math.ceil(len(points) / 8)]
    for day, _ in shown:
        parts.append(f'<text x="{x(day):.1f}" y="{top_m + plot_h + 18}" text-anchor="middle" class="tick">'
                     f'{_day_label(day)}</text>')
    d = "".join(("M" if i == 0 else "L") + f"{x(day):.1f},{y(count):.1f}" for i, (day, count) in enumerate(points))
    parts.append(f'<path d="{d}" fill="none" stroke="#0b5cad" stroke-width="2.5"/>')
    for day, count in points:
        parts.append(f'<path d="{shape_path("on_track", x(day), y(count), 4.5)}" fill="#0b5cad" stroke="#fff">'
                     f'<title>{_day_label(day)}: {count} mastered</title></path>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">'
                 f'Profile snapshots</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
