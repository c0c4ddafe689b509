"""Great-expectations 1.x suites and drift checks (see package docstring)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from semflow.errors import Verdict

log = logging.getLogger("semflow.validation")

REQUIRED_COLUMNS = ("doc_id", "text", "label")


class ValidationFailed(Verdict):
    """A critical data check failed; training must not go on."""

    def __init__(self, message: str, report: ValidationReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class CheckResult:
    suite: str
    name: str
    success: bool
    critical: bool
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class ValidationReport:
    success: bool
    rows: int
    checks: list[CheckResult]
    drift: dict[str, float]
    data_docs: str | None = None

    @property
    def critical_failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.critical and not c.success]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.critical and not c.success]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["critical_failures"] = [f"{c.suite}.{c.name}" for c in self.critical_failures]
        d["warnings"] = [f"{c.suite}.{c.name}" for c in self.warnings]
        return d

    def summary(self) -> str:
        bad = self.critical_failures
        if not bad:
            return f"validation passed on {self.rows} rows ({len(self.warnings)} warnings)"
        parts = []
        for c in bad:
            extra = {
                k: v for k, v in c.detail.items() if k in ("unexpected_count", "observed_value")
            }
            parts.append(f"{c.suite}.{c.name} {extra}" if extra else f"{c.suite}.{c.name}")
        return f"validation failed on {self.rows} rows: " + "; ".join(parts)


def _suites(
    df: pd.DataFrame, params: Mapping[str, Any], allowed_labels: Sequence[str] | None
) -> dict[str, tuple[pd.DataFrame, list[Any]]]:
    """(dataframe, expectations) per suite; `meta.critical` marks blocking expectations."""
    import great_expectations as gx

    E = gx.expectations
    crit = {"critical": True}
    max_dup = float(params.get("max_duplicate_ratio", 0.05))
    docs = [
        E.ExpectTableRowCountToBeBetween(min_value=int(params.get("min_rows", 1)), meta=crit),
        *[E.ExpectColumnToExist(column=c, meta=crit) for c in REQUIRED_COLUMNS],
        E.ExpectColumnValuesToNotBeNull(column="text", meta=crit),
        E.ExpectColumnValuesToNotBeNull(column="doc_id", meta=crit),
        E.ExpectColumnValuesToBeUnique(column="doc_id", meta=crit),
        E.ExpectColumnValueLengthsToBeBetween(
            column="text",
            min_value=int(params.get("min_text_chars", 1)),
            max_value=int(params.get("max_text_chars", 4000)),
            meta=crit,
        ),
        E.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="text", min_value=1.0 - max_dup, meta={"critical": False}
        ),
    ]
    training = [
        E.ExpectColumnValuesToNotBeNull(column="label", meta=crit),
    ]
    if allowed_labels is not None:
        training.append(
            E.ExpectColumnValuesToBeInSet(column="label", value_set=list(allowed_labels), meta=crit)
        )
    # Per-label counts are a derived table so that GX checks (and documents) the minimum.
    counts = (
        df["label"].dropna().value_counts().rename_axis("label").reset_index(name="count")
        if "label" in df.columns
        else pd.DataFrame({"label": [], "count": []})
    )
    balance = [
        E.ExpectTableRowCountToBeBetween(min_value=2, meta=crit),
        E.ExpectColumnMinToBeBetween(
            column="count", min_value=int(params.get("min_examples_per_label", 5)), meta=crit
        ),
    ]
    return {"documents": (df, docs), "training": (df, training), "label_balance": (counts, balance)}


def _run_gx(
    suites: dict[str, tuple[pd.DataFrame, list[Any]]], report_dir: Path | None, run_name: str
) -> tuple[list[CheckResult], str | None]:
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    run_id = RunIdentifier(run_name=run_name)
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="semflow-gx-") as tmp:
        ctx = gx.get_context(mode="file", project_root_dir=tmp)
        ds = ctx.data_sources.add_pandas("semflow")
        for name, (frame, expectations) in suites.items():
            bd = ds.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            suite = ctx.suites.add(gx.ExpectationSuite(name=name))
            for e in expectations:
                suite.add_expectation(e)
            vd = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=bd, suite=suite)
            )
            cp = ctx.checkpoints.add(
                gx.Checkpoint(
                    name=f"{name}_checkpoint",
                    validation_definitions=[vd],
                    actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                    result_format="SUMMARY",
                )
            )
            res = cp.run(batch_parameters={"dataframe": frame}, run_id=run_id)
            for vr in res.run_results.values():
                for r in vr.results:
                    cfg = r.expectation_config
                    kw = {
                        k: v
                        for k, v in cfg.kwargs.items()
                        if k in ("column", "min_value", "max_value")
                    }
                    detail = {
                        k: v
                        for k, v in (r.result or {}).items()
                        if k
                        in (
                            "observed_value",
                            "unexpected_count",
                            "unexpected_percent",
                            "element_count",
                        )
                    }
                    if r.exception_info and r.exception_info.get("raised_exception"):
                        detail["exception"] = str(r.exception_info.get("exception_message"))[:300]
                    label = cfg.type + (f"({kw['column']})" if "column" in kw else "")
                    results.append(
                        CheckResult(
                            name,
                            label,
                            bool(r.success),
                            bool((cfg.meta or {}).get("critical")),
                            detail,
                        )
                    )
        docs_path = None
        site = Path(tmp) / "gx" / "uncommitted" / "data_docs" / "local_site"
        if report_dir is not None and site.is_dir():
            dest = Path(report_dir) / "data_docs"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(site, dest)
            docs_path = str(dest / "index.html")
    return results, docs_path


# -- drift --------------------------------------------------------------------------
def label_tvd(a: pd.Series, b: pd.Series) -> float:
    """Total variation distance between two label distributions (0 same, 1 disjoint)."""
    pa = a.dropna().value_counts(normalize=True)
    pb = b.dropna().value_counts(normalize=True)
    keys = pa.index.union(pb.index)
    return float(
        0.5 * np.abs(pa.reindex(keys, fill_value=0) - pb.reindex(keys, fill_value=0)).sum()
    )


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (max CDF gap)."""
    x, y = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(x) == 0 or len(y) == 0:
        return 1.0
    grid = np.concatenate([x, y])
    cx = np.searchsorted(x, grid, side="right") / len(x)
    cy = np.searchsorted(y, grid, side="right") / len(y)
    return float(np.max(np.abs(cx - cy)))


