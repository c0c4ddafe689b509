"""Bundle, ranker and metrics on synthetic embeddings (no model load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from semflow.errors import SettingsError
from semflow.models.bundle import Bundle, BundleError
from semflow.models.metrics import ndcg_at_k
from semflow.models.oos import OosRule
from semflow.models.ranker import (
    RankGroup,
    cosine_only,
    fit_weights,
    groups_ndcg,
    lexical_overlap,
    score_candidates,
    validate_weights,
)

RULE = OosRule("probability", 5, 0.95, None)


def _blobs(n_per: int = 30, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:3] * 3
    x = np.vstack([c + rng.normal(0, 0.5, (n_per, d)) for c in centers])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.repeat(["card", "loan", "topup"], n_per)
    return x.astype(np.float32), y


@pytest.fixture
def bundle() -> Bundle:
    x, y = _blobs()
    clf = LogisticRegression(max_iter=500).fit(x, y)
    return Bundle(
        embedder_dir=None,
        embedder_version="m@abc",
        labels=[str(c) for c in clf.classes_],
        threshold=0.5,
        ranker_weights={"semantic": 0.8, "lexical": 0.2},
        classifier=clf,
        tags={"k": "v"},
    )


def test_classify_top_label_and_alternatives(bundle: Bundle) -> None:
    x, y = _blobs(seed=1)
    out = bundle.classify(x, top_k=3)
    acc = np.mean([o["label"] == t for o, t in zip(out, y, strict=True)])
    assert acc > 0.9
    first = out[0]
    assert set(first) == {"label", "score", "oos_score", "alternatives"}
    assert first["oos_score"] is None  # a classifier without an OOS score
    assert len(first["alternatives"]) == 3
    scores = [a["score"] for a in first["alternatives"]]
    assert scores == sorted(scores, reverse=True)
    assert first["alternatives"][0]["score"] == pytest.approx(first["score"])
    assert sum(scores) == pytest.approx(1.0, abs=1e-6)


def test_unknown_below_threshold(bundle: Bundle) -> None:
    # A point equidistant from all classes: no class reaches 0.5.
    mid = np.zeros((1, 16), dtype=np.float32)
    mid[0, :3] = 1 / np.sqrt(3)
    out = bundle.classify(mid)
    assert out[0]["score"] < 0.5
    assert out[0]["label"] == "unknown"
    assert out[0]["alternatives"][0]["label"] in bundle.labels


def test_top_k_clamped_and_validated(bundle: Bundle) -> None:
    x, _ = _blobs()
    assert len(bundle.classify(x[:1], top_k=50)[0]["alternatives"]) == 3
    with pytest.raises(BundleError, match="top_k"):
        bundle.classify(x[:1], top_k=0)


def test_save_load_roundtrip(bundle: Bundle, tmp_path: Path) -> None:
    x, _ = _blobs(seed=2)
    bundle.save(tmp_path / "b")
    loaded = Bundle.load(tmp_path / "b")
    assert loaded.labels == bundle.labels
    assert loaded.embedder_dir is None
    assert loaded.ranker_weights == bundle.ranker_weights
    assert loaded.tags == {"k": "v"}
    np.testing.assert_allclose(loaded.predict_proba(x), bundle.predict_proba(x))


def test_save_copies_embedder_dir(bundle: Bundle, tmp_path: Path) -> None:
    emb = tmp_path / "ft"
    emb.mkdir()
    (emb / "model.safetensors").write_bytes(b"w")
    bundle.embedder_dir = emb
    bundle.save(tmp_path / "b")
    loaded = Bundle.load(tmp_path / "b")
    assert loaded.embedder_dir == tmp_path / "b" / "embedder"
    assert (loaded.embedder_dir / "model.safetensors").read_bytes() == b"w"


def test_load_rejects_non_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a semflow bundle"):
        Bundle.load(tmp_path)
    (tmp_path / "bundle.json").write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def test_bad_threshold_and_label_mismatch(bundle: Bundle) -> None:
    with pytest.raises(BundleError, match="threshold"):
        Bundle(None, "m", ["a"], 1.5, {"semantic": 1.0})
    with pytest.raises(BundleError, match="labels"):
        Bundle(None, "m", ["x", "y", "z"], 0.5, {"semantic": 1.0}, classifier=bundle.classifier)


# -- ranker -------------------------------------------------------------------------
def test_validate_weights_ok_and_errors() -> None:
    assert validate_weights({"semantic": 0.7, "lexical": 0.3}) == {"semantic": 0.7, "lexical": 0.3}
    with pytest.raises(SettingsError, match="'lexical'"):
        validate_weights({"semantic": 1.2, "lexical": -0.2})
    with pytest.raises(SettingsError, match="'price'"):
        validate_weights({"semantic": 1.0, "price": "cheap"})
    with pytest.raises(SettingsError, match="sum to 1"):
        validate_weights({"semantic": 0.5, "lexical": 0.4})
    with pytest.raises(SettingsError, match="non-empty"):
        validate_weights({})


def test_cosine_only_weights_the_semantic_feature_alone() -> None:
    assert cosine_only(["semantic", "lexical"]).tolist() == [1.0, 0.0]
    assert cosine_only(["price", "semantic", "lexical"]).tolist() == [0.0, 1.0, 0.0]


def test_lexical_overlap() -> None:
    assert lexical_overlap("Lost my card!", "card was lost") == pytest.approx(2 / 3)
    assert lexical_overlap("", "anything") == 0.0
    assert lexical_overlap("abc", "xyz") == 0.0


def test_score_candidates_components() -> None:
    q = np.array([1.0, 0.0], dtype=np.float32)
    cands = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    out = score_candidates(
        q,
        cands,
        "lost card",
        ["my card is lost", "weather today"],
        [{"recency": 0.5}, {}],
        {"semantic": 0.5, "lexical": 0.25, "recency": 0.25},
    )
    (s0, c0), (s1, c1) = out
    assert c0 == pytest.approx({"semantic": 1.0, "lexical": 1.0, "recency": 0.5})
    assert c1 == pytest.approx({"semantic": 0.0, "lexical": 0.0, "recency": 0.0})
    assert s0 == pytest.approx(0.5 + 0.25 + 0.125)
    assert s1 == pytest.approx(0.0)


def test_score_candidates_shape_errors() -> None:
    q = np.ones(2, dtype=np.float32)
    with pytest.raises(SettingsError, match="candidate vectors"):
        score_candidates(q, np.ones((1, 2)), "q", ["a", "b"], None, {"semantic": 1.0})
    with pytest.raises(SettingsError, match="feature rows"):
        score_candidates(q, np.ones((2, 2)), "q", ["a", "b"], [{}], {"semantic": 1.0})


def test_ndcg() -> None:
    assert ndcg_at_k([1, 1, 0, 0], 10) == pytest.approx(1.0)
    assert ndcg_at_k([0, 0, 0], 10) == 0.0
    assert 0 < ndcg_at_k([0, 1, 1], 10) < 1
    assert ndcg_at_k([1, 0], 10, n_relevant=4) < 1


def test_fit_weights_learns_useful_feature() -> None:
    # The numeric feature is the relevance signal; cosine is noise.
    rng = np.random.default_rng(0)
    groups = []
    for _ in range(20):
        rel = (rng.random(30) < 0.3).astype(float)
        feats = np.column_stack([rng.random(30), rng.random(30), rel * 0.8 + rng.random(30) * 0.3])
        groups.append(RankGroup(feats, rel))
    w, score = fit_weights(groups, ["semantic", "lexical", "boost"], step=0.1)
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6)
    validate_weights(w)
    assert w["boost"] > 0.5
    assert score > groups_ndcg(groups, np.array([1.0, 0, 0]), 10)
    with pytest.raises(SettingsError):
        fit_weights([], ["semantic"])


# -- fine-tune batching (no model) ----------------------------------------------------
def test_pairs_share_a_label_and_batches_are_label_distinct() -> None:
    import random

    from semflow.models.finetune import length_bucketed_batches, make_pairs

    texts = [f"text {i} " + "x" * (i % 7) for i in range(60)]
    labels = [f"l{i % 6}" for i in range(60)]
    label_of = dict(zip(texts, labels, strict=True))
    pairs = make_pairs(texts, labels, max_pairs=1000, seed=1)
    assert len(pairs) == 60
    assert all(a != b and label_of[a] == label_of[b] == lab for a, b, lab in pairs)
    assert make_pairs(texts, labels, 1000, seed=1) == pairs  # seeded
    assert len(make_pairs(texts, labels, 10, seed=1)) == 10
    batches = length_bucketed_batches(pairs, 4, random.Random(0))
    assert 57 <= sum(len(b) for b in batches) <= 60  # a lone leftover pair per chunk is dropped
    for b in batches:
        assert 2 <= len(b) <= 4
        assert len({p[2] for p in b}) == len(b)
    assert make_pairs(["only"], ["one"], 10, seed=0) == []


# -- classifier calibration ---------------------------------------------------------
def test_threshold_rule_on_scores_of_known_overlap() -> None:
    """In-scope OOS scores ~ N(0, 1), OOS ones ~ N(2, 1): the rule's threshold and what it
    does on fresh draws are the normal quantiles'."""
    from scipy.stats import norm

    from semflow.models.oos import choose_oos_threshold

    rng = np.random.default_rng(0)
    val_in, val_oos = rng.normal(0, 1, 20000), rng.normal(2, 1, 20000)
    test_in, test_oos = rng.normal(0, 1, 20000), rng.normal(2, 1, 20000)
    # Coverage alone: the 95% quantile of the in-scope scores; OOS recall P(N(2,1) > t).
    t = choose_oos_threshold(val_in, 0.95)
    assert t == pytest.approx(norm.ppf(0.95), abs=0.03)
    assert (test_in <= t).mean() == pytest.approx(0.95, abs=0.005)
    assert (test_oos > t).mean() == pytest.approx(norm.sf(t, loc=2), abs=0.01)
    # With OOS validation examples and a reachable recall target, the threshold rises to
    # the highest one meeting it: more in-scope coverage than the floor.
    t50 = choose_oos_threshold(val_in, 0.95, val_oos, 0.5)
    assert t50 == pytest.approx(2.0, abs=0.03)
    assert (test_oos > t50).mean() == pytest.approx(0.5, abs=0.01)
    assert (test_in <= t50).mean() == pytest.approx(norm.cdf(2.0), abs=0.005)
    # A recall target only a lower threshold reaches does not break the coverage floor.
    assert choose_oos_threshold(val_in, 0.95, val_oos, 0.9) == t
    # Exact on a small sample: the lowest threshold keeping 3 of 4 in-scope scores.
    assert choose_oos_threshold(np.array([0.4, 0.1, 0.3, 0.2]), 0.75) == 0.3
    assert choose_oos_threshold(np.array([0.1, 0.2]), 0.75, np.array([0.5, 0.9]), 0.5) == (
        pytest.approx(0.9)
    )
    with pytest.raises(SettingsError, match="min_coverage"):
        OosRule("knn", 5, 0.0, None)
    with pytest.raises(SettingsError, match="oos_recall"):
        OosRule("knn", 5, 0.9, 1.5)


