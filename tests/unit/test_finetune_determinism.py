"""Same inputs, same embedder version: a fine-tune rerun in a fresh process gives the same bits.

Two subprocesses (real MiniLM, a few seconds each) fine-tune the same texts with the same
arguments; the second starts with other ambient settings, the kind a shell, an Airflow worker
or a container gives: OMP_NUM_THREADS/MKL_NUM_THREADS=1 (torch's default thread count, and
with it the summation order of the backward pass) and another PYTHONHASHSEED.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """
import json, sys
from pathlib import Path
from semflow.config import load_settings
from semflow.embedding import embedder_version
from semflow.models.finetune import finetune

texts, labels, kwargs = json.loads(sys.argv[1])
out = Path(sys.argv[2])
finetune(load_settings().base_embedder_dir, texts, labels, out, **kwargs)
print(embedder_version(out, "ft"))
"""

_DATA = {
    "card": ["my card was declined", "card payment refused", "the shop refused my card"],
    "topup": ["how do I top up", "add money to my account", "my top up did not arrive"],
    "pin": ["I forgot my PIN", "change my PIN number", "how to reset the PIN"],
}


def _run(out: Path, env: dict[str, str]) -> str:
    """The embedder version of a fine-tune in a fresh process with `env` added."""
    texts = [t for ts in _DATA.values() for t in ts]
    labels = [lab for lab, ts in _DATA.items() for _ in ts]
    kwargs = {"loss": "proxy", "epochs": 2, "batch_size": 4, "lr": 2e-4, "seed": 13}
    arg = json.dumps([texts, labels, kwargs])
    base = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, arg, str(out)],
        env={**base, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_finetune_rerun_gives_the_same_embedder_version(tmp_path: Path) -> None:
    from semflow.config import load_settings
    from semflow.embedding import embedder_version

    first = _run(tmp_path / "a", {"PYTHONHASHSEED": "1"})
    second = _run(
        tmp_path / "b", {"PYTHONHASHSEED": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    )
    assert first == second
    # It trained: the weights are not the base model's.
    assert first != embedder_version(load_settings().base_embedder_dir, "ft")
