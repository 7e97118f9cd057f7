"""plugin/learning stays pure: no web framework, no database, no HTTP, nothing else from plugin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LEARNING = Path(__file__).resolve().parents[2] / "plugin" / "learning"
FORBIDDEN_ROOTS = {
    "flask", "werkzeug", "jinja2", "sqlalchemy", "alembic", "psycopg", "psycopg2", "redis",
    "requests", "httpx", "urllib3", "pylti1p3", "apscheduler",
}
MODULES = sorted(LEARNING.glob("*.py"))


def imported_names(path: Path) -> list[str]:
    """Return every module a file imports, relative imports resolved against plugin.learning."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["plugin", "learning"][: max(0, 2 - (node.level - 1))]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append(module)
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(names: list[str]) -> list[str]:
    """Return the imports plugin/learning must not have."""
    bad = []
    for name in names:
        root = name.split(".")[0]
        if root in FORBIDDEN_ROOTS:
            bad.append(name)
        elif root == "plugin" and name != "plugin" and not (
            name == "plugin.learning" or name.startswith("plugin.learning.")
        ):
            bad.append(name)
    return bad


def test_the_folder_has_modules() -> None:
    assert {p.stem for p in MODULES} >= {"mastery", "gating", "pace", "alerts", "profile", "groups", "recompute"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_nothing_impure(path: Path) -> None:
    assert violations(imported_names(path)) == []


@pytest.mark.parametrize(
    "source, bad",
    [
        ("import flask", ["flask"]),
        ("from sqlalchemy.orm import Session", ["sqlalchemy.orm", "sqlalchemy.orm.Session"]),
        ("import requests.adapters", ["requests.adapters"]),
        ("from plugin.store import models", ["plugin.store", "plugin.store.models"]),
        ("from plugin import store", ["plugin.store"]),
        ("from .. import panels", ["plugin.panels"]),
        ("from ..store.models import Result", ["plugin.store.models", "plugin.store.models.Result"]),
        ("from . import mastery", []),
        ("from plugin.learning.mastery import Evidence", []),
        ("import math, datetime", []),
    ],
)
def test_the_checker_catches_what_it_should(tmp_path: Path, source: str, bad: list[str]) -> None:
    path = tmp_path / "sample.py"
    path.write_text(source + "\n")
    assert violations(imported_names(path)) == bad


def test_importing_every_module_loads_no_framework() -> None:
    code = (
        "import sys\n"
        + "".join(f"import plugin.learning.{p.stem}\n" for p in MODULES if p.stem != "__init__")
        + f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN_ROOTS)!r}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=LEARNING.parents[1]
    )
    assert out.stdout.strip() == "[]"