def test_oos_score_flags_texts_far_from_every_label() -> None:
    """Calibrated on in-scope validation texts: ~min_coverage of new in-scope texts stay at
    or below the threshold; a cluster no label covers is above it."""
    from semflow.models.classifier import NeighbourVote, train_classifier
    from semflow.models.openset import open_set_metrics

    x, y = _blobs(n_per=60, seed=3)
    xv, yv = _blobs(n_per=60, seed=4)
    xt, yt = _blobs(n_per=200, seed=5)
    rng = np.random.default_rng(6)
    far = np.eye(16)[5] * 3 + rng.normal(0, 0.5, (200, 16))  # a fourth, unseen cluster
    far = (far / np.linalg.norm(far, axis=1, keepdims=True)).astype(np.float32)
    for kind in ("probability", "knn", "combined"):
        rule = OosRule(kind, 5, 0.9, None)
        res = train_classifier(
            x, y.tolist(), xv, yv.tolist(), rule=rule, vote=NeighbourVote(5, 0.5, 0.05)
        )
        assert res.val_coverage >= 0.9
        clf = res.model
        s_in, s_far = clf.oos_score(xt), clf.oos_score(far)
        assert s_in.min() >= 0 and s_far.max() <= 1
        m = open_set_metrics(s_in, clf.predict(xt) == yt, s_far, res.threshold)
        if kind != "probability":  # (saturated probabilities tie: coverage is coarser)
            assert m["in_scope_coverage"] == pytest.approx(0.9, abs=0.05), kind
            # far from every training text, whatever the probability
            assert m["oos_recall"] > 0.95 and m["auroc"] > 0.95, (kind, m)
    with pytest.raises(SettingsError, match="knn_weight"):
        train_classifier(x, y.tolist(), xv, yv.tolist(), rule=OosRule("knn", 5, 0.9, None))


