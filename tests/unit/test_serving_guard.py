"""The ASGI guard in front of the service, driven directly with ASGI messages."""

from __future__ import annotations

import asyncio
import hashlib
import json

from semflow.config import load_settings
from semflow.serving.auth import NOBODY
from semflow.serving.http import PRINCIPAL, GuardMiddleware

KEY = "unit-key-1"


def _settings(**kw):
    return load_settings(api_keys=[hashlib.sha256(KEY.encode()).hexdigest()], **kw)


async def _call(guard, path: str, headers=(), body: bytes = b"", method: str = "GET"):
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "path": path, "method": method, "headers": list(headers)}
    await guard(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"]) if len(sent) > 1 else None, scope


def test_open_health_has_a_concurrency_limit() -> None:
    """BentoML's limit skips /health; the guard bounds it, so a flood of an unauthenticated
    route cannot take every worker thread."""
    release = asyncio.Event()
    inside = 0

    async def slow_app(scope, receive, send):
        nonlocal inside
        inside += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario():
        guard = GuardMiddleware(slow_app, _settings(max_concurrency=2))
        calls = [asyncio.create_task(_call(guard, "/health")) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert inside == 2
        release.set()
        return [(await c)[0] for c in calls]

    codes = asyncio.run(scenario())
    assert sorted(codes) == [200, 200, 429, 429, 429]


def test_the_key_does_not_travel_past_the_guard() -> None:
    seen: list[dict] = []

    async def app(scope, receive, send):
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    guard = GuardMiddleware(app, _settings())
    auth = [(b"authorization", f"Bearer {KEY}".encode())]
    status, _, _ = asyncio.run(_call(guard, "/model", auth))
    assert status == 200
    assert all(k.lower() != b"authorization" for k, _ in seen[0]["headers"])
    assert seen[0][PRINCIPAL].tenants is None


def test_a_request_without_a_principal_reads_no_tenant() -> None:
    import pytest

    from semflow.serving.errors import Forbidden

    with pytest.raises(Forbidden):
        NOBODY.check_tenant("bank")
    with pytest.raises(Forbidden):
        NOBODY.tenant_for("")  # not "every tenant", as ANONYMOUS used to be for everyone
