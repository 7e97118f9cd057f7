"""Trailmark's mastery-check items as an LMS keeps them: recognised by their launch URL, never by a title.

A teacher places a check by LTI deep linking. The content item's URL names the placement in its query
(``/lti/launch?placement=mastery-check&module=<module sourced id>``) and the LMS keeps that URL with the
item: Canvas in the assignment's ``external_tool_tag_attributes.url``, Moodle in the LTI instance's
``toolurl`` (with the content item's custom parameters in ``instructorcustomparameters``). A URL counts only
when it is this Trailmark's launch URL: the same scheme, host, port and base path as ``tool_url``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs, urlencode, urlsplit

CHECK_CATEGORY = "trailmark-mastery-check"  # Activity.category of a check (the line item tag, too)
CHECK_PLACEMENT = "mastery-check"
LAUNCH_PATH = "/lti/launch"
PLACEMENT_PARAM = "placement"
MODULE_PARAM = "module"
CUSTOM_PLACEMENT = "trailmark_placement"
CUSTOM_MODULE = "trailmark_module"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def check_launch_path(module_sourced_id: str) -> str:
    """Return the launch path (below the tool's base URL) of one module's mastery check."""
    query = urlencode({PLACEMENT_PARAM: CHECK_PLACEMENT, MODULE_PARAM: module_sourced_id})
    return f"{LAUNCH_PATH}?{query}"


def _origin(scheme: str, host: str | None, port: int | None) -> tuple[str, str, int] | None:
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS[scheme]


def is_tool_launch(url: str | None, tool_url: str | None) -> bool:
    """Whether ``url`` is this Trailmark's launch URL (any query), ``tool_url`` being its public base URL."""
    if not url or not tool_url:
        return False
    try:
        got, base = urlsplit(url.strip()), urlsplit(tool_url.strip())
        got_origin = _origin(got.scheme.lower(), got.hostname, got.port)
        base_origin = _origin(base.scheme.lower(), base.hostname, base.port)
    except ValueError:  # a port that is not a number
        return False
    return got_origin is not None and got_origin == base_origin and \
        got.path == base.path.rstrip("/") + LAUNCH_PATH


def placement_of(url: str | None) -> str | None:
    """Return the placement a launch URL names in its query, if exactly one."""
    values = parse_qs(urlsplit(url or "").query).get(PLACEMENT_PARAM, [])
    return values[0] if len(values) == 1 else None


def custom_params(text: str | None) -> dict[str, str]:
    """Parse custom parameters kept as ``name=value`` lines (Moodle's ``instructorcustomparameters``)."""
    params: dict[str, str] = {}
    for line in (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        name, sep, value = line.partition("=")
        if sep and name.strip():
            params[name.strip()] = value.strip()
    return params


def is_check_url(url: str | None, tool_url: str | None) -> bool:
    """Whether ``url`` launches one of this Trailmark's mastery checks."""
    return is_tool_launch(url, tool_url) and placement_of(url) == CHECK_PLACEMENT


def is_check_link(url: str | None, tool_url: str | None, custom: Mapping[str, str] | None = None) -> bool:
    """Whether an LTI link to ``url`` with ``custom`` parameters is one of this Trailmark's mastery checks."""
    if not is_tool_launch(url, tool_url):
        return False
    return placement_of(url) == CHECK_PLACEMENT or (custom or {}).get(CUSTOM_PLACEMENT) == CHECK_PLACEMENT
