"""Deep linking: the items a teacher can place, and the signed LtiDeepLinkingResponse (built with pylti1p3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pylti1p3.deep_link import DeepLink
from pylti1p3.deep_link_resource import DeepLinkResource
from pylti1p3.lineitem import LineItem
from pylti1p3.registration import Registration

from connectors.mastery_check import (
    CHECK_CATEGORY,
    CHECK_PLACEMENT,
    CUSTOM_MODULE,
    CUSTOM_PLACEMENT,
    check_launch_path,
)
from plugin.lti.keys import SigningKey


class _SigningRegistration(Registration):
    """A registration that signs with Trailmark's current key id (the one our JWKS publishes)."""

    def __init__(self, kid: str):
        super().__init__()
        self._kid = kid

    def get_kid(self) -> str:
        return self._kid


@dataclass(frozen=True)
class Placement:
    """One thing a teacher can add to a course: where it opens, and whether it gets a gradebook column."""

    key: str
    title: str
    description: str
    path: str  # launch path (and query) below the tool's base URL
    custom: tuple[tuple[str, str], ...] = ()
    score_maximum: float | None = None  # set → the item gets a line item (gradebook column)
    resource_id: str | None = None
    tag: str | None = None


def placements_for(modules: Sequence[tuple[str, str]]) -> list[Placement]:
    """The class dashboard, the learner profile, and one mastery check per module ((sourced_id, title) pairs).

    A check's URL names its placement and module in the query, where the LMS's REST data shows it (Canvas
    ``external_tool_tag_attributes.url``, Moodle ``toolurl``), so the connectors recognise the check there.
    """
    items = [
        Placement("dashboard", "Trailmark class dashboard",
                  "Mastery grid, pace chart, alerts and small groups for teachers; each student's own path.",
                  "/lti/launch", (("trailmark_placement", "dashboard"),)),
        Placement("profile", "My learner profile",
                  "Skills, gaps, goals and pace — students edit their own goals.",
                  "/lti/launch", (("trailmark_placement", "profile"),)),
    ]
    for sourced_id, title in modules:
        items.append(Placement(
            f"mastery-check:{sourced_id}", f"Mastery check: {title}",
            "Scored 100 when the student has shown mastery of this module; a gate for the next module.",
            check_launch_path(sourced_id), ((CUSTOM_PLACEMENT, CHECK_PLACEMENT), (CUSTOM_MODULE, sourced_id)),
            score_maximum=100.0, resource_id=f"{CHECK_PLACEMENT}:{sourced_id}", tag=CHECK_CATEGORY))
    return items


def build_response(*, issuer: str, client_id: str, deployment_id: str, return_url: str, data: str | None,
                   base_url: str, chosen: Sequence[Placement], key: SigningKey,
                   with_line_items: bool = True) -> str:
    """Sign the LtiDeepLinkingResponse JWT for the chosen placements."""
    registration = _SigningRegistration(key.kid)
    registration.set_issuer(issuer).set_client_id(client_id).set_tool_private_key(key.private_pem.decode())
    settings = {"deep_link_return_url": return_url, "data": data}
    resources = []
    for item in chosen:
        resource = (DeepLinkResource().set_url(f"{base_url}{item.path}").set_title(item.title)
                    .set_custom_params(dict(item.custom)))
        if with_line_items and item.score_maximum is not None:
            line_item = LineItem().set_score_maximum(item.score_maximum).set_label(item.title)
            if item.resource_id:
                line_item.set_resource_id(item.resource_id)
            if item.tag:
                line_item.set_tag(item.tag)
            resource.set_lineitem(line_item)
        resources.append(resource)
    link = DeepLink(registration, deployment_id, settings)  # type: ignore[arg-type]
    message = link.get_message_jwt(resources)
    if data is None:
        message.pop("https://purl.imsglobal.org/spec/lti-dl/claim/data", None)
    return link.encode_jwt(message)
