"""Unknown detection on the Banking77 open-set split: the threshold rule before and after
issue 15, with the frozen base embedder and with one fine-tuned on the in-scope labels only.

    .venv/bin/python benchmarks/oos.py [--epochs N] [--base-embeddings FILE.npz] [--workdir DIR]

The split is the pipeline's (params.yaml): train/val from data/banking77/train.csv (stratified,
`prepare.val_size`, `base.seed`), test = data/banking77/test.csv, and
`evaluate.open_set.holdout_ratio` of the labels (27 of 77), drawn with `base.seed`, held out
of training (semflow.models.openset.open_set_split).
Every variant trains the classifier stage's recipe (params.yaml `classifier`) on the in-scope
texts and is scored on the whole test split. Variants:

- `frozen/before`: the frozen base embedder, "unknown" below the top-probability threshold that
  keeps validation precision >= 0.95 (the rule before issue 15; the same-run reference);
- `frozen/after`: the frozen base embedder, the OOS score and coverage rule of params.yaml
  (what `evaluate` reports as `open_set`);
- `finetuned/before`, `finetuned/after`: the same two rules on an embedder fine-tuned (the
  finetune stage's loss and params, `--epochs` of them) on the in-scope training texts only:
  the honest open-set figure of a fine-tuned model (the pipeline's own saw every label).

Prints one JSON object. Slow: two embeddings of ~13k texts and one fine-tune (minutes to tens
of minutes on 2 CPU cores); `--base-embeddings` reuses the base vectors (arrays `train`, `test`
in the csv files' row order).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OLD_TARGET_PRECISION = 0.95  # the rule before issue 15: params.yaml classifier.target_precision


def old_threshold(scores: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The rule before issue 15: the lowest top-probability threshold whose accepted
    validation predictions keep precision >= `target`."""
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], correct[order].astype(float)
    ok = np.nonzero(np.cumsum(c) / np.arange(1, len(c) + 1) >= target)[0]
    return float(s[ok[-1]]) if len(ok) else float(s[0] + 1e-9)


def variants(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], held: list[str], params: Any
) -> dict[str, Any]:
    """The before/after rules on one embedder's vectors."""
    from semflow.models.openset import evaluate_open_set, open_set_metrics
    from semflow.training.params import parse_params
    from semflow.training.stages.classifier import recipe

    t0 = time.perf_counter()
    after, curve = evaluate_open_set(x, y, held, recipe(params))
    # Before: the threshold on the top probability, chosen on validation with the train-only
    # model (as train_classifier did), applied to the model refitted on train + val.
    k = {n: ~np.isin(v, held) for n, v in y.items()}
    xt, yt, xv, yv = (
        x["train"][k["train"]],
        y["train"][k["train"]],
        x["val"][k["val"]],
        y["val"][k["val"]],
    )
    train_only = recipe(parse_params(params.raw(), {"classifier.refit_on_val": False}))
    res0 = train_only(xt, yt.tolist(), xv, yv.tolist())
    pv = res0.model.predict_proba(xv)
    thr = old_threshold(pv.max(1), res0.model.classes_[pv.argmax(1)] == yv, OLD_TARGET_PRECISION)
    final = recipe(params)(xt, yt.tolist(), xv, yv.tolist()).model
    pt = final.predict_proba(x["test"])
    kt = k["test"]
    correct = final.classes_[pt.argmax(1)][kt] == y["test"][kt]
    msp = pt.max(1)
    before = open_set_metrics(-msp[kt], correct, -msp[~kt], -thr)
    before["threshold"] = thr  # on the top probability
    return {
        "before": before,
        "after": after,
        "curve": curve[:: max(1, len(curve) // 20)],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=None, help="fine-tune epochs (params' else)")
    ap.add_argument("--base-embeddings", type=Path, default=None)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-finetune", action="store_true")
    args = ap.parse_args(argv)
    from sklearn.model_selection import train_test_split

    from semflow.config import SAMPLE_DIR, get_settings
    from semflow.embedding import resolve_embedder
    from semflow.models.openset import open_set_split
    from semflow.training.params import load_pipeline_params
    from semflow.training.stages.finetune import finetune_as

    params, s = load_pipeline_params(), get_settings()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="semflow-oos-"))
    tr = pd.read_csv(SAMPLE_DIR / "train.csv", dtype=str)
    te = pd.read_csv(SAMPLE_DIR / "test.csv", dtype=str)
    seed = params.base.seed
    i_tr, i_va = train_test_split(
        np.arange(len(tr)),
        test_size=params.prepare.val_size,
        stratify=tr["category"],
        random_state=seed,
    )
    ytr = tr["category"].to_numpy()
    y = {"train": ytr[i_tr], "val": ytr[i_va], "test": te["category"].to_numpy()}
    held = open_set_split(sorted(set(ytr)), params.evaluate.open_set.holdout_ratio, seed)
    seconds: dict[str, float] = {}

    def embed_all(emb: Any) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        xtr = emb.encode_all(tr["text"].tolist(), "embed train")
        xte = emb.encode_all(te["text"].tolist(), "embed test")
        seconds[f"embed {emb.version}"] = round(time.perf_counter() - t0, 1)
        return {"train": xtr[i_tr], "val": xtr[i_va], "test": xte}

    if args.base_embeddings:
        with np.load(args.base_embeddings, allow_pickle=True) as z:
            xb = {"train": z["train"][i_tr], "val": z["train"][i_va], "test": z["test"]}
    else:
        xb = embed_all(resolve_embedder(s, batch_size=128))
    out: dict = {
        "benchmark": "oos",
        "cpu_count": os.cpu_count(),
        "held_out": held,
        "in_scope_labels": len(set(ytr)) - len(held),
        "rule_after": params.classifier.model_dump(
            include={"oos_score", "oos_knn_k", "min_coverage"}
        ),
        "rule_before": {"score": "probability", "target_precision": OLD_TARGET_PRECISION},
        "frozen": variants(xb, y, held, params),
    }
    print(json.dumps({"frozen": out["frozen"]["after"]}), file=sys.stderr, flush=True)
    if not args.skip_finetune:
        f = params.finetune
        epochs = args.epochs or f.epochs
        keep = ~np.isin(y["train"], held)
        t0 = time.perf_counter()
        res = finetune_as(
            f,
            s.base_embedder_dir,
            tr["text"].to_numpy()[i_tr][keep].tolist(),
            y["train"][keep].tolist(),
            work / "embedder",
            seed=seed,
            epochs=epochs,
        )
        seconds["finetune"] = round(time.perf_counter() - t0, 1)
        tuned = resolve_embedder(s, model_dir=res.output_dir, name="oos-inscope", batch_size=128)
        out["finetune"] = {"epochs": epochs, "examples": res.examples, "loss": f.loss}
        out["finetuned"] = variants(embed_all(tuned), y, held, params)
    out["seconds"] = seconds
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
