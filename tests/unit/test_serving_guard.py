"""The ASGI guard in front of the service, driven directly with ASGI messages."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import numpy as np

from semflow.config import load_settings
from semflow.serving.auth import NOBODY
from semflow.serving.http import PRINCIPAL, GuardMiddleware, encode_vectors, json_bytes

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


# -- response bodies ----------------------------------------------------------------------
def _vectors() -> np.ndarray:
    v = np.random.default_rng(7).normal(size=(32, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_orjson_and_base64_bodies_decode_to_the_float_path() -> None:
    """The fast encodings carry the same vectors as the old `json` float path (which wrote
    `np.round(v, 7).tolist()`): exactly the float32 values, within its rounding of them."""
    v = _vectors()
    old = np.array(json.loads(json.dumps({"e": np.round(v, 7).tolist()}))["e"])
    fast = np.array(json.loads(json_bytes({"e": encode_vectors(v)}))["e"])
    assert np.array_equal(fast.astype(np.float32), v)  # every float32 read back exactly
    assert np.abs(fast - old).max() <= 1e-7  # the old path rounded to 7 decimals (in float32)
    b64 = json.loads(json_bytes({"e": encode_vectors(v, "base64")}))["e"]
    assert len(b64) == 32 and all(isinstance(s, str) for s in b64)
    dec = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in b64])
    assert np.array_equal(dec, v)
    # float64 input (a cache or another backend) is written as float32 all the same
    wide = json.loads(json_bytes(encode_vectors(v.astype(np.float64))))
    assert np.array_equal(np.array(wide, dtype=np.float32), v)
