"""The ONNX Runtime backends: same vectors as torch (fp32), close ones (int8), their own
embedder versions, one export reused, and no index queried with another backend's vectors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from semflow.config import REPO_ROOT, Settings, load_settings
from semflow.embedding import (
    Embedder,
    check_embedder,
    embedder_version,
    install_embedder,
    parse_version,
    resolve_embedder,
    weights_version,
)
from semflow.errors import IndexError_, ModelMismatchError
from semflow.onnx_backend import MODEL_FILE, export_dir, pool, pooling_spec


def _texts(n: int = 50) -> list[str]:
    with (REPO_ROOT / "data" / "banking77" / "test.csv").open() as fh:
        rows = [r["text"] for r in csv.DictReader(fh)]
    return rows[:: len(rows) // n][:n]


def _settings(home: Path, backend: str) -> Settings:
    return load_settings(home=home, backend=backend)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_onnx_fp32_gives_the_torch_vectors(embedder, onnx_embedders):
    texts = [*_texts(), "word " * 400]  # the last one is truncated at max_seq_length
    want = embedder.encode(texts)
    onnx = onnx_embedders["onnx"]
    got = onnx.encode(texts)
    assert got.shape == want.shape and got.dtype == np.float32
    assert _cosines(got, want).min() >= 0.9999
    one = np.concatenate([onnx.encode([t]) for t in texts[:5]])  # unpadded, batch of one
    assert _cosines(one, want[:5]).min() >= 0.9999
    assert onnx.dimension == embedder.dimension == 384
    assert onnx.max_seq_length == embedder.max_seq_length == 256


def test_int8_stays_close_to_fp32(onnx_embedders):
    texts = _texts()
    fp32 = onnx_embedders["onnx"].encode(texts)
    int8 = onnx_embedders["onnx-int8"].encode(texts)
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)
    cos = _cosines(int8, fp32)
    # measured on these 50 texts: mean 0.9935, min 0.9877 (per-tensor int8 was 0.97 / 0.92)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, (cos.mean(), cos.min())


def test_session_calls_are_small_and_pad_little(embedder, onnx_embedders):
    """A micro-batch of mixed lengths runs longest first in calls of at most BATCH_TOKENS
    padded tokens (big padded calls were 5x slower a text), with the vectors unchanged."""
    from semflow.onnx_backend import BATCH_TOKENS

    runner = onnx_embedders["onnx"].onnx
    shapes: list[tuple[int, int]] = []
    run = runner.session.run

    def spy(names, feed):
        shapes.append(feed["input_ids"].shape)
        return run(names, feed)

    texts = [*_texts(60), "word " * 400]
    runner.session.run = spy  # type: ignore[method-assign]
    try:
        got = runner.encode(texts, 64, True)
    finally:
        runner.session.run = run  # type: ignore[method-assign]
    assert sum(n for n, _ in shapes) == len(texts) and len(shapes) > 1
    assert all(n * width <= BATCH_TOKENS or n == 1 for n, width in shapes), shapes
    assert shapes[0] == (1, 256)  # the longest alone, first (truncated at max_seq_length)
    assert _cosines(got, embedder.encode(texts)).min() >= 0.9999


def test_token_ids_are_the_models_own_from_any_thread(embedder, onnx_embedders):
    """The runner tokenises with its own copy of the model's Rust tokenizer: the ids of
    sentence-transformers' tokenizer (truncated at max_seq_length), from several threads at
    once too."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [*_texts(), "word " * 400, "", "Ünïcödé 日本語 😀 " * 40, "[CLS] [SEP] [MASK] x"]
    st_tokenizer = embedder.model[0].tokenizer
    want = st_tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    runner = onnx_embedders["onnx-int8"].onnx
    assert runner._tokenize(texts) == want
    with ThreadPoolExecutor(8) as pool_:
        got = list(pool_.map(runner._tokenize, [texts[k:] + texts[:k] for k in range(32)]))
    assert all(g == want[k:] + want[:k] for k, g in enumerate(got))


