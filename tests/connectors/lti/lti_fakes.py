"""A test platform for LTI Advantage services: its URLs, a test RSA key, a signer and a clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "lti"

ISSUER = "https://moodle.north.example"
CLIENT_ID = "trailmark-7Qx2"
TOKEN_URL = f"{ISSUER}/mod/lti/token.php"
MEMBERSHIPS_URL = f"{ISSUER}/mod/lti/services.php/CourseSection/5/bindings/2/memberships"
MEMBERSHIPS_PAGE2 = f"{MEMBERSHIPS_URL}?limit=2&from=2"
DIFFERENCES_URL = f"{MEMBERSHIPS_URL}?since=1714400000&limit=2"
LINEITEMS_URL = f"{ISSUER}/mod/lti/services.php/5/lineitems?type_id=2"
LINEITEM_17 = f"{ISSUER}/mod/lti/services.php/5/lineitems/17/lineitem?type_id=2"
LINEITEM_18 = f"{ISSUER}/mod/lti/services.php/5/lineitems/18/lineitem?type_id=2"
KID = "trailmark-2024-05"


def fixture(name: str) -> Any:
    """Load a named LTI service payload from tests/fixtures/lti."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


@cache
def test_key() -> rsa.RSAPrivateKey:
    """Return one RSA key for the whole run (generating keys is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem() -> bytes:
    return test_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)


def signer(claims: dict[str, Any]) -> str:
    """Sign a client assertion the way Trailmark's key store does: RS256 with the key's ``kid``."""
    return jwt.encode(claims, test_key(), algorithm="RS256", headers={"kid": KID})


def decode_assertion(token: str, audience: str = TOKEN_URL) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a client assertion with the test public key; return (header, claims)."""
    claims = jwt.decode(token, public_pem(), algorithms=["RS256"], audience=audience,
                        options={"verify_exp": False, "verify_iat": False})
    return jwt.get_unverified_header(token), claims


@dataclass
class Clock:
    """A clock the test moves by hand."""

    now: datetime = field(default_factory=lambda: datetime(2024, 5, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def link(**rels: str) -> dict[str, str]:
    """Build a ``Link`` header from rel → URL."""
    return {"Link": ", ".join(f'<{url}>; rel="{rel}"' for rel, url in rels.items())}