def test_temperature_scaling_and_classifier_training() -> None:
    from semflow.models.classifier import fit_temperature, train_classifier

    x, y = _blobs(n_per=40, seed=3)
    xv, yv = _blobs(n_per=20, seed=4)
    res = train_classifier(x, y.tolist(), xv, yv.tolist(), C=10.0, rule=RULE)
    assert res.val_accuracy > 0.9 and 0 < res.val_coverage <= 1
    assert 0.05 <= res.temperature <= 20
    proba = res.model.predict_proba(xv)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # Overconfident logits (x10) get a temperature near 10.
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]] * 20)
    truth = np.array([0, 1, 1, 1, 0] * 20)  # 80% right
    t = fit_temperature(logits * 10, truth)
    assert 5 < t < 20
    with pytest.raises(SettingsError, match="two labels"):
        train_classifier(x, ["a"] * len(x), xv, yv.tolist(), rule=RULE)
    # Refit on train + val: same calibration, new weights that saw the validation rows.
    refit = train_classifier(x, y.tolist(), xv, yv.tolist(), C=10.0, rule=RULE, refit_on_val=True)
    assert (refit.temperature, refit.threshold) == (res.temperature, res.threshold)
    assert not np.allclose(refit.model.base.coef_, res.model.base.coef_)
    assert (refit.model.predict(xv) == yv).mean() >= (res.model.predict(xv) == yv).mean()


