"""The prediction log: every served classification, one JSON line, one file per UTC day.

Written by the service, read by `dags/collect_predictions.py`. Layout:
`<home>/predictions/YYYY-MM-DD.jsonl`, fields: text, label, score, model (`<registered model>/<registry version>`,
or the embedder version when no classifier is registered), time (ISO 8601 UTC), tenant,
request_id. Lines written before the rename name the model `model_version`; they still read.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime
from pathlib import Path

_lock = threading.Lock()


@dataclass(frozen=True)
class Prediction:
    text: str
    label: str
    score: float
    model: str
    time: str
    tenant: str
    request_id: str = ""


def log_dir(home: Path) -> Path:
    return home / "predictions"


def day_file(home: Path, day: date) -> Path:
    return log_dir(home) / f"{day.isoformat()}.jsonl"


def append(home: Path, predictions: Iterable[Prediction]) -> None:
    """Append predictions to their day's file (one write per call, flushed)."""
    by_day: dict[str, list[str]] = {}
    for p in predictions:
        day = datetime.fromisoformat(p.time).date().isoformat()
        by_day.setdefault(day, []).append(json.dumps(asdict(p), ensure_ascii=False))
    if not by_day:
        return
    log_dir(home).mkdir(parents=True, exist_ok=True)
    with _lock:
        for day, lines in by_day.items():
            with (log_dir(home) / f"{day}.jsonl").open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


def read_day(home: Path, day: date) -> Iterator[Prediction]:
    """Read one day's predictions; a torn last line (crash mid-write) is skipped."""
    path = day_file(home, day)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                fields = json.loads(line)
                if "model_version" in fields:
                    fields["model"] = fields.pop("model_version")
                yield Prediction(**fields)
            except (json.JSONDecodeError, TypeError):
                continue
