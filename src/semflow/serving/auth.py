"""API keys: stored as sha256 hashes, compared in constant time, optionally tenant-scoped.

`SEMFLOW_API_KEYS` is a JSON list; each entry is `<sha256 hex>` (all tenants) or
`<sha256 hex>:tenant1|tenant2`. Keys themselves are never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from semflow.errors import SettingsError
from semflow.serving.errors import Forbidden, Unauthorized


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's hash prefix (for logs) and the tenants it may read."""

    key_id: str
    tenants: frozenset[str] | None  # None = every tenant

    def check_tenant(self, tenant: str) -> None:
        if self.tenants is not None and tenant not in self.tenants:
            raise Forbidden(f"this API key may not read tenant {tenant!r}")


ANONYMOUS = Principal("anonymous", None)


class KeyRing:
    def __init__(self, entries: Iterable[str], required: bool = True) -> None:
        self.required = required
        self._keys: list[tuple[bytes, frozenset[str] | None]] = []
        for raw in entries:
            digest, _, scope = raw.strip().partition(":")
            digest = digest.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise SettingsError(
                    "SEMFLOW_API_KEYS entries must be a sha256 hex digest, optionally "
                    "followed by ':tenant1|tenant2'"
                )
            tenants = frozenset(t for t in scope.split("|") if t) if scope else None
            self._keys.append((bytes.fromhex(digest), tenants))

    def authenticate(self, authorization: str | None) -> Principal:
        """Principal for an `Authorization` header value; Unauthorized (401) otherwise."""
        if not self.required:
            return ANONYMOUS
        if not self._keys:
            raise Unauthorized("no API keys are configured on this server (set SEMFLOW_API_KEYS)")
        if not authorization:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("malformed Authorization header: use 'Bearer <key>'")
        given = hashlib.sha256(token.strip().encode("utf-8")).digest()
        match: Principal | None = None
        # Compare against every key so timing does not reveal which one (or whether) matched.
        for digest, tenants in self._keys:
            if hmac.compare_digest(given, digest) and match is None:
                match = Principal(digest.hex()[:8], tenants)
        if match is None:
            raise Unauthorized("invalid API key")
        return match