def centroid_shift(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine between the mean embeddings of two samples."""
    ca, cb = np.asarray(a).mean(axis=0), np.asarray(b).mean(axis=0)
    denom = float(np.linalg.norm(ca) * np.linalg.norm(cb)) or 1.0
    # Rounded past float32 noise: identical samples must give exactly 0 on every machine, or
    # metrics/validate.json (a DVC dependency of `prepare`) changes between runs and clones.
    return round(max(0.0, 1.0 - float(ca @ cb) / denom), 6)


def drift_checks(
    df: pd.DataFrame,
    reference: pd.DataFrame,
    params: Mapping[str, Any],
    encode: Callable[[list[str]], np.ndarray] | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], list[CheckResult]]:
    """Drift values and their checks against thresholds in `params` (validate.drift)."""
    critical = bool(params.get("critical", False))
    cur_text = df["text"].dropna().astype(str)
    ref_text = reference["text"].dropna().astype(str)
    values = {
        "label_tvd": label_tvd(df.get("label", pd.Series(dtype=str)), reference["label"]),
        "length_ks": ks_statistic(cur_text.str.len(), ref_text.str.len()),
    }
    limits = {"label_tvd": params.get("label_tvd_max"), "length_ks": params.get("length_ks_max")}
    if encode is not None and len(cur_text) and len(ref_text):
        n = int(params.get("sample", 1000))
        a = cur_text.sample(min(n, len(cur_text)), random_state=seed).tolist()
        b = ref_text.sample(min(n, len(ref_text)), random_state=seed).tolist()
        values["centroid_cosine"] = centroid_shift(encode(a), encode(b))
        limits["centroid_cosine"] = params.get("centroid_cosine_max")
    checks = []
    for key, value in values.items():
        limit = limits.get(key)
        if limit is None:
            continue
        checks.append(
            CheckResult(
                "drift",
                key,
                value <= float(limit),
                critical,
                {"observed_value": value, "max": limit},
            )
        )
    return values, checks


def validate_dataset(
    df: pd.DataFrame,
    params: Mapping[str, Any],
    *,
    allowed_labels: Sequence[str] | None = None,
    reference: pd.DataFrame | None = None,
    encode: Callable[[list[str]], np.ndarray] | None = None,
    report_dir: Path | None = None,
    raise_on_failure: bool = True,
    seed: int = 0,
) -> ValidationReport:
    """Run the GX suites and drift checks; write `report_dir/validation.json` and data docs."""
    # Name the GX run after the extract (every suite's frame is it or derived from it), so the
    # data docs say which data each result is about.
    run_name = "data-" + hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()[:12]
    checks, docs = _run_gx(_suites(df, params, allowed_labels), report_dir, run_name)
    drift: dict[str, float] = {}
    usable = {"text", "label"} <= set(df.columns) and len(df) > 0
    if reference is not None and usable:
        drift, drift_results = drift_checks(df, reference, params.get("drift") or {}, encode, seed)
        checks.extend(drift_results)
    report = ValidationReport(
        success=not any(c.critical and not c.success for c in checks),
        rows=len(df),
        checks=checks,
        drift=drift,
        data_docs=docs,
    )
    if report_dir is not None:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        (Path(report_dir) / "validation.json").write_text(
            json.dumps(report.to_dict(), indent=2, default=str)
        )
    for w in report.warnings:
        log.warning("validation warning: %s.%s %s", w.suite, w.name, w.detail)
    if raise_on_failure and not report.success:
        raise ValidationFailed(report.summary(), report)
    return report