def test_token_counts_of_an_onnx_embedder_load_no_torch_weights(embedder, onnx_home):
    """The compatible routes' `usage` counts with the tokenizer the ONNX runner already has:
    the same counts as sentence-transformers' tokenizer, and no torch model loaded for them."""
    from semflow.serving.compat import TokenCounter

    fresh = resolve_embedder(_settings(onnx_home, "onnx-int8"))
    counter = TokenCounter(fresh, lambda text: 0)
    texts = [*_texts(10), "word " * 400, ""]
    want = embedder.model[0].tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    assert counter.exact and counter.count(texts) == sum(len(ids) for ids in want)
    assert fresh._model is None


def test_each_backend_has_its_own_stable_version(embedder, onnx_embedders):
    torch_v = embedder.version
    onnx_v, int8_v = onnx_embedders["onnx"].version, onnx_embedders["onnx-int8"].version
    assert onnx_v == f"{torch_v}+onnx" and int8_v == f"{torch_v}+onnx-int8"
    assert len({torch_v, onnx_v, int8_v}) == 3
    for v, backend in ((torch_v, "torch"), (onnx_v, "onnx"), (int8_v, "onnx-int8")):
        assert parse_version(v) == (*parse_version(torch_v)[:2], backend)
        assert weights_version(v) == torch_v
    again = Embedder(embedder.model_dir, embedder.name, backend="onnx-int8")
    assert again.version == int8_v  # no export needed to know the version


def test_the_export_is_built_once_and_reused(onnx_home, onnx_embedders):
    weights = weights_version(onnx_embedders["onnx"].version)
    files = {b: export_dir(onnx_home, weights, b) / MODEL_FILE for b in ("onnx", "onnx-int8")}
    before = {b: p.stat().st_mtime_ns for b, p in files.items()}
    meta = json.loads((files["onnx-int8"].parent / "meta.json").read_text())
    assert meta["backend"] == "onnx-int8" and meta["embedder_version"] == weights
    # int8 weights: about a quarter of the fp32 file
    assert files["onnx-int8"].stat().st_size < files["onnx"].stat().st_size / 3
    for backend, emb in onnx_embedders.items():
        second = resolve_embedder(_settings(onnx_home, backend))
        assert np.allclose(second.encode(["card not arrived"]), emb.encode(["card not arrived"]))
    assert {b: p.stat().st_mtime_ns for b, p in files.items()} == before
    # nothing half-built is left next to the exports
    assert sorted(p.name for p in files["onnx"].parent.parent.iterdir()) == ["onnx", "onnx-int8"]


def test_an_index_built_with_torch_is_refused_to_an_onnx_int8_embedder(
    embedder, onnx_embedders, onnx_home
):
    from semflow.index import open_store

    store = open_store(_settings(onnx_home / "store", "torch"))
    texts = _texts(3)
    ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(3)]
    payloads = [{"tenant": "t", "source": "s", "doc_id": str(i)} for i in range(3)]
    with store.writer(embedder.version, embedder.dimension, fresh=True) as w:
        w.upsert(ids, embedder.encode(texts), payloads)
    live = store.live_embedder_version()
    assert live == embedder.version

    s = _settings(onnx_home, "onnx-int8")
    int8 = resolve_embedder(s, live)  # the same weights, run by another backend
    assert int8.version == onnx_embedders["onnx-int8"].version != live
    with pytest.raises(ModelMismatchError, match=r"built with .*@[0-9a-f]{12}, but .*\+onnx-int8"):
        check_embedder(int8.version, live, "the live index was built with")
    with pytest.raises(ModelMismatchError):
        resolve_embedder(s, live, required_by="the live index was built with")
    with pytest.raises(IndexError_, match="full refresh"), store.writer(int8.version, 384):
        pass


