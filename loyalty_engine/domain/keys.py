"""API keys: who a caller is, which program they belong to, and what they may do.

A key is shown once, as ``lk_<key id>_<secret>``: the id finds the stored record, the
secret (256 random bits) is checked against its SHA-256 hash. A fast hash is right here:
the secret is random and long, so there is nothing to brute-force, and every RPC pays it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from loyalty_engine.domain.errors import InvalidArgument, Unauthenticated

# Operator keys belong to no program: they run the platform (create programs).
OPERATOR_PROGRAM = ""
_TOKEN = re.compile(r"^lk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


class Scope(StrEnum):
    """The roles a key can hold, one per kind of caller."""

    POS = "pos"
    SHOP = "shop"
    MARKETING = "marketing"
    ADMIN = "admin"
    OPERATOR = "operator"


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    program_id: str
    key_id: str
    label: str
    scopes: frozenset[Scope]
    secret_hash: str
    create_time: datetime
    expire_time: datetime | None = None
    revoke_time: datetime | None = None

    def usable_at(self, now: datetime) -> bool:
        """Neither revoked nor expired."""
        if self.revoke_time is not None and self.revoke_time <= now:
            return False
        return self.expire_time is None or now < self.expire_time

    def validate(self) -> None:
        """A label and at least one scope; operator keys hold only the operator scope."""
        if not self.label.strip() or len(self.label) > 200:
            raise InvalidArgument.for_field("api_key.label", "must be 1-200 characters")
        if not self.scopes:
            raise InvalidArgument.for_field("api_key.scopes", "must name at least one scope")
        if (Scope.OPERATOR in self.scopes) != (self.program_id == OPERATOR_PROGRAM):
            raise InvalidArgument.for_field(
                "api_key.scopes", "the operator scope is for platform keys only, made by the CLI"
            )


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key_material() -> tuple[str, str, str]:
    """A fresh (key id, secret, token to hand out)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"lk_{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str]:
    """(key id, secret) of a presented token; UNAUTHENTICATED if it is not one of ours."""
    match = _TOKEN.match(token)
    if not match:
        raise Unauthenticated("INVALID_API_KEY", "the API key is malformed")
    return match.group(1), match.group(2)


def secret_matches(key: ApiKey, secret: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(key.secret_hash, hash_secret(secret))
