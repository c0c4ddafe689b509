"""MLflow registry on a real sqlite tracking store: register, load, gate, race."""

from __future__ import annotations

import multiprocessing as mp
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from semflow import registry
from semflow.app import Services
from semflow.config import load_settings
from semflow.models.bundle import Bundle
from semflow.registry import artifacts, promotion, tracking
from semflow.registry.tracking import _is_missing

pytestmark = pytest.mark.integration

# The registered model's name, from the one place every caller reads it (the settings).
NAME = load_settings().registered_model


def _bundle(tmp: Path, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(["card_lost", "top_up", "refund"], 20)
    clf = LogisticRegression(max_iter=300).fit(x, y)
    b = Bundle(
        None,
        "all-MiniLM-L6-v2@x",
        [str(c) for c in clf.classes_],
        0.2 + shift,
        {"semantic": 1.0},
        clf,
    )
    return b.save(tmp)


@pytest.fixture
def uri(tmp_path: Path, semflow_home: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _register(uri: str, bundle_dir: Path, metrics: dict[str, float]) -> str:
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp_id = registry.ensure_experiment(uri)
    with mlflow.start_run(experiment_id=exp_id):
        return registry.log_bundle(bundle_dir, tracking_uri=uri, name=NAME, metrics=metrics)


def test_load_champion_none_when_nothing_registered(uri: str) -> None:
    assert registry.load_champion(uri, NAME) is None
    assert registry.load_champion(uri, name="other", alias="champion") is None


def test_register_promote_and_load(uri: str, tmp_path: Path) -> None:
    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    # registered but not promoted yet: still nothing under champion
    assert registry.load_champion(uri, NAME) is None
    res = registry.promote(
        uri, v1, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    assert res.promoted and res.alias == "champion"
    b = registry.load_champion(uri, NAME)
    assert b is not None
    assert b.registry_version == v1 and b.alias == "champion"
    assert set(b.labels) == {"card_lost", "top_up", "refund"}
    out = b.classify(np.ones((1, 384), dtype=np.float32) / np.sqrt(384), top_k=2)
    assert len(out[0]["alternatives"]) == 2
    mv = registry.client(uri).get_model_version("semflow", v1)
    assert mv.tags["gate.result"] == "promoted"
    assert mv.tags["embedder_version"] == "all-MiniLM-L6-v2@x"
    # the logged pyfunc carries a signature with a `text` input
    from mlflow.models import get_model_info

    info = get_model_info(f"models:/semflow/{v1}")
    assert info.signature.inputs.input_names() == ["text"]


def test_weak_candidate_stays_challenger(uri: str, tmp_path: Path) -> None:
    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    registry.promote(
        uri, v1, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    v2 = _register(uri, _bundle(tmp_path / "b2"), {"accuracy": 0.85})
    res = registry.promote(
        uri, v2, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    assert not res.promoted and res.alias == "challenger"
    assert "regresses" in res.reasons[0]
    c = registry.client(uri)
    assert str(c.get_model_version_by_alias("semflow", "champion").version) == v1
    assert str(c.get_model_version_by_alias("semflow", "challenger").version) == v2
    assert "regresses" in c.get_model_version("semflow", v2).tags["gate.reason"]
    # below an absolute floor, even without regression
    v3 = _register(uri, _bundle(tmp_path / "b3"), {"accuracy": 0.95})
    res = registry.promote(
        uri, v3, floors={"accuracy": 0.99}, tolerance=0.1, compare=["accuracy"], name=NAME
    )
    assert not res.promoted and "below the floor" in res.reasons[0]


def test_a_candidate_that_stops_recognising_unknown_inputs_is_not_promoted(
    uri: str, tmp_path: Path
) -> None:
    """params.yaml's gate compares the open-set metrics: OOS recall falling by more than the
    tolerance (same accuracy) leaves the candidate a challenger, with the reason."""
    from semflow.training.params import load_pipeline_params

    gate = load_pipeline_params().register_
    kw = {"floors": {}, "tolerance": gate.tolerance, "compare": gate.compare, "name": NAME}
    good = {"classifier.accuracy": 0.94, "open_set.oos_recall": 0.60, "open_set.auroc": 0.92}
    v1 = _register(uri, _bundle(tmp_path / "b1"), good)
    assert registry.promote(uri, v1, **kw).promoted
    worse = {**good, "open_set.oos_recall": 0.60 - 2 * gate.tolerance}
    v2 = _register(uri, _bundle(tmp_path / "b2"), worse)
    res = registry.promote(uri, v2, **kw)
    assert not res.promoted and res.alias == "challenger"
    assert res.reasons == [
        f"open_set.oos_recall {worse['open_set.oos_recall']:.4f} regresses more than "
        f"{gate.tolerance} against the champion's 0.6000"
    ]
    # one that no longer measures it is not promoted silently either
    v3 = _register(uri, _bundle(tmp_path / "b3"), {"classifier.accuracy": 0.95})
    res = registry.promote(uri, v3, **kw)
    assert not res.promoted
    assert "open_set.oos_recall is missing from the candidate's metrics" in res.reasons


def test_check_gate_missing_metric() -> None:
    assert registry.check_gate({}, None, {"acc": 0.5}, 0.0, []) == [
        "acc is missing from the candidate's metrics"
    ]


def _promote_worker(uri: str, version: str, home: str, q: mp.Queue) -> None:
    import os

    os.environ["SEMFLOW_HOME"] = home
    res = registry.promote(
        uri, version, floors={"accuracy": 0.5}, tolerance=0.0, compare=["accuracy"], name=NAME
    )
    q.put((version, res.promoted))


def test_two_promoters_racing(uri: str, tmp_path: Path, semflow_home: Path) -> None:
    va = _register(uri, _bundle(tmp_path / "a"), {"accuracy": 0.90})
    vb = _register(uri, _bundle(tmp_path / "b"), {"accuracy": 0.92})
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_promote_worker, args=(uri, v, str(semflow_home), q)) for v in (va, vb)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    results = dict(q.get(timeout=5) for _ in procs)
    c = registry.client(uri)
    champ = c.get_model_version_by_alias("semflow", "champion")
    assert champ.status == "READY"
    # b is better: whichever order they ran in, b ends as the champion
    assert str(champ.version) == vb
    assert results[vb] is True
    aliases = [a for v in (va, vb) for a in c.get_model_version("semflow", v).aliases]
    assert aliases.count("champion") == 1


def test_rollback_and_list_through_the_cli(uri: str, tmp_path: Path, monkeypatch) -> None:
    from semflow.cli import main
    from semflow.config import get_settings

    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    registry.promote(uri, v1, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    v2 = _register(uri, _bundle(tmp_path / "b2"), {"accuracy": 0.95})
    registry.promote(uri, v2, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    monkeypatch.setenv("SEMFLOW_MLFLOW_TRACKING_URI", uri)
    get_settings.cache_clear()
    listed = registry.list_versions(uri, NAME)
    assert [d["version"] for d in listed] == [v2, v1] and listed[0]["aliases"] == ["champion"]

    main(["model", "rollback", "--to", v1])
    c = registry.client(uri)
    assert str(c.get_model_version_by_alias("semflow", "champion").version) == v1
    assert registry.load_champion(uri, NAME).registry_version == v1
    with pytest.raises(SystemExit) as exc:
        main(["model", "rollback", "--to", "99"])
    assert exc.value.code == 1
    with pytest.raises(SystemExit) as exc:
        main(["model", "rollback", "--to", "latest"])
    assert exc.value.code == 2
    assert str(c.get_model_version_by_alias("semflow", "champion").version) == v1


def _tamper(joblib_file: Path) -> None:
    """Swap in another classifier with the same labels, one that loads without complaint."""
    import joblib

    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 384)).astype(np.float32)
    y = np.repeat(["card_lost", "top_up", "refund"], 10)
    joblib.dump(LogisticRegression(max_iter=50).fit(x, y), joblib_file)


def test_a_bundle_changed_in_the_artifact_store_is_refused(uri: str, tmp_path: Path) -> None:
    from semflow.errors import SemflowError

    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    registry.promote(
        uri, v1, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    stored = list((tmp_path / "mlartifacts").rglob("classifier.joblib"))
    assert len(stored) == 1, stored
    original = stored[0].read_bytes()
    _tamper(stored[0])

    # A SemflowError, so the service runs degraded as when the registry is down.
    with pytest.raises(SemflowError, match=f"model semflow v{v1} does not match") as err:
        registry.load_champion(uri, NAME)
    assert type(err.value).__name__ == "BundleIntegrityError"
    assert "register it again" in str(err.value)
    with pytest.raises(SemflowError):  # the pinned-Bento path downloads the same way
        registry.download_bundle(uri, "semflow", v1)

    # The store restored: the refused copy is downloaded again, not served from the cache.
    stored[0].write_bytes(original)
    bundle = registry.load_champion(uri, NAME)
    assert bundle is not None and bundle.registry_version == v1
    mv = registry.client(uri).get_model_version("semflow", v1)
    assert len(mv.tags[registry.DIGEST_TAG]) == 64


def test_a_changed_cached_or_pinned_copy_is_refused(uri: str, tmp_path: Path) -> None:
    import json
    import shutil

    from semflow.models.bundle import BUNDLE_FILE, BundleIntegrityError

    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    registry.promote(
        uri, v1, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    cached = registry.download_bundle(uri, "semflow", v1)

    # A pinned copy as bentos/pin_model.py makes it: lineage rewritten, BentoML's model.yaml
    # beside it. It loads; once its classifier is swapped, it does not.
    pinned = tmp_path / "pinned"
    shutil.copytree(cached, pinned)
    meta = json.loads((pinned / BUNDLE_FILE).read_text())
    meta.update(registered_model="semflow", registry_version=v1)
    (pinned / BUNDLE_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    (pinned / "model.yaml").write_text("name: semflow-bundle\n")
    assert Bundle.load(pinned).labels
    _tamper(pinned / "classifier.joblib")
    with pytest.raises(BundleIntegrityError, match="does not match the checksum"):
        Bundle.load(pinned)

    # a changed threshold is a change too
    meta["threshold"] = 0.0
    (tmp_path / "b1" / BUNDLE_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleIntegrityError):
        Bundle.load(tmp_path / "b1")

    _tamper(cached / "classifier.joblib")
    with pytest.raises(BundleIntegrityError):
        registry.load_champion(uri, NAME)
    assert registry.load_champion(uri, NAME).registry_version == v1  # re-downloaded from the store


def test_a_version_registered_before_checksums_still_loads(
    uri: str, tmp_path: Path, caplog
) -> None:
    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    registry.promote(
        uri, v1, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    registry.client(uri).delete_model_version_tag("semflow", v1, registry.DIGEST_TAG)
    with caplog.at_level("WARNING", logger="semflow.registry"):
        assert registry.load_champion(uri, NAME).registry_version == v1
    assert "register it again" in caplog.text


def test_a_forced_gate_is_recorded_on_the_version(uri: str, tmp_path: Path, caplog) -> None:
    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.6})
    forced = {"by": "ops", "reason": "CI subset", "changes": "lowers the floor on accuracy"}
    with caplog.at_level("WARNING", logger="semflow.registry"):
        res = registry.promote(
            uri, v1, floors={"accuracy": 0.5}, tolerance=0.01, compare=[], forced=forced, name=NAME
        )
    assert res.promoted
    tags = registry.client(uri).get_model_version("semflow", v1).tags
    assert tags["gate.forced"] == "true" and tags["gate.forced_by"] == "ops"
    assert tags["gate.forced_reason"] == "CI subset"
    assert tags["gate.forced_changes"] == "lowers the floor on accuracy"
    assert "forced by ops" in caplog.text
    # an ordinary promotion carries no such tag
    v2 = _register(uri, _bundle(tmp_path / "b2"), {"accuracy": 0.9})
    registry.promote(
        uri, v2, floors={"accuracy": 0.5}, tolerance=0.01, compare=["accuracy"], name=NAME
    )
    assert "gate.forced" not in registry.client(uri).get_model_version("semflow", v2).tags


def _bundle_on(tmp: Path, embedder_dir: Path | None, embedder_version: str) -> Path:
    """A bundle whose classifier was trained on `embedder_version`'s embeddings."""
    b = Bundle.load(_bundle(tmp), verify=False)
    b.embedder_dir, b.embedder_version = embedder_dir, embedder_version
    return b.save(tmp)


def test_rollback_across_embedders_rebuilds_the_index(
    uri: str, tmp_path: Path, semflow_home: Path, monkeypatch, capsys, embedder
) -> None:
    import json

    import pandas as pd

    from semflow.cli import main
    from semflow.config import get_settings
    from semflow.embedding import embedder_version, installed_embedder_dir
    from semflow.index import open_store
    from semflow.sources import FieldMapping, FileSource
    from semflow.sync import run_sync
    from semflow.training import Paths

    # v1 shipped a fine-tuned embedder (simulated: the same weights under another name);
    # v2, the champion, uses the packaged model, which built the live index.
    tuned = embedder_version(embedder.model_dir, "tuned")
    v1 = _register(uri, _bundle_on(tmp_path / "b1", embedder.model_dir, tuned), {"accuracy": 0.9})
    registry.promote(uri, v1, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    v2 = _register(uri, _bundle_on(tmp_path / "b2", None, embedder.version), {"accuracy": 0.95})
    registry.promote(uri, v2, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    monkeypatch.setenv("SEMFLOW_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SEMFLOW_WRITER_LOCK_TIMEOUT_S", "1")
    get_settings.cache_clear()
    s = get_settings()
    texts = {
        "card_lost": ["I lost my card", "my card was stolen", "where is my card"],
        "top_up": ["top up my account", "my top-up failed", "add money by transfer"],
        "refund": ["I want a refund", "refund my purchase", "money back for an order"],
    }
    rows = [
        {"id": f"{label}-{i}", "text": t, "label": label, "updated_at": "2026-05-01T00:00:00Z"}
        for label, ts in texts.items()
        for i, t in enumerate(ts)
    ]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    source = FileSource("notes", docs, FieldMapping(labels="label"))
    run_sync(source, Services.from_settings(s, embedder=embedder))
    golden = Paths.for_home(s).prepared / "test.csv"  # the reindex's golden queries
    golden.parent.mkdir(parents=True)
    pd.DataFrame(rows)[["text", "label"]].to_csv(golden, index=False)
    store = open_store(s)
    gen = store.live_generation()
    assert store.live_embedder_version() == embedder.version

    def champion() -> str:
        return str(registry.client(uri).get_model_version_by_alias("semflow", "champion").version)

    def points() -> dict[str, str]:
        with store.open_live() as idx:
            return {
                p["doc_id"]: p["embedder_version"]
                for _, p in idx.iter_payloads("notes", fields=("doc_id", "embedder_version"))
            }

    # The rebuild cannot take the writer lock: exit 1 with a sentence, and nothing changed.
    with open_store(s).lock(), pytest.raises(SystemExit) as exc:
        main(["model", "rollback", "--to", v1])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert f"could not rebuild the index with v{v1}'s embedder {tuned}" in err
    assert f"the champion is still v{v2}" in err and f"generation {gen}" in err
    assert champion() == v2 and store.live_generation() == gen

    main(["model", "rollback", "--to", v1])
    out = json.loads(capsys.readouterr().out)
    assert (out["champion"], out["previous_champion"]) == (v1, v2)
    rx = out["reindex"]
    assert rx["reindexed"] is True and rx["gated"] is False and rx["embedder_version"] == tuned
    assert rx["old_golden_ndcg"] is not None and rx["golden_ndcg"] is not None
    assert champion() == v1
    assert store.live_embedder_version() == tuned and store.live_generation() != gen
    assert points() == {r["id"]: tuned for r in rows} and rx["points"] == len(rows)
    # Installed, so the next sync embeds with v1's embedder and applies to the new generation.
    assert installed_embedder_dir(s, tuned) is not None
    assert Services.from_settings(s).embedder().version == tuned
    with docs.open("a") as fh:
        fh.write(json.dumps({**rows[0], "id": "new", "updated_at": "2026-05-02T00:00:00Z"}) + "\n")
    run_sync(source, Services.from_settings(s))
    assert points() == {**{r["id"]: tuned for r in rows}, "new": tuned}

    # --no-reindex moves only the alias.
    gen = store.live_generation()
    main(["model", "rollback", "--to", v2, "--no-reindex"])
    out = json.loads(capsys.readouterr().out)
    assert out["champion"] == v2 and out["reindex"]["reindexed"] is False
    assert champion() == v2
    assert store.live_generation() == gen and store.live_embedder_version() == tuned


def test_a_missing_model_or_version_is_recognised_by_error_code(uri: str) -> None:
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    c = registry.client(uri)
    for read in (lambda: c.get_registered_model("semflow"), lambda: c.get_model_version("x", "9")):
        with pytest.raises(MlflowException) as err:
            read()
        assert _is_missing(err.value)
    # How the REST client reports it (an MLflow server in front of the store).
    rest = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"})
    assert _is_missing(rest)
    # The words alone say nothing: a malformed request, a failed HTTP call or a missing local
    # file are errors to report, not "nothing registered".
    assert not _is_missing(MlflowException("alias x not found", INVALID_PARAMETER_VALUE))
    assert not _is_missing(MlflowException("API request failed: 404 Not Found"))
    assert not _is_missing(OSError("No such file or directory: mlflow.db"))
    assert not _is_missing(RuntimeError("model does not exist"))


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _champion(uri: str) -> str | None:
    """The champion's version, read straight from the store (not through semflow)."""
    v = _client(uri).get_registered_model("semflow").aliases.get("champion")
    return None if v is None else str(v)


@pytest.fixture
def outage(monkeypatch, uri: str) -> dict[str, int]:
    """The registry goes down right after the promotion lock is taken, for `calls` calls:
    they go to an MLflow server whose port nothing listens on (real connection refused)."""
    import contextlib
    import socket

    from mlflow import MlflowClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = f"http://127.0.0.1:{port}"
    dead = MlflowClient(tracking_uri=down, registry_uri=down)
    state = {"calls": 0, "armed": 1}
    real_client, real_lock = tracking.client, promotion._promotion_lock

    class Client:
        def __init__(self, real: object) -> None:
            self._real = real

        def __getattr__(self, attr: str) -> object:
            if state["calls"] > 0:
                state["calls"] -= 1
                return getattr(dead, attr)
            return getattr(self._real, attr)

    @contextlib.contextmanager
    def lock(tracking_uri: str, name: str):
        with real_lock(tracking_uri, name):
            state["calls"] = state["armed"]
            yield

    for module in (tracking, promotion, artifacts):  # each calls the client it imported
        monkeypatch.setattr(module, "client", lambda u: Client(real_client(u)))
    monkeypatch.setattr(promotion, "_promotion_lock", lock)
    return state


def test_a_registry_down_during_rollback_is_an_error_not_no_champion(
    uri: str, tmp_path: Path, outage: dict[str, int]
) -> None:
    outage["armed"] = 0
    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    registry.promote(uri, v1, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    v2 = _register(uri, _bundle(tmp_path / "b2"), {"accuracy": 0.95})
    registry.promote(uri, v2, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    assert _champion(uri) == v2

    # The champion cannot be read: the rollback stops instead of recording "from vNone".
    outage["armed"] = 1
    sentence = re.escape(f"could not read semflow@champion from {uri}: API request to")
    with pytest.raises(registry.RegistryError, match=sentence):
        registry.rollback(uri, v1, NAME)
    outage["armed"] = 0
    assert _champion(uri) == v2
    assert _client(uri).get_model_version("semflow", v1).tags["gate.reason"] == "passed the gate"

    # The registry is back: the same rollback goes through and names the previous champion.
    assert registry.rollback(uri, v1, NAME) == {"champion": v1, "previous_champion": v2}
    assert _champion(uri) == v1


def test_promote_and_rollback_treat_an_unreadable_champion_alike(
    uri: str, tmp_path: Path, outage: dict[str, int]
) -> None:
    outage["armed"] = 0
    v1 = _register(uri, _bundle(tmp_path / "b1"), {"accuracy": 0.9})
    # No champion yet is not an error, for either of them.
    assert _champion(uri) is None
    assert registry.rollback(uri, v1, NAME) == {"champion": v1, "previous_champion": None}
    v2 = _register(uri, _bundle(tmp_path / "b2"), {"accuracy": 0.95})
    outage["armed"] = 1
    with pytest.raises(registry.RegistryError, match="could not read semflow@champion"):
        registry.promote(uri, v2, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    outage["armed"] = 0
    assert _champion(uri) == v1
    res = registry.promote(uri, v2, floors={}, tolerance=0.01, compare=["accuracy"], name=NAME)
    assert res.promoted and res.previous_champion == v1
