"""The served Bento as an attacker and an operator try it: other tenants' keys, long jobs,
secrets at rest, every route the framework adds, and a dependency that goes away.

One `bentoml serve` with a registered champion for most tests; the Redis and registry
faults get a server of their own.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.service.serve_helpers import (
    ADMIN,
    BANK,
    KEYS,
    OTHER,
    build_index,
    docs_for,
    serve,
)
from tests.service.test_service_model import _register

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SECRET_TEXT = "confidential-job-text-7d1c"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, embedder):
    tmp = tmp_path_factory.mktemp("svcsec")
    home = tmp / "home"
    home.mkdir()
    _register(home, embedder)
    build_index(
        home,
        embedder,
        docs_for("bank", ["I lost my card", "reset my password"])
        + docs_for("other", ["other tenant's secret card note"], prefix="o"),
    )
    with serve(home, tmp, SEMFLOW_MAX_JOBS="2", SEMFLOW_JOB_WORKERS="1") as url:
        yield url, home, tmp


def post(url: str, path: str, body: object, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=headers or ADMIN, timeout=120)


def wait_job(url: str, kind: str, task_id: str, headers: dict) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = httpx.get(f"{url}/{kind}/status", params={"task_id": task_id}, headers=headers)
        assert st.status_code == 200, st.text
        if st.json()["status"] != "in_progress":
            return st.json()
        time.sleep(0.1)
    raise AssertionError(f"{kind} {task_id} did not finish")


# -- long jobs: owned by their key, no secret at rest, guarded, bounded -----------------
def test_jobs_belong_to_the_key_that_submitted_them(svc) -> None:
    url, _, _ = svc
    r = post(url, "/embed_job/submit", {"texts": [SECRET_TEXT, "b"]})
    assert r.status_code == 200, r.text
    tid = r.json()["task_id"]
    assert wait_job(url, "embed_job", tid, ADMIN)["status"] == "completed"
    for other in (BANK, OTHER):
        for action in ("status", "get"):
            st = httpx.get(f"{url}/embed_job/{action}", params={"task_id": tid}, headers=other)
            assert st.status_code == 404, st.text
            assert "no embed_job task" in st.json()["error"]
        cancel = httpx.put(f"{url}/embed_job/cancel", params={"task_id": tid}, headers=other)
        assert cancel.status_code == 404
    # a job id is not valid under another job kind either
    st = httpx.get(f"{url}/classify_job/get", params={"task_id": tid}, headers=ADMIN)
    assert st.status_code == 404
    res = httpx.get(f"{url}/embed_job/get", params={"task_id": tid}, headers=ADMIN)
    assert res.status_code == 200 and len(res.json()["embeddings"]) == 2
    # and a scoped key's job is invisible to the admin key
    r = post(url, "/classify_job/submit", {"texts": ["I lost my card"]}, BANK)
    assert r.status_code == 200, r.text
    tid = r.json()["task_id"]
    assert wait_job(url, "classify_job", tid, BANK)["status"] == "completed"
    st = httpx.get(f"{url}/classify_job/get", params={"task_id": tid}, headers=ADMIN)
    assert st.status_code == 404
    got = httpx.get(f"{url}/classify_job/get", params={"task_id": tid}, headers=BANK)
    assert got.json()["predictions"][0]["label"] == "card_lost"


def test_no_key_or_job_text_is_written_to_disk(svc) -> None:
    url, home, tmp = svc
    r = post(url, "/embed_job/submit", {"texts": [SECRET_TEXT]}, BANK)
    assert wait_job(url, "embed_job", r.json()["task_id"], BANK)["status"] == "completed"
    leaks = []
    for root in (tmp / "bentoml", home):
        for p in root.rglob("*"):
            if p.is_file() and p.stat().st_size < 50_000_000:
                data = p.read_bytes()
                if any(k.encode() in data for k in KEYS.values()) or SECRET_TEXT.encode() in data:
                    leaks.append(str(p))
    assert leaks == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/embed_job"),  # the plain task routes BentoML used to add
        ("POST", "/classify_job"),
        ("POST", "/embed_job/retry"),
        ("GET", "/embed_job/submit"),
    ],
)
def test_framework_task_routes_do_not_exist(svc, method: str, path: str) -> None:
    url, _, _ = svc
    body = b'{"texts": ["' + b"x" * 10_000_000 + b'"]}'
    r = httpx.request(
        method,
        f"{url}{path}",
        content=body if method == "POST" else None,
        headers={**ADMIN, "content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code in (404, 405, 413), r.text
    assert "Traceback" not in r.text


def test_job_routes_are_guarded(svc) -> None:
    url, _, _ = svc
    assert httpx.get(f"{url}/embed_job/status", params={"task_id": "x"}).status_code == 401
    r = post(url, "/embed_job/submit", {"texts": ["a"] * 100_001})
    assert r.status_code == 413, r.text
    r = post(url, "/embed_job/submit", {"texts": ["a"], "top_k": 3})  # no ignored fields
    assert r.status_code == 422 and "top_k" in r.json()["error"]
    st = httpx.get(f"{url}/embed_job/get", params={"task_id": "nope"}, headers=ADMIN)
    assert st.status_code == 404


def test_a_full_job_queue_is_429_and_frees_up(svc) -> None:
    url, _, _ = svc
    long = {"texts": [f"job text {i} " + "about a lost card " * 40 for i in range(600)]}
    codes, ids = [], []
    for _ in range(4):
        r = post(url, "/embed_job/submit", long)
        codes.append(r.status_code)
        if r.status_code == 200:
            ids.append(r.json()["task_id"])
        else:
            assert r.status_code == 429 and "retry" in r.json()["error"], r.text
    assert codes[:2] == [200, 200] and 429 in codes[2:]
    # interactive endpoints do not wait behind the jobs' thread
    assert post(url, "/similarity", {"pairs": [["card", "card"]]}).status_code == 200
    for tid in ids:
        httpx.put(f"{url}/embed_job/cancel", params={"task_id": tid}, headers=ADMIN)
        assert wait_job(url, "embed_job", tid, ADMIN)["status"] in ("completed", "cancelled")
    assert post(url, "/embed_job/submit", {"texts": ["room again"]}).status_code == 200


# -- keys fail closed ------------------------------------------------------------------
def test_scoped_key_cannot_write_another_tenant_into_the_prediction_log(svc) -> None:
    url, home, _ = svc
    for path in ("/classify", "/classify_job/submit"):
        r = post(url, path, {"texts": ["I lost my card"], "tenant": "other"}, BANK)
        assert r.status_code == 403, r.text
        assert "tenant 'other'" in r.json()["error"]
    text = f"scoped classify {time.time_ns()}"
    assert post(url, "/classify", {"texts": [text]}, BANK).status_code == 200
    from semflow.predictions import read_day

    logged = [x for x in read_day(home, datetime.now(UTC).date()) if x.text == text]
    assert [x.tenant for x in logged] == ["bank"]  # the key's tenant, never a chosen one


def test_empty_key_scope_stops_the_start_with_a_sentence(tmp_path: Path) -> None:
    import hashlib

    digest = hashlib.sha256(b"k").hexdigest()
    keys = f'["{digest}:"]'
    with (
        pytest.raises(RuntimeError, match="empty tenant scope"),
        serve(tmp_path / "home", tmp_path, SEMFLOW_API_KEYS=keys),
    ):
        pass


# -- malformed but valid JSON ----------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/embed", b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        (
            "/search",
            b'{"query": "q", "tenant": "bank", "filters": {"metadata.x": '
            + b"[" * 500
            + b"]" * 500
            + b"}}",
        ),
        ("/search", b'{"query": "q", "tenant": "bank", "top_k": 1' + b"0" * 5000 + b"}"),
        ("/search", b'{"query": "q", "tenant": "bank", "top_k": 1' + b"0" * 100 + b"}"),
        ("/search", b'{"query": "q", "tenant": "bank", "filters": {"labels": ["a", 1]}}'),
        (
            "/search",
            b'{"query": "q", "tenant": "bank", "filters": {"doc_id": '
            + str(10**30).encode()
            + b"}}",
        ),
        ("/search", b'{"query": "q", "tenant": "bank", "filters": {"labels": [true, false]}}'),
        ("/classify", b'{"texts": ["a"], "top_k": 1' + b"0" * 100 + b"}"),
        (
            "/rank",
            b'{"query": "q", "candidates": [{"id": "a", "text": "t", "features": {"x": 1e999}}]}',
        ),
        ("/similarity", b'{"pairs": [["a", "b", "c"]]}'),
        ("/embed", b'{"texts": ["\\ud800"]}'),
    ],
)
def test_malformed_bodies_are_4xx_sentences(svc, path: str, raw: bytes) -> None:
    url, _, _ = svc
    r = httpx.post(
        f"{url}{path}", content=raw, headers={**ADMIN, "content-type": "application/json"}
    )
    assert 400 <= r.status_code < 500 or r.status_code == 200, r.text
    assert "error" in r.json() if r.status_code != 200 else True
    assert "Traceback" not in r.text
    assert httpx.get(f"{url}/readyz").status_code == 200


# -- blocking work stays off the event loop --------------------------------------------
def test_unnormalised_embed_does_not_stall_the_probes(svc) -> None:
    url, _, _ = svc
    big = {"texts": [f"{i} " + "a long sentence about cards " * 40 for i in range(256)]}
    big["normalize"] = False
    with cf.ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        fut = pool.submit(post, url, "/embed", big)
        time.sleep(0.3)
        probes = []
        while not fut.done():
            p0 = time.monotonic()
            assert httpx.get(f"{url}/livez", timeout=60).status_code == 200
            probes.append(time.monotonic() - p0)
            time.sleep(0.1)
        duration = time.monotonic() - t0
        assert fut.result().status_code == 200
    # the model call took seconds; a probe during it never waited for it
    assert duration > 2 and probes, (duration, probes)
    assert max(probes) < duration / 2, (duration, probes)


# -- generated bodies at every route ---------------------------------------------------
FIELDS = [
    "texts",
    "normalize",
    "pairs",
    "query",
    "tenant",
    "top_k",
    "score_threshold",
    "filters",
    "candidates",
    "top_n",
    "text",
    "id",
    "features",
    "labels",
    "doc_id",
]
POST_ROUTES = [
    "/embed",
    "/encode",
    "/similarity",
    "/search",
    "/classify",
    "/rank",
    "/echo",
    "/embed_job/submit",
    "/classify_job/submit",
]
GET_ROUTES = [
    "/labels",
    "/model",
    "/health",
    "/embed_job/status",
    "/classify_job/get",
    "/docs.json",
    "/schema.json",
    "/metrics",
    "/livez",
    "/readyz",
    "/",
]


def _bodies():
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=40)
        | st.sampled_from(["bank", "other", "labels", "metadata.lang", "tenant", ""])
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), inner, max_size=4)
        ),
        max_leaves=12,
    )
    shaped = st.dictionaries(st.sampled_from(FIELDS), values, max_size=5)
    return values | shaped


def test_generated_requests_never_5xx(svc) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url, _, _ = svc
    client = httpx.Client(base_url=url, timeout=60)

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        route=st.sampled_from(POST_ROUTES + GET_ROUTES),
        body=_bodies(),
        key=st.sampled_from([ADMIN, BANK, {}]),
    )
    def one(route: str, body: object, key: dict) -> None:
        if route in POST_ROUTES:
            r = client.post(route, json=body, headers=key)
        else:
            params = body if isinstance(body, dict) else {"task_id": str(body)}
            params = {str(k): str(v)[:200] for k, v in params.items()}
            r = client.get(route, params=params, headers=key)
        assert r.status_code < 500, (route, body, r.status_code, r.text[:500])
        assert "Traceback" not in r.text

    try:
        one()
    finally:
        client.close()
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert post(url, "/search", {"query": "lost card", "tenant": "bank"}).status_code == 200


# -- dependencies that go away -----------------------------------------------------------
def test_redis_and_registry_down_degrade_and_recover(tmp_path: Path, embedder) -> None:
    """Redis down at start and again later, and a registry whose URI carries credentials
    that cannot be reached: the service starts, answers 200, says `degraded` without
    repeating the URI, and is `ready`'s cache again once Redis is back."""
    from tests.helpers import PrivateRedis

    home = tmp_path / "home"
    build_index(home, embedder, docs_for("bank", ["I lost my card", "reset my password"]))
    redis_server = PrivateRedis()  # not started: Redis is down when the service starts
    env = {
        "SEMFLOW_REDIS_URL": redis_server.url,
        "SEMFLOW_MLFLOW_TRACKING_URI": "http://mlflow-user:s3cret-pw@127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }

    def traffic(tag: str) -> None:
        for i in range(3):
            r = post(url, "/embed", {"texts": [f"{tag} {i}"]})
            assert r.status_code == 200, r.text
            r = post(url, "/search", {"query": f"{tag} card {i}", "tenant": "bank"})
            assert r.status_code == 200 and r.json()["results"], r.text

    def cache_status(want: str) -> dict:
        deadline = time.monotonic() + 20
        while True:
            h = httpx.get(f"{url}/health").json()
            if h["dependencies"]["cache"]["status"] == want or time.monotonic() > deadline:
                return h
            time.sleep(0.5)

    try:
        with serve(home, tmp_path, **env) as url:
            traffic("redis down")
            h = cache_status("degraded")
            assert h["status"] == "degraded" and h["dependencies"]["cache"]["kind"] == "redis"
            text = httpx.get(f"{url}/health").text
            assert "s3cret-pw" not in text and "127.0.0.1:9" not in text, text
            assert h["dependencies"]["classifier"]["status"] == "missing"
            redis_server.start()
            assert cache_status("ok")["dependencies"]["cache"] == {"status": "ok", "kind": "redis"}
            traffic("redis back")
            import redis

            assert redis.Redis.from_url(redis_server.url).dbsize() > 0  # used again
            redis_server.stop()
            traffic("redis gone again")
            assert cache_status("degraded")["dependencies"]["cache"]["status"] == "degraded"
        log = (tmp_path / "serve.log").read_text()
        assert "s3cret-pw" not in log
    finally:
        redis_server.stop()