def test_an_installed_fine_tuned_embedder_runs_on_every_backend(onnx_home, embedder):
    """A promoted embedder is installed once, under its weights' version, whichever backend
    the index it embeds for was built with."""
    s = _settings(onnx_home / "installed", "onnx-int8")
    tuned = embedder_version(embedder.model_dir, "tuned", "onnx-int8")
    dest = install_embedder(s, embedder.model_dir, tuned)
    assert dest.name == weights_version(tuned) == embedder_version(embedder.model_dir, "tuned")
    picked = resolve_embedder(s, tuned, required_by="the bundle was trained with")
    assert picked.model_dir == dest and picked.version == tuned


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "mean_sqrt_len_tokens", ("cls", "mean")])
def test_pooling_is_sentence_transformers_pooling(mode):
    import torch
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    st = Pooling(4, pooling_mode=mode)
    feats = {"token_embeddings": torch.from_numpy(tokens), "attention_mask": torch.from_numpy(mask)}
    want = st(feats)["sentence_embedding"].numpy()
    modes = [mode] if isinstance(mode, str) else list(mode)
    assert np.allclose(pool(tokens, mask, modes), want, atol=1e-6)


def test_pooling_spec_reads_both_config_styles_and_refuses_other_models(tmp_path, embedder):
    assert pooling_spec(embedder.model_dir) == (["mean"], True)  # legacy boolean keys
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "x.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.Pooling"},
    ]
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "cls"}))
    assert pooling_spec(tmp_path) == (["cls"], False)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))
    with pytest.raises(ValueError, match="not supported"):
        pooling_spec(tmp_path)
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "x.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Transformer -> Pooling -> Dense"):
        pooling_spec(tmp_path)


def test_a_bundle_ships_its_exports_and_the_engine_runs_them_or_falls_back(
    tmp_path, onnx_home, onnx_embedders, embedder
):
    """A bundle with its own embedder carries the fp32 and int8 exports (under its digest);
    an engine under SEMFLOW_BACKEND=onnx-int8 runs the shipped int8 export, exporting nothing,
    and the fp32 one when the bundle's verdict refused int8."""
    from sklearn.linear_model import LogisticRegression

    from semflow.app import Services
    from semflow.models.bundle import Bundle, bundle_digest
    from semflow.serving.engine import Engine

    texts = _texts(12)
    clf = LogisticRegression().fit(embedder.encode(texts), ["card", "loan", "topup"] * 4)
    accepted = {"backend": "onnx-int8", "passed": True, "reasons": []}
    # the base weights as the bundle's own embedder: their exports are in onnx_home already
    bundle = Bundle(
        embedder.model_dir,
        embedder.version,
        list(clf.classes_),
        0.3,
        {"semantic": 1.0},
        clf,
        backend_guard=accepted,
    )
    path = bundle.save(tmp_path / "bundle", onnx_home=onnx_home)
    for backend in ("onnx", "onnx-int8"):
        assert (path / "embedder" / "onnx" / backend / MODEL_FILE).is_file()
    digest = json.loads((path / "bundle.json").read_text())["sha256"]
    assert digest == bundle_digest(path)
    (path / "embedder" / "onnx" / "onnx-int8" / MODEL_FILE).write_bytes(b"tampered")
    assert bundle_digest(path) != digest  # the exports are part of what the digest covers
    path = bundle.save(tmp_path / "bundle", onnx_home=onnx_home)

    def engine(pinned: Path, home: Path) -> Engine:
        s = load_settings(home=home, backend="onnx-int8", redis_url=None)
        return Engine(Services.from_settings(s), watch=False, pinned=pinned)

    served = engine(path, tmp_path / "bento-home")
    try:
        assert served.embedder.version == f"{embedder.version}+onnx-int8"
        got = served.encode(texts)
        assert np.allclose(got, onnx_embedders["onnx-int8"].encode(texts), atol=1e-5)
        assert not (tmp_path / "bento-home" / "onnx").exists()  # nothing exported there
    finally:
        served.close()

    refused = Bundle.load(path)
    refused.backend_guard = {"backend": "onnx-int8", "passed": False, "reasons": ["-0.6 pt"]}
    fallback = engine(refused.save(tmp_path / "refused", onnx_home=onnx_home), tmp_path / "h2")
    try:
        assert fallback.embedder.version == f"{embedder.version}+onnx"
        got = fallback.encode(texts)
        assert _cosines(got, embedder.encode(texts)).min() >= 0.9999  # fp32 vectors
        assert not (tmp_path / "h2" / "onnx").exists()
    finally:
        fallback.close()
