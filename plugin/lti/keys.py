"""Trailmark's signing keys: RSA 2048, published in the JWKS with a ``kid``.

``active`` signs; after ``trailmark keys rotate`` the old key becomes ``retiring`` and stays published until it is
retired, so platforms holding a cached JWKS keep verifying tokens we signed before the rotation. Private keys are
stored encrypted with the ``[privacy]`` key (``plugin/privacy.py``) and decrypted only to sign.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select
from sqlalchemy.orm import Session

from plugin import privacy
from plugin.store.models import ToolKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_pem: bytes


def _new_key(now: datetime) -> ToolKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    kid = hashlib.sha256(f"{jwk['n']}.{jwk['e']}".encode()).hexdigest()[:32]
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig"})
    return ToolKey(kid=kid, private_pem=privacy.encrypt(pem), public_jwk=jwk, status="active", created_at=now)


def ensure_key(session: Session, now: datetime | None = None) -> ToolKey:
    """Return the active key, creating the first one if there is none."""
    key = session.scalars(select(ToolKey).where(ToolKey.status == "active").order_by(ToolKey.id.desc())).first()
    if key is None:
        key = _new_key(now or datetime.now(UTC))
        session.add(key)
        session.flush()
    return key


def signing_key(session: Session) -> SigningKey:
    """The key that signs deep-linking responses and service assertions."""
    key = ensure_key(session)
    return SigningKey(kid=key.kid, private_pem=privacy.decrypt(key.private_pem))


def rotate(session: Session, now: datetime | None = None) -> tuple[ToolKey, list[str]]:
    """Make a new active key; the previous active keys become ``retiring`` (still published)."""
    now = now or datetime.now(UTC)
    old = list(session.scalars(select(ToolKey).where(ToolKey.status == "active")))
    for key in old:
        key.status = "retiring"
    new = _new_key(now)
    session.add(new)
    session.flush()
    return new, [k.kid for k in old]


def retire(session: Session, kid: str, now: datetime | None = None) -> ToolKey:
    """Stop publishing a retiring key; the active key cannot be retired."""
    key = session.scalars(select(ToolKey).where(ToolKey.kid == kid)).first()
    if key is None:
        raise LookupError(f"no key with kid {kid!r}; `trailmark keys list` shows them")
    if key.status == "active":
        raise ValueError(f"key {kid} is the active signing key; rotate first, then retire it")
    key.status = "retired"
    key.retired_at = now or datetime.now(UTC)
    return key


def jwks(session: Session) -> dict[str, list[dict[str, object]]]:
    """The public JWKS: the active key and keys still retiring."""
    keys = session.scalars(
        select(ToolKey).where(ToolKey.status.in_(("active", "retiring"))).order_by(ToolKey.id)
    )
    return {"keys": [dict(k.public_jwk) for k in keys]}