def _xor(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label "a" near +-e1, "b" near +-e2: no linear model separates them, neighbours do."""
    rng = np.random.default_rng(seed)
    centers = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    x = np.vstack([np.array(c) + rng.normal(0, 0.15, (n_per, 2)) for c in centers])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(["a", "a", "b", "b"], n_per)


def test_neighbour_vote_blends_with_the_linear_model(tmp_path: Path) -> None:
    import joblib

    from semflow.models.classifier import NeighbourVote, neighbour_vote, train_classifier

    x, y = _xor(30, seed=5)
    xv, yv = _xor(15, seed=6)
    linear = train_classifier(x, y.tolist(), xv, yv.tolist(), C=10.0, rule=RULE)
    blend = train_classifier(
        x, y.tolist(), xv, yv.tolist(), C=10.0, rule=RULE, vote=NeighbourVote(5, 0.5, 0.05)
    )
    assert linear.model.memory is None
    assert linear.val_accuracy < 0.8
    assert blend.val_accuracy > 0.95
    # Same linear model underneath: the vote alone makes the difference.
    np.testing.assert_allclose(blend.model.linear_decision(xv), linear.model.linear_decision(xv))
    np.testing.assert_allclose(blend.model.predict_proba(xv).sum(axis=1), 1.0)
    # The refitted model votes among train + val; the memory survives a pickle round trip.
    refit = train_classifier(
        x,
        y.tolist(),
        xv,
        yv.tolist(),
        rule=RULE,
        refit_on_val=True,
        vote=NeighbourVote(5, 0.5, 0.05),
    )
    assert refit.model.memory is not None and len(refit.model.memory) == len(x) + len(xv)
    joblib.dump(refit.model, tmp_path / "clf.joblib")
    loaded = joblib.load(tmp_path / "clf.joblib")
    np.testing.assert_allclose(loaded.predict_proba(xv), refit.model.predict_proba(xv))
    # The vote itself: k is capped by the memory, and the nearest row dominates at a low
    # temperature.
    memory = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    vote = neighbour_vote(
        np.array([[0.9, 0.1]]), memory, np.array([0, 1]), 2, NeighbourVote(10, 1.0, 0.01)
    )
    assert vote.shape == (1, 2) and vote[0, 0] > 0.99
    with pytest.raises(SettingsError, match=r"classifier\.knn_k"):
        NeighbourVote(k=0)
    with pytest.raises(SettingsError, match=r"classifier\.knn_weight"):
        NeighbourVote(weight=1.5)


def test_binary_classifier_probabilities_match_sklearn() -> None:
    from semflow.models.classifier import CalibratedClassifier

    x, y = _blobs()
    keep = y != "topup"
    base = LogisticRegression(max_iter=500).fit(x[keep], y[keep])
    clf = CalibratedClassifier(base)
    # A classifier pickled before the vote existed has no vote attributes of its own.
    assert "memory" not in vars(clf)
    np.testing.assert_allclose(clf.predict_proba(x), base.predict_proba(x), atol=1e-6)
    assert (clf.predict(x) == base.predict(x)).all()


def test_make_embedder_checks_the_version(bundle: Bundle, tmp_path: Path) -> None:
    from semflow.config import load_settings
    from semflow.embedding import embedder_version

    s = load_settings()
    bundle.embedder_version = embedder_version(s.base_embedder_dir, "all-MiniLM-L6-v2")
    assert bundle.make_embedder(s).version == bundle.embedder_version
    bundle.embedder_version = "all-MiniLM-L6-v2@000000000000"
    with pytest.raises(BundleError, match="trained with all-MiniLM-L6-v2@000000000000, but"):
        bundle.make_embedder(s)


def test_a_bundle_from_before_the_rename_loads_with_its_registry_lineage(
    bundle: Bundle, tmp_path: Path
) -> None:
    import json

    from semflow.models.bundle import BUNDLE_FILE, bundle_digest

    bundle.registered_model, bundle.registry_version = "semflow", "7"
    path = bundle.save(tmp_path / "b")
    digest = bundle_digest(path)
    manifest = json.loads((path / BUNDLE_FILE).read_text())
    manifest["model_name"] = manifest.pop("registered_model")
    manifest["model_version"] = manifest.pop("registry_version")
    (path / BUNDLE_FILE).write_text(json.dumps(manifest))
    old = Bundle.load(path)
    assert (old.registered_model, old.registry_version) == ("semflow", "7")
    assert bundle_digest(path) == digest  # lineage is outside the checksum, either spelling


# -- fine-tuning on a tiny labelled set (real MiniLM, a few seconds) -----------------
_TINY = {
    "card": [
        "my card was declined",
        "why is my card not working",
        "card payment refused",
        "the shop refused my card",
        "card got rejected at the till",
        "payment with card failed",
    ],
    "topup": [
        "how do I top up",
        "add money to my account",
        "top up with bank transfer",
        "my top up did not arrive",
        "where is the money I added",
        "topping up failed",
    ],
    "pin": [
        "I forgot my PIN",
        "change my PIN number",
        "PIN is blocked",
        "how to reset the PIN",
        "wrong PIN too many times",
        "unblock my PIN",
    ],
}


def _separation(model_dir: Path, texts: list[str], labels: list[str]) -> float:
    """Mean same-label cosine minus mean other-label cosine."""
    from semflow.embedding import Embedder

    x = Embedder(model_dir, "tiny").encode(texts)
    sims = x @ x.T
    same = np.equal.outer(np.array(labels), np.array(labels))
    off = ~np.eye(len(labels), dtype=bool)
    return float(sims[same & off].mean() - sims[~same].mean())


@pytest.mark.parametrize(
    ("loss", "extra"), [("proxy", {"margin": 0.1, "scale": 16.0}), ("mnrl", {"scale": 20.0})]
)
def test_finetune_pulls_labels_apart(loss: str, extra: dict, tmp_path: Path) -> None:
    from semflow.config import load_settings
    from semflow.models.finetune import finetune

    texts = [t for ts in _TINY.values() for t in ts]
    labels = [lab for lab, ts in _TINY.items() for _ in ts]
    base = load_settings().base_embedder_dir
    res = finetune(
        base, texts, labels, tmp_path / "ft", loss=loss, epochs=4, batch_size=6, lr=2e-4, **extra
    )
    assert res.steps > 0 and np.isfinite(res.final_loss)
    assert (tmp_path / "ft" / "modules.json").is_file()
    assert _separation(tmp_path / "ft", texts, labels) > _separation(base, texts, labels) + 0.05


def test_finetune_rejects_bad_settings(tmp_path: Path) -> None:
    from semflow.config import load_settings
    from semflow.models.finetune import finetune

    base = load_settings().base_embedder_dir
    with pytest.raises(SettingsError, match=r"finetune\.loss"):
        finetune(base, ["a", "b"], ["x", "y"], tmp_path, loss="triplet")
    with pytest.raises(SettingsError, match="two or more labels"):
        finetune(base, ["a", "b"], ["x", "x"], tmp_path, loss="proxy")


def test_bundle_says_unknown_above_the_oos_threshold(tmp_path: Path) -> None:
    from semflow.models.classifier import NeighbourVote, train_classifier

    x, y = _blobs(n_per=60, seed=3)
    xv, yv = _blobs(n_per=60, seed=4)
    res = train_classifier(
        x,
        y.tolist(),
        xv,
        yv.tolist(),
        rule=OosRule("combined", 5, 0.95, None),
        vote=NeighbourVote(5, 0.5, 0.05),
    )
    point = {"threshold": res.threshold, "val_coverage": res.val_coverage}
    b = Bundle(None, "m@abc", list(y[[0, 60, 120]]), res.threshold, {}, res.model)
    b.operating_point = point
    b = Bundle.load(b.save(tmp_path / "b"))
    assert b.operating_point == point
    far = np.zeros((2, 16), dtype=np.float32)
    far[:, 7] = 1.0  # a direction no label's texts point at
    xt, yt = _blobs(n_per=30, seed=8)
    out = b.classify(np.vstack([far, xt]), top_k=2)
    assert [o["label"] for o in out[:2]] == ["unknown", "unknown"]
    assert all(o["oos_score"] > res.threshold for o in out[:2])
    # still labelled alternatives: what the nearest labels were
    assert all(o["alternatives"][0]["label"] in b.labels for o in out[:2])
    known = [o for o in out[2:] if o["label"] != "unknown"]
    assert len(known) >= 0.85 * len(xt)
    assert all(o["oos_score"] <= res.threshold for o in known)
    assert np.mean([o["label"] == t for o, t in zip(out[2:], yt, strict=True)]) > 0.85


def test_open_set_split_and_metrics() -> None:
    from semflow.models.openset import open_set_metrics, open_set_split, tradeoff_curve

    labels = [f"l{i:02d}" for i in range(77)] * 2
    held = open_set_split(labels, 0.35, 13)
    assert len(held) == 27 and held == sorted(held) == open_set_split(labels, 0.35, 13)
    assert held != open_set_split(labels, 0.35, 14)
    assert len(open_set_split(labels[:8], 0.35, 13)) == 3  # CI's 8 labels: 3 held out
    with pytest.raises(SettingsError, match="at least 3 labels"):
        open_set_split(["a", "b"], 0.35, 13)
    # 4 in-scope texts (3 labelled right), 2 OOS ones; unknown = score above 0.5
    s_in, ok = np.array([0.1, 0.2, 0.3, 0.9]), np.array([True, True, False, True])
    s_oos = np.array([0.6, 0.25])
    m = open_set_metrics(s_in, ok, s_oos, 0.5)
    assert m["in_scope_accuracy"] == 0.5  # 0.1 and 0.2: accepted and right
    assert m["in_scope_coverage"] == 0.75 and m["closed_set_accuracy"] == 0.75
    assert m["oos_recall"] == 0.5 and m["oos_precision"] == 0.5  # 0.6 and 0.9 rejected
    assert m["auroc"] == pytest.approx(5 / 8)  # OOS above in-scope in 5 of 8 pairs
    assert m["fpr@95tpr"] == 1.0  # accepting 95% of in-scope (<= 0.9) accepts every OOS
    curve = tradeoff_curve(s_in, ok, s_oos)
    assert curve[0]["oos_recall"] >= curve[-1]["oos_recall"] == 0.0
    assert curve[-1]["in_scope_accuracy"] == 0.75
