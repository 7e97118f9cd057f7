"""Mastery gates enforced by the LMS itself: Canvas gate writes, and the Moodle restrict-access set-up.

A mastery check in module M opens module N (``MasteryCheck.module_ids``); Trailmark posts the check's full score
when the student has shown mastery. For the LMS to hold N shut until then:

- Canvas: one ``GateWrite`` per gate (N's prerequisites include M; the check item requires the full score),
  queued in the outbox under a key derived from the gate's content, so it is sent once and again only when the
  gate changes (another check item, another threshold, modules moved). The outbox's result (sent, or refused
  with Canvas's reason) is recorded on the gate through :func:`record_outcome`.
- Moodle: no web service writes restrict-access rules, so a teacher sets each gate once, following the steps
  shown in the class view; the rules read back at each sync (``Module.access_conditions``) say whether the gate
  is enforced, and until it is, the teacher sees that students can open the module before mastery.

``lms_gate`` keeps one row per gate: queued, applied, failed (with the reason) or needs_teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session, aliased

from connectors import outbox
from connectors.base import Activity, GateWrite, Module
from connectors.moodle.availability import restriction_instructions, to_percent
from plugin.learning.recompute import ClassData
from plugin.store import models as m
from plugin.store import queries

log = logging.getLogger("trailmark.lms_gates")

QUEUED, APPLIED, FAILED, NEEDS_TEACHER = "queued", "applied", "failed", "needs_teacher"
CANVAS, MOODLE = "canvas", "moodle"

STATUS_LABELS: Mapping[tuple[str, str], str] = {
    (CANVAS, QUEUED): "Waiting to be sent to Canvas",
    (CANVAS, APPLIED): "Set in Canvas",
    (CANVAS, FAILED): "Not set in Canvas",
    (MOODLE, APPLIED): "Enforced by Moodle",
    (MOODLE, NEEDS_TEACHER): "Not restricted in Moodle yet",
}


@dataclass(frozen=True, slots=True)
class _Gate:
    """One gate of a class: ``module_id`` opens after a full score on ``check_id``, which sits in ``after_id``."""

    module_id: int
    after_id: int
    check_id: int
    min_score: float


@dataclass(frozen=True, slots=True)
class GateView:
    """One gate as the class view shows it."""

    lms: str
    module_title: str
    after_title: str
    check_title: str
    status: str
    status_label: str
    detail: str
    warning: str | None = None
    steps: tuple[str, ...] = ()
    availability: str | None = None

    @property
    def lms_name(self) -> str:
        return "Canvas" if self.lms == CANVAS else "Moodle"


# --------------------------------------------------------------------------- keeping gates in step


def _gates_of(data: ClassData, check_modules: Mapping[int, int | None]) -> list[_Gate]:
    gates = []
    for check in data.checks:
        after = check_modules.get(int(check.activity_id))
        if after is None:
            continue
        for opened in check.module_ids:
            if int(opened) != after:
                gates.append(_Gate(int(opened), after, int(check.activity_id), float(check.score_maximum)))
    return gates


def refresh(session: Session, district_id: int, datas: Iterable[ClassData], *, now: datetime) -> int:
    """Bring the classes' LMS gates in step with their mastery checks; return the GateWrites queued.

    Runs once per batch of classes after the learning state is stored: a few queries per class with mastery
    checks, none per student.
    """
    datas = list(datas)
    class_ids = [int(d.class_id) for d in datas]
    if not class_ids:
        return 0
    existing: dict[int, dict[tuple[int, int], m.LmsGateRecord]] = defaultdict(dict)
    for row in session.scalars(select(m.LmsGateRecord).where(m.LmsGateRecord.class_id.in_(class_ids))):
        existing[row.class_id][(row.module_id, row.check_activity_id)] = row
    check_ids = {int(c.activity_id) for d in datas for c in d.checks}
    checks: dict[int, m.Activity] = {}
    if check_ids:
        checks = {a.id: a for a in session.scalars(select(m.Activity).where(m.Activity.id.in_(check_ids)))}
    check_modules = {a: checks[a].module_id for a in checks}
    queued = 0
    for data in datas:
        cid = int(data.class_id)
        gates = _gates_of(data, check_modules)
        rows = existing.get(cid, {})
        target = _target(session, district_id, cid) if gates else None
        if target is None:
            gates = []
        else:
            queued += _keep(session, district_id, cid, target, gates, checks, rows, now)
        wanted = {(g.module_id, g.check_id) for g in gates}
        stale = [row.id for key, row in rows.items() if key not in wanted]
        if stale:
            session.execute(delete(m.LmsGateRecord).where(m.LmsGateRecord.id.in_(stale)))
    return queued


def _target(session: Session, district_id: int, class_id: int) -> tuple[m.Source, str] | None:
    """The Canvas or Moodle source a class's writes go to (as progress decides), else None."""
    from plugin.progress import _write_target

    found = _write_target(session, district_id, class_id)
    if found is None or not isinstance(found[0], m.Source) or found[0].kind not in (CANVAS, MOODLE):
        return None
    return found


