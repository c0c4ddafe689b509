"""API keys: stored as sha256 hashes, compared in constant time, optionally tenant-scoped.

`SEMFLOW_API_KEYS` is a JSON list; each entry is `<sha256 hex>` (all tenants) or
`<sha256 hex>:tenant1|tenant2`. Keys themselves are never stored or logged.

Everything fails closed: an entry with an empty scope (`<sha256>:`, what an unset
template variable gives) is refused at start, and a request that reached an endpoint
without a principal may read no tenant at all.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from semflow.errors import SettingsError
from semflow.serving.errors import Forbidden, Unauthorized, Unprocessable


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's hash prefix (for logs), the key's whole hash (owner of its
    jobs) and the tenants it may read."""

    key_id: str
    tenants: frozenset[str] | None  # None = every tenant
    owner: str = ""

    def check_tenant(self, tenant: str) -> None:
        if self.tenants is not None and tenant not in self.tenants:
            raise Forbidden(f"this API key may not use tenant {tenant!r}")

    def tenant_for(self, tenant: str) -> str:
        """The tenant a request acts for: the given one if the key may use it, else the
        key's only tenant; a key scoped to several tenants must name one."""
        if tenant:
            self.check_tenant(tenant)
            return tenant
        if self.tenants is None:
            return ""
        if not self.tenants:
            raise Forbidden("this request may not use any tenant")
        if len(self.tenants) == 1:
            return next(iter(self.tenants))
        raise Unprocessable("tenant is required: this API key is scoped to several tenants")


# Auth turned off (SEMFLOW_AUTH_REQUIRED=false): every tenant, by the operator's choice.
ANONYMOUS = Principal("anonymous", None, "anonymous")
# No principal on the request (a route the guard did not see): no tenant at all.
NOBODY = Principal("nobody", frozenset(), "nobody")


def parse_key_entry(raw: str) -> tuple[bytes, frozenset[str] | None]:
    """`<sha256 hex>[:tenant1|tenant2]` -> (digest, tenants or None for every tenant)."""
    digest, sep, scope = raw.strip().partition(":")
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise SettingsError(
            "SEMFLOW_API_KEYS entries must be a sha256 hex digest, optionally "
            "followed by ':tenant1|tenant2'"
        )
    tenants = frozenset(t.strip() for t in scope.split("|") if t.strip()) if sep else None
    if tenants is not None and not tenants:
        raise SettingsError(
            f"SEMFLOW_API_KEYS entry {digest[:8]}...: has an empty tenant scope; list "
            "tenants after ':' or drop the ':' for a key that reads every tenant"
        )
    return bytes.fromhex(digest), tenants


class KeyRing:
    def __init__(self, entries: Iterable[str], required: bool = True) -> None:
        self.required = required
        self._keys = [parse_key_entry(raw) for raw in entries]

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
                match = Principal(digest.hex()[:8], tenants, digest.hex())
        if match is None:
            raise Unauthorized("invalid API key")
        return match
