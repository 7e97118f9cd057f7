"""A test LMS: registers itself with Trailmark, serves its JWKS through `responses`, signs real id_tokens."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select

from plugin.lti.platforms import add_platform
from plugin.store.db import get_store
from plugin.store.models import District

LTI = "https://purl.imsglobal.org/spec/lti/claim/"
LIS = "http://purl.imsglobal.org/vocab/lis/v2/"
ROLE = {
    "teacher": [f"{LIS}membership#Instructor"],
    "student": [f"{LIS}membership#Learner"],
    "parent": [f"{LIS}membership#Mentor"],
    "admin": [f"{LIS}institution/person#Administrator"],
    "ta": [f"{LIS}membership/Instructor#TeachingAssistant"],
    "designer": [f"{LIS}membership#ContentDeveloper"],
    "guest": [f"{LIS}institution/person#Guest"],
}


def new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return jwk


class TestPlatform:
    __test__ = False
    issuer = "https://lms.example.edu"
    client_id = "client-1"
    deployment_id = "dep-1"
    auth_url = "https://lms.example.edu/auth"
    token_url = "https://lms.example.edu/token"
    jwks_url = "https://lms.example.edu/jwks"

    def __init__(self, app: Any, mock: Any):
        self.app = app
        self.mock = mock
        self.key = new_rsa()
        self.kid = "platform-key-1"
        self.extra_keys: list[dict[str, Any]] = []
        self.jwks_headers: dict[str, str] = {"Cache-Control": "max-age=600"}
        self.jwks_calls = 0
        mock.add_callback("GET", self.jwks_url, callback=self._serve_jwks)

    def _serve_jwks(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.jwks_calls += 1
        body = {"keys": [jwk_of(self.key, self.kid), *self.extra_keys]}
        return 200, {**self.jwks_headers, "Content-Type": "application/json"}, json.dumps(body)

    def register(self, district_slug: str = "north") -> None:
        with get_store(self.app).session() as session:
            district = session.scalars(select(District).where(District.slug == district_slug)).one()
            add_platform(session, district, issuer=self.issuer, client_id=self.client_id,
                         deployment_ids=[self.deployment_id], auth_login_url=self.auth_url,
                         auth_token_url=self.token_url, key_set_url=self.jwks_url, product_family="canvas")

    # ---- the flow

    def login(self, client: Any, **params: Any) -> tuple[str, str]:
        """Start a launch; return (state, nonce) the tool put in the auth redirect."""
        query = {"iss": self.issuer, "login_hint": "hint-1", "target_link_uri": "http://localhost/lti/launch",
                 "client_id": self.client_id, "lti_deployment_id": self.deployment_id, **params}
        query = {k: v for k, v in query.items() if v is not None}
        resp = client.get("/lti/login", query_string=query)
        assert resp.status_code == 302, resp.get_data(as_text=True)
        location = resp.headers["Location"]
        assert location.startswith(self.auth_url)
        qs = parse_qs(urlsplit(location).query)
        return qs["state"][0], qs["nonce"][0]

    def claims(self, nonce_value: str, role: str = "teacher", /, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer, "aud": self.client_id, "azp": self.client_id, "sub": f"user-{role}",
            "iat": now, "exp": now + 300, "nonce": nonce_value, "name": f"Pat {role.title()}", "given_name": "Pat",
            "family_name": role.title(), "email": f"{role}@example.edu",
            LTI + "message_type": "LtiResourceLinkRequest", LTI + "version": "1.3.0",
            LTI + "deployment_id": self.deployment_id, LTI + "target_link_uri": "http://localhost/lti/launch",
            LTI + "resource_link": {"id": "rl-1", "title": "Trailmark"}, LTI + "roles": ROLE[role],
            LTI + "context": {"id": "course-1", "label": "BIO1", "title": "Biology 1"},
        }
        for key, value in overrides.items():
            name = key if not key.startswith("lti_") else LTI + key[4:]
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any], *, key: Any = None, kid: str | None = None,
             alg: str = "RS256", headers: dict[str, Any] | None = None) -> str:
        hdr = {"kid": kid or self.kid, **(headers or {})}
        return jwt.encode(claims, key or self.key, algorithm=alg, headers=hdr)

    def launch(self, client: Any, role: str = "teacher", *, token: str | None = None, state: str | None = None,
               login_params: dict[str, Any] | None = None, **claim_overrides: Any) -> Any:
        st, nonce = self.login(client, **(login_params or {}))
        if token is None:
            token = self.sign(self.claims(nonce, role, **claim_overrides))
        return client.post("/lti/launch", data={"id_token": token, "state": state or st})


class _Drop:
    pass


_DROP = _Drop()
DROP = _DROP


def fresh_nonce() -> str:
    return uuid.uuid4().hex