def _keep(session: Session, district_id: int, class_id: int, target: tuple[m.Source, str], gates: Sequence[_Gate],
          checks: Mapping[int, m.Activity], rows: Mapping[tuple[int, int], m.LmsGateRecord], now: datetime) -> int:
    source, namespace = target
    module_ids = {g.module_id for g in gates} | {g.after_id for g in gates}
    modules = {x.id: x for x in session.scalars(select(m.Module).where(m.Module.id.in_(module_ids)))}
    for x in list(modules.values()):
        module_ids.update(int(p) for p in x.prerequisite_ids or [])
    refs = queries.external_ids(session, district_id, namespace, {"class": {class_id}, "module": module_ids,
                                                   "activity": {g.check_id for g in gates}})
    queued = 0
    for gate in gates:
        module, after, check = modules.get(gate.module_id), modules.get(gate.after_id), checks.get(gate.check_id)
        if module is None or after is None or check is None:
            continue
        if source.kind == CANVAS:
            status, detail, setup, key, write = _canvas(source, refs, class_id, gate, module, after)
        else:
            status, detail, setup = _moodle(refs, class_id, gate, module, check)
            key = write = None
        row = rows.get((gate.module_id, gate.check_id))
        if row is not None and key is not None and row.outbox_key == key:
            continue  # already queued: the outbox's result keeps the row up to date
        if write is not None and key is not None:
            if outbox.enqueue(session, district_id, source, write, key, now=now):
                queued += 1
            else:  # this very gate was queued before (e.g. a threshold changed and changed back)
                status, detail = _from_outbox(session, district_id, key, status, detail)
        values = {"after_module_id": gate.after_id, "lms": source.kind, "status": status, "detail": detail,
                  "setup": setup, "outbox_key": key}
        if row is None:
            session.add(m.LmsGateRecord(district_id=district_id, class_id=class_id, module_id=gate.module_id,
                                        check_activity_id=gate.check_id, updated_at=now, **values))
        elif any(getattr(row, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(row, k, v)
            row.updated_at = now
    return queued


def gate_key(target: outbox.Target | m.Source, setup: Mapping[str, Any]) -> str:
    """A stable idempotency key for a gate: the same content gives the same key, any change a new one."""
    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return (f"gate:{outbox.Target.of(target)}:{setup['class']}:{setup['module']}:{setup['check']}:"
            f"{digest[:24]}")[:255]


def _canvas(source: m.Source, refs: Mapping[tuple[str, int], str], class_id: int, gate: _Gate, module: m.Module,
            after: m.Module) -> tuple[str, str, dict[str, Any], str | None, GateWrite | None]:
    klass, ext_module = refs.get(("class", class_id)), refs.get(("module", gate.module_id))
    ext_after, ext_check = refs.get(("module", gate.after_id)), refs.get(("activity", gate.check_id))
    missing = [what for what, ext in (("the course", klass), (f"the module “{module.title}”", ext_module),
                                       (f"the module “{after.title}”", ext_after),
                                       ("the mastery check", ext_check)) if ext is None]
    if missing:
        return (FAILED, f"Trailmark has not seen {', '.join(missing)} in Canvas yet; the gate is set after the "
                        "next sync that brings it.", {}, None, None)
    assert klass is not None and ext_module is not None and ext_after is not None and ext_check is not None
    prerequisites = sorted({ext_after, *(refs[("module", int(p))] for p in module.prerequisite_ids or []
                                        if ("module", int(p)) in refs)}, key=lambda x: (len(x), x))
    setup: dict[str, Any] = {"class": klass, "module": ext_module, "prerequisites": prerequisites,
                             "check": ext_check, "min_score": gate.min_score,
                             "positions": [after.position, module.position]}
    write = GateWrite(class_sourced_id=klass, module_sourced_id=ext_module,
                      prerequisite_module_sourced_ids=tuple(prerequisites), check_activity_sourced_id=ext_check,
                      min_score=gate.min_score)
    detail = (f"Queued: “{module.title}” will need “{after.title}” completed, and the mastery check a score of "
              f"{gate.min_score:g}.")
    return QUEUED, detail, setup, gate_key(source, setup), write


def _moodle(refs: Mapping[tuple[str, int], str], class_id: int, gate: _Gate, module: m.Module,
            check: m.Activity) -> tuple[str, str, dict[str, Any]]:
    klass, ext_check = refs.get(("class", class_id), ""), refs.get(("activity", gate.check_id))
    if ext_check is None:
        return (NEEDS_TEACHER, f"Trailmark has not seen the mastery check “{check.title}” in Moodle's gradebook "
                               "yet; the set-up steps appear after the next sync that brings it.", {})
    steps = restriction_instructions(
        Module(sourced_id=refs.get(("module", gate.module_id), ""), class_sourced_id=klass, title=module.title),
        Activity(sourced_id=ext_check, class_sourced_id=klass, title=check.title,
                 score_maximum=check.score_maximum), gate.min_score)
    percent = round(to_percent(gate.min_score, check.score_maximum), 5)
    items = [(str(title), conditions) for title, conditions in module.access_conditions or []]
    unrestricted = [title for title, conditions in items
                    if not any(str(item) == ext_check and float(low) >= percent - 1e-9 for item, low in conditions)]
    setup = {"steps": list(steps.steps), "availability": steps.availability_json,
             "grade_item": steps.grade_item_title, "percent": steps.min_percent, "unrestricted": unrestricted,
             "items": len(items)}
    if items and not unrestricted:
        return (APPLIED, f"Every activity in “{module.title}” needs “{check.title}” at {percent:g} % or more: "
                         "Moodle keeps the module shut until mastery.", setup)
    if not items:
        return (NEEDS_TEACHER, f"Trailmark sees no activity in “{module.title}” to check; add the restriction to "
                               "each activity you place there.", setup)
    return NEEDS_TEACHER, f"Not restricted yet: {', '.join(unrestricted)}.", setup


def _from_outbox(session: Session, district_id: int, key: str, status: str, detail: str) -> tuple[str, str]:
    item = session.scalars(select(m.OutboxItem).where(m.OutboxItem.district_id == district_id,
                                                      m.OutboxItem.idempotency_key == key)).first()
    if item is None:
        return status, detail
    return _outcome_status(item.status, item.last_error) or (status, detail)


# --------------------------------------------------------------------------- outbox results


_ERROR_NAME = re.compile(r"\b[A-Z][A-Za-z]*(?:Error|Rejected|NotFound|Limited): ")


def _outcome_status(status: str, last_error: str | None) -> tuple[str, str] | None:
    if status == outbox.SENT:
        return APPLIED, "Canvas accepted the prerequisite and the mastery check's minimum score."
    reason = _ERROR_NAME.sub("", last_error or "").strip()  # the LMS's words, without our exception names
    if status != outbox.PENDING:  # dead, or cancelled from the admin console
        return FAILED, f"Reason: {reason}" if reason else "The write was stopped before Canvas answered."
    if reason:
        return QUEUED, f"Canvas did not take it yet; Trailmark tries again. Last answer: {reason}"
    return None


def record_outcome(session: Session, item_id: int, outcome: Mapping[str, Any], now: datetime) -> None:
    """Record an outbox result on the gate it set up (the outbox calls this for every GateWrite)."""
    found = _outcome_status(str(outcome.get("status")), outcome.get("last_error"))
    if found is None:
        return
    status, detail = found
    key = select(m.OutboxItem.idempotency_key).where(m.OutboxItem.id == item_id).scalar_subquery()
    session.execute(update(m.LmsGateRecord).where(m.LmsGateRecord.outbox_key == key)
                    .values(status=status, detail=detail[:2000], updated_at=now))


outbox.on_outcome("gate", record_outcome)


# --------------------------------------------------------------------------- the class view


_OPENED, _AFTER = aliased(m.Module), aliased(m.Module)
_CLASS_GATES = (  # built once: the teacher panel asks on every render
    select(m.LmsGateRecord, _OPENED.title, _AFTER.title, m.Activity.title)
    .join(_OPENED, _OPENED.id == m.LmsGateRecord.module_id)
    .join(_AFTER, _AFTER.id == m.LmsGateRecord.after_module_id)
    .join(m.Activity, m.Activity.id == m.LmsGateRecord.check_activity_id)
    .where(m.LmsGateRecord.district_id == bindparam("district_id"), m.LmsGateRecord.class_id == bindparam("class_id"))
    .order_by(_OPENED.position, _OPENED.id, m.LmsGateRecord.id))


def class_gates(session: Session, district_id: int, class_id: int) -> list[GateView]:
    """The class's LMS gates for the teacher, in module order (one query)."""
    rows = session.execute(_CLASS_GATES, {"district_id": district_id, "class_id": class_id}).all()
    views = []
    for row, title, after_title, check_title in rows:
        setup = row.setup or {}
        warning = None
        if row.lms == MOODLE and row.status != APPLIED:
            warning = f"Module “{title}” is not actually restricted in Moodle: students can open it before mastery."
        views.append(GateView(
            lms=row.lms, module_title=title, after_title=after_title, check_title=check_title, status=row.status,
            status_label=STATUS_LABELS.get((row.lms, row.status), row.status), detail=row.detail, warning=warning,
            steps=tuple(setup.get("steps") or ()) if row.lms == MOODLE else (),
            availability=setup.get("availability") if row.lms == MOODLE else None))
    return views
