"""Build a connector from a source entry of the district file, by its ``kind``.

Connector packages are imported only when a source of their kind is built, so one broken connector
cannot stop the others from loading.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from connectors.base import ConfigurationError, Connector

CONNECTORS: Mapping[str, tuple[str, str]] = {
    "canvas": ("connectors.canvas", "CanvasConnector"),
    "moodle": ("connectors.moodle", "MoodleConnector"),
    "oneroster-rest": ("connectors.oneroster", "OneRosterRestConnector"),
    "oneroster-csv": ("connectors.oneroster", "OneRosterCsvConnector"),
    "lti": ("connectors.lti", "LtiAdvantageConnector"),
    "fake": ("connectors.fake", "FakeConnector"),
}
KINDS = tuple(CONNECTORS)
#: Kinds whose connector recognises Trailmark's deep-linked mastery checks by their launch URL (``tool_url``).
TOOL_URL_KINDS = frozenset({"canvas", "moodle"})


def connector_class(kind: str) -> type:
    """Import and return the connector class for ``kind``."""
    if kind not in CONNECTORS:
        raise ConfigurationError(f"unknown source kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    module_name, class_name = CONNECTORS[kind]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, class_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"the {kind} connector could not be loaded ({type(exc).__name__}: {exc})") from exc


def build_connector(cfg: Mapping[str, Any], *, tool_url: str | None = None, **context: Any) -> Connector:
    """Build the connector a (secret-resolved) source entry describes.

    ``tool_url`` is Trailmark's public base URL (``server.public_url``): the default of a Canvas or Moodle
    source's own ``tool_url``, under which its deep-linked mastery checks launch. ``context`` is passed to the
    connector's ``from_config`` (an LTI source needs ``platform`` and ``signer``; tests pass a ``session``).
    """
    name = str(cfg.get("name") or "?")
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in CONNECTORS:
        raise ConfigurationError(f"source {name!r}: unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}",
                                 source=name)
    try:
        cls = connector_class(kind)
    except ConfigurationError as exc:
        raise ConfigurationError(f"source {name!r}: {exc}", source=name) from exc
    if kind in TOOL_URL_KINDS and tool_url and not cfg.get("tool_url"):
        cfg = {**cfg, "tool_url": tool_url}
    return cls.from_config(cfg, **context)  # type: ignore[attr-defined,no-any-return]
