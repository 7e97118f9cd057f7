"""LTI Dynamic Registration 1.0: validate the platform's OpenID configuration, post Trailmark's tool
configuration, store the returned registration under a district. Also the Canvas developer-key JSON.

Who may register: in production an issuer on a district's allowlist, or a holder of a one-time code from
``trailmark platform invite``; platforms must use https. Local runs also accept http on loopback addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from marshmallow import EXCLUDE, Schema, ValidationError, fields
from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin.lti.errors import LtiError
from plugin.lti.platforms import USER_AGENT, add_platform, find_invite
from plugin.store.models import District, Platform

PLATFORM_CONFIG = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIG = "https://purl.imsglobal.org/spec/lti-tool-configuration"
CANVAS_ISSUERS = ("https://canvas.instructure.com", "https://canvas.beta.instructure.com",
                  "https://canvas.test.instructure.com")
SCOPES = (
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem",
    "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly",
    "https://purl.imsglobal.org/spec/lti-ags/scope/score",
    "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly",
)
CANVAS_PLACEMENTS = ("course_navigation", "link_selection", "assignment_selection", "module_menu_modal",
                     "user_navigation", "student_context_card")
MAX_DOCUMENT = 256 * 1024


# --------------------------------------------------------------------------- URL policy


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_platform_url(url: str, what: str, *, allow_http_loopback: bool) -> str:
    """A platform URL must be https; local runs may also use http on a loopback address."""
    if not isinstance(url, str) or len(url) > 2048:
        raise LtiError("registration_bad_url", f"The platform's {what} is missing or malformed.")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and allow_http_loopback and is_loopback_host(parts.hostname):
        return url
    raise LtiError("registration_insecure_url", f"The platform's {what} ({url}) must use https"
                   + (" (or http on a loopback address in a local run)." if allow_http_loopback else "."))


# --------------------------------------------------------------------------- schemas


class _MessageSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True)
    placements = fields.List(fields.String(), load_default=list)


class _PlatformConfigSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    product_family_code = fields.String(load_default="")
    version = fields.String(load_default="")
    messages_supported = fields.List(fields.Nested(_MessageSchema), load_default=list)
    variables = fields.List(fields.String(), load_default=list)


class OpenIdConfigurationSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    issuer = fields.String(required=True)
    authorization_endpoint = fields.String(required=True)
    token_endpoint = fields.String(required=True)
    jwks_uri = fields.String(required=True)
    registration_endpoint = fields.String(required=True)
    scopes_supported = fields.List(fields.String(), load_default=list)
    authorization_server = fields.String(load_default=None, allow_none=True)
    platform = fields.Nested(_PlatformConfigSchema, data_key=PLATFORM_CONFIG, load_default=dict)


class _ToolConfigResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    deployment_id = fields.String(load_default=None, allow_none=True)


class RegistrationResponseSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    client_id = fields.String(required=True)
    tool_config = fields.Nested(_ToolConfigResponseSchema, data_key=TOOL_CONFIG, load_default=dict)
    deployment_id = fields.String(load_default=None, allow_none=True)  # some platforms put it at the top


def _schema_error(what: str, exc: ValidationError) -> LtiError:
    fields_ = ", ".join(f"{k}: {'; '.join(v) if isinstance(v, list) else v}" for k, v in exc.messages.items())
    return LtiError("registration_invalid_platform", f"The platform's {what} is not valid ({fields_}).",
                    status=400)


# --------------------------------------------------------------------------- flow


@dataclass(frozen=True)
class RegistrationRequest:
    openid_configuration: str
    registration_token: str | None
    code: str | None


def parse_request(params: Mapping[str, Any]) -> RegistrationRequest:
    url = params.get("openid_configuration")
    if not isinstance(url, str) or not url:
        raise LtiError("registration_missing_param", "This is Trailmark's Dynamic Registration URL. Paste it into "
                       "the LMS's 'register a tool' screen; the LMS adds openid_configuration when it opens it.")
    token = params.get("registration_token")
    code = params.get("code")
    for name, value in (("registration_token", token), ("code", code)):
        if value is not None and (not isinstance(value, str) or len(value) > 4096):
            raise LtiError("registration_bad_param", f"The registration parameter '{name}' is malformed.")
    return RegistrationRequest(url, token or None, code or None)


def _get_json(http: requests.Session, method: str, url: str, *, token: str | None, timeout: float,
              what: str, body: Mapping[str, Any] | None = None) -> Any:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = http.request(method, url, json=body, headers=headers, timeout=timeout)
    except requests.RequestException as exc:
        raise LtiError("registration_platform_unreachable", f"Could not reach the platform's {what} at {url} "
                       f"({type(exc).__name__}).", status=400) from None
    if resp.status_code >= 400:
        detail = resp.text[:300].replace("\n", " ")
        raise LtiError("registration_refused", f"The platform's {what} answered HTTP {resp.status_code}: {detail}",
                       status=400)
    if len(resp.content) > MAX_DOCUMENT:
        raise LtiError("registration_invalid_platform", f"The platform's {what} is too large.", status=400)
    try:
        return resp.json()
    except ValueError:
        raise LtiError("registration_invalid_platform", f"The platform's {what} is not JSON.", status=400) from None


def load_openid_configuration(http: requests.Session, req: RegistrationRequest, *, allow_http_loopback: bool,
                              timeout: float) -> dict[str, Any]:
    """Fetch and validate the platform's OpenID configuration."""
    url = check_platform_url(req.openid_configuration, "openid_configuration URL",
                             allow_http_loopback=allow_http_loopback)
    raw = _get_json(http, "GET", url, token=req.registration_token, timeout=timeout, what="OpenID configuration")
    if not isinstance(raw, dict):
        raise LtiError("registration_invalid_platform", "The platform's OpenID configuration is not an object.")
    try:
        conf: dict[str, Any] = OpenIdConfigurationSchema().load(raw)
    except ValidationError as exc:
        raise _schema_error("OpenID configuration", exc) from None
    for key in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "registration_endpoint"):
        check_platform_url(conf[key], key, allow_http_loopback=allow_http_loopback)
    family = conf["platform"].get("product_family_code", "").lower()
    issuer = conf["issuer"].rstrip("/")
    same_site = url.startswith(issuer + "/") or url == issuer
    canvas_cloud = family == "canvas" and issuer in CANVAS_ISSUERS and (
        urlsplit(conf["registration_endpoint"]).netloc == urlsplit(url).netloc)
    if not (same_site or canvas_cloud):
        raise LtiError("registration_issuer_mismatch", f"The platform says its issuer is {conf['issuer']!r}, "
                       f"which does not match where its configuration was served ({url}).")
    conf["product_family"] = family
    return conf


def tool_configuration(*, base_url: str, tool_name: str, family: str, contact_email: str = "",
                       supported: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Trailmark's client registration, in the flavour the platform expects (Canvas placements are URIs)."""
    domain = urlsplit(base_url).netloc
    launch = f"{base_url}/lti/launch"
    if family == "canvas":
        resource_placements = [f"https://canvas.instructure.com/lti/{p}"
                               for p in ("course_navigation", "user_navigation", "student_context_card")]
        deep_placements = [f"https://canvas.instructure.com/lti/{p}"
                           for p in ("link_selection", "assignment_selection", "module_menu_modal")]
    else:
        resource_placements = []
        deep_placements = ["ContentArea"] if family == "moodle" else []
        offered = {m.get("type"): m.get("placements") or [] for m in supported}
        if family == "moodle" and "LtiDeepLinkingRequest" in offered and offered["LtiDeepLinkingRequest"]:
            deep_placements = list(offered["LtiDeepLinkingRequest"])
    messages: list[dict[str, Any]] = [
        {"type": "LtiResourceLinkRequest", "target_link_uri": launch, "label": tool_name,
         "custom_parameters": {"trailmark_placement": "dashboard"}},
        {"type": "LtiDeepLinkingRequest", "target_link_uri": launch, "label": f"Add {tool_name}"},
    ]
    if resource_placements:
        messages[0]["placements"] = resource_placements
    if deep_placements:
        messages[1]["placements"] = deep_placements
    tool_conf: dict[str, Any] = {
        "domain": domain, "target_link_uri": launch,
        "description": "Learner profiles, mastery gating and minimum-pace alerts inside the LMS.",
        "claims": ["iss", "sub", "name", "given_name", "family_name", "email"],
        "messages": messages,
    }
    if family == "canvas":
        tool_conf["https://canvas.instructure.com/lti/privacy_level"] = "public"
        tool_conf["custom_parameters"] = {"canvas_user_id": "$Canvas.user.id",
                                          "canvas_course_id": "$Canvas.course.id"}
    body: dict[str, Any] = {
        "application_type": "web", "response_types": ["id_token"], "grant_types": ["implicit", "client_credentials"],
        "initiate_login_uri": f"{base_url}/lti/login", "redirect_uris": [launch], "client_name": tool_name,
        "jwks_uri": f"{base_url}/lti/jwks", "logo_uri": f"{base_url}/static/trailmark.svg",
        "token_endpoint_auth_method": "private_key_jwt", "scope": " ".join(SCOPES),
        TOOL_CONFIG: tool_conf,
    }
    if contact_email:
        body["contacts"] = [contact_email]
    return body


def choose_district(session: Session, *, issuer: str, code: str | None, allowlists: Mapping[str, Sequence[str]],
                    local: bool, now: datetime) -> tuple[District, Any]:
    """Which district this registration belongs to, or refuse: invite code, then allowlist, then (local) default."""
    if code:
        invite = find_invite(session, code, now)
        if invite is None:
            raise LtiError("registration_not_allowed", "This registration code is unknown, expired or already "
                           "used. Ask district IT for a new one (`trailmark platform invite`).", status=403)
        district = session.get(District, invite.district_id)
        assert district is not None
        return district, invite
    for slug, issuers in allowlists.items():
        if issuer.rstrip("/") in {i.rstrip("/") for i in issuers}:
            district = session.scalars(select(District).where(District.slug == slug)).first()
            if district is not None:
                return district, None
    if local:
        district = session.scalars(select(District).order_by(District.id)).first()
        if district is not None:
            return district, None
    raise LtiError("registration_not_allowed", f"The issuer {issuer!r} is not on a district allowlist and no "
                   "registration code was given. District IT can run `trailmark platform invite` and register "
                   "with the URL it prints.", status=403)


def register(session: Session, http: requests.Session, req: RegistrationRequest, *, base_url: str,
             tool_name: str, contact_email: str, allowlists: Mapping[str, Sequence[str]], local: bool,
             timeout: float, now: datetime | None = None) -> Platform:
    """Run the whole registration and return the stored platform."""
    now = now or datetime.now(UTC)
    conf = load_openid_configuration(http, req, allow_http_loopback=local, timeout=timeout)
    district, invite = choose_district(session, issuer=conf["issuer"], code=req.code, allowlists=allowlists,
                                       local=local, now=now)
    body = tool_configuration(base_url=base_url, tool_name=tool_name, family=conf["product_family"],
                              contact_email=contact_email, supported=conf["platform"].get("messages_supported", []))
    raw = _get_json(http, "POST", conf["registration_endpoint"], token=req.registration_token, timeout=timeout,
                    what="registration endpoint", body=body)
    if not isinstance(raw, dict):
        raise LtiError("registration_invalid_platform", "The platform's registration answer is not an object.")
    try:
        answer = RegistrationResponseSchema().load(raw)
    except ValidationError as exc:
        raise _schema_error("registration answer", exc) from None
    deployment = answer["tool_config"].get("deployment_id") or answer.get("deployment_id")
    try:
        platform = add_platform(
            session, district, issuer=conf["issuer"], client_id=answer["client_id"],
            deployment_ids=[deployment] if deployment else [], auth_login_url=conf["authorization_endpoint"],
            auth_token_url=conf["token_endpoint"], key_set_url=conf["jwks_uri"],
            auth_audience=conf.get("authorization_server"), name=conf["platform"].get("product_family_code", ""),
            product_family=conf["product_family"], registered_via="dynamic",
            registration={"client_id": answer["client_id"], "deployment_id": deployment,
                          "registration_endpoint": conf["registration_endpoint"]}, now=now)
    except ValueError as exc:
        raise LtiError("registration_conflict", str(exc), status=409) from None
    if invite is not None:
        invite.used_at = now
        invite.used_by_platform_id = platform.id
    return platform


def canvas_developer_key(*, base_url: str, tool_name: str, public_jwk_url: str) -> dict[str, Any]:
    """The JSON a Canvas admin pastes (or points to) when creating an LTI developer key by hand."""
    launch = f"{base_url}/lti/launch"
    placements = [
        {"placement": "course_navigation", "message_type": "LtiResourceLinkRequest", "target_link_uri": launch,
         "text": tool_name, "default": "enabled", "visibility": "members"},
        {"placement": "user_navigation", "message_type": "LtiResourceLinkRequest", "target_link_uri": launch,
         "text": f"{tool_name} profile"},
        {"placement": "student_context_card", "message_type": "LtiResourceLinkRequest", "target_link_uri": launch,
         "text": f"{tool_name} profile"},
        {"placement": "link_selection", "message_type": "LtiDeepLinkingRequest", "target_link_uri": launch,
         "text": f"Add {tool_name}"},
        {"placement": "assignment_selection", "message_type": "LtiDeepLinkingRequest", "target_link_uri": launch,
         "text": f"{tool_name} mastery check"},
        {"placement": "module_menu_modal", "message_type": "LtiDeepLinkingRequest", "target_link_uri": launch,
         "text": f"Add {tool_name} to this module"},
    ]
    return {
        "title": tool_name,
        "description": "Learner profiles, mastery gating and minimum-pace alerts inside Canvas.",
        "oidc_initiation_url": f"{base_url}/lti/login",
        "target_link_uri": launch,
        "public_jwk_url": public_jwk_url,
        "scopes": list(SCOPES),
        "extensions": [{
            "platform": "canvas.instructure.com",
            "domain": urlsplit(base_url).netloc,
            "privacy_level": "public",
            "settings": {"placements": placements},
        }],
        "custom_fields": {"canvas_user_id": "$Canvas.user.id", "canvas_course_id": "$Canvas.course.id",
                          "person_sourcedid": "$Person.sourcedId", "observees": "$com.instructure.User.observees"},
    }
