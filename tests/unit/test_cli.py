"""The `semflow` command line, run as a user would (subprocess), on a Banking77 slice."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from semflow.config import SAMPLE_DIR
from tests.helpers import run_tree

EXE = str(Path(sys.executable).with_name("semflow"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    sample = tmp / "bank.csv"
    pd.read_csv(SAMPLE_DIR / "train.csv").iloc[::12].to_csv(sample, index=False)  # ~830 rows
    (tmp / "sources.yaml").write_text(
        "sources:\n  - name: bank\n    kind: files\n"
        f"    path: {sample}\n"
        "    mapping: {id: '@row', text: text, labels: category, updated_at: null,"
        " tenant_value: bank, type_value: support_query}\n"
    )
    e = dict(
        os.environ, SEMFLOW_HOME=str(tmp / "home"), SEMFLOW_SOURCES_FILE=str(tmp / "sources.yaml")
    )
    return e


def run(env, *args):
    return run_tree([EXE, *args], env=env, timeout=600)


@pytest.mark.slow
def test_sync_then_search_returns_sensible_neighbours(env):
    r = run(env, "sync", "--source", "bank")
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["counts"]
    assert counts["indexed"] == counts["points"] > 800

    # neighbours by meaning: dense (the default, hybrid, trades some of it for exact words)
    r = run(
        env,
        "search",
        "I still have not received my new card",
        "--tenant",
        "bank",
        "--top-k",
        "5",
        "--mode",
        "dense",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    labels = Counter(x["labels"][0] for x in out["results"])
    assert len(out["results"]) == 5
    assert labels["card_arrival"] + labels["card_delivery_estimate"] >= 4, labels

    r = run(env, "search", "exchange rate for euros", "--filter", "labels=exchange_rate")
    assert r.returncode == 0
    assert {x["labels"][0] for x in json.loads(r.stdout)["results"]} == {"exchange_rate"}

    r = run(env, "search", "card", "--tenant", "someone-else")
    assert r.returncode == 0 and json.loads(r.stdout)["results"] == []

    # lexical search: every hit holds the word; the mode is reported
    r = run(env, "search", "Visa", "--mode", "sparse", "--top-k", "3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mode"] == "sparse" and len(out["results"]) == 3
    assert all("visa" in x["text"].lower() for x in out["results"])

    r = run(env, "sync", "--source", "bank")  # nothing changed
    assert json.loads(r.stdout)["counts"]["skipped"] == counts["indexed"]

    r = run(env, "index", "status")
    status = json.loads(r.stdout)
    assert status["points"] == counts["points"] and status["catalog"]["indexed"] == counts["points"]

    # a rebuild from the index's own points (no model): same points, same scores (documents
    # of equal score may swap places)
    r = run(env, "index", "rebuild")
    assert r.returncode == 0, r.stderr
    rebuilt = json.loads(r.stdout)
    assert rebuilt["points"] == counts["points"] and rebuilt["generation"] > rebuilt["replaced"]
    r = run(env, "search", "Visa", "--mode", "sparse", "--top-k", "3")
    again = json.loads(r.stdout)["results"]
    assert [round(x["score"], 4) for x in again] == [round(x["score"], 4) for x in out["results"]]
    assert all("visa" in x["text"].lower() for x in again)
    r = run(env, "index", "rebuild", "--if-outdated")  # the layout is this release's already
    step = json.loads(r.stdout)
    assert r.returncode == 0 and step["removed"] == [] and step["details"]["outdated"] == []
    r = run(env, "index", "status")
    assert json.loads(r.stdout)["live_generation"] == rebuilt["generation"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("sync", "--source", "nope"), 2, "unknown source 'nope'"),
        (("sync", "--since", "yesterday"), 2, "--since must be an ISO 8601 timestamp"),
        (("search", "   "), 2, "the query is empty"),
        (("search", "x", "--filter", "novalue"), 2, "--filter must look like field=value"),
        (("search", "x", "--mode", "fuzzy"), 2, "--mode must be one of dense, sparse, hybrid"),
        # click's own usage errors (typer vendors click, so they are not click.ClickException)
        (("serach", "card"), 2, "No such command 'serach'"),
        (("search", "card", "--top-k", "many"), 2, "Invalid value for '--top-k'"),
        (("search",), 2, "Missing argument"),
    ],
)
def test_bad_input_exits_with_a_sentence(env, args, code, message):
    r = run(env, *args)
    assert r.returncode == code
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_setting_exits_2(env):
    r = run(dict(env, SEMFLOW_EMBED_BATCH_SIZE="-3"), "settings")
    assert r.returncode == 2 and "SEMFLOW_EMBED_BATCH_SIZE" in r.stderr


def test_search_before_any_sync_says_so(tmp_path, env):
    r = run(dict(env, SEMFLOW_HOME=str(tmp_path)), "search", "card")
    assert r.returncode == 1 and "no index has been published" in r.stderr
    r = run(dict(env, SEMFLOW_HOME=str(tmp_path)), "index", "rebuild")
    assert r.returncode == 1 and "there is no live generation" in r.stderr
    assert "Traceback" not in r.stderr


def test_keys_new_prints_a_key_its_scoped_entry_accepts(capsys):
    import json

    from semflow.cli import main
    from semflow.serving.auth import KeyRing
    from semflow.serving.errors import Forbidden

    main(["keys", "new", "--tenant", "bank", "--tenant", "shop"])
    out = json.loads(capsys.readouterr().out)
    assert out["key"] not in out["entry"] and out["entry"].endswith(":bank|shop")
    principal = KeyRing([out["entry"]]).authenticate(f"Bearer {out['key']}")
    principal.check_tenant("bank")
    with pytest.raises(Forbidden):
        principal.check_tenant("other")
    with pytest.raises(SystemExit) as exc:
        main(["keys", "new", "--tenant", "../x"])
    assert exc.value.code == 2


KEY_HASH = hashlib.sha256(b"key-Secret9").hexdigest()


def test_settings_masks_credentials_inside_urls(env):
    secrets = {
        "SEMFLOW_CATALOG_URL": "postgresql+psycopg2://semflow:pg-Secret1@postgres:5432/semflow",
        "SEMFLOW_REDIS_URL": "redis://:redis-Secret2@redis:6379/1",
        "SEMFLOW_MLFLOW_TRACKING_URI": "https://alice:mlflow-Secret3@mlflow:5000/",
        "SEMFLOW_STORAGE_URL": "s3://bucket/data?access_key=AKIASECRET5&secret_key=s3-Secret6",
        "SEMFLOW_S3_ENDPOINT_URL": "http://minio:9000/?X-Amz-Signature=sig-Secret7#top",
        "SEMFLOW_QDRANT_URL": "https://token-Secret10@qdrant:6333/?api_key=qdrant-Secret4&timeout=5",
        "SEMFLOW_QDRANT_API_KEY": "qdrant-Secret8",
        "SEMFLOW_API_KEYS": f'["{KEY_HASH}:bank"]',
    }
    r = run(dict(env, **secrets), "settings")
    assert r.returncode == 0, r.stderr
    assert KEY_HASH not in r.stdout
    for n in range(1, 11):
        assert f"Secret{n}" not in r.stdout and "SECRET5" not in r.stdout, (n, r.stdout)
    out = json.loads(r.stdout)
    # what is not secret stays readable: user, host, port, database, other parameters
    assert out["catalog_url"] == "postgresql+psycopg2://semflow:***@postgres:5432/semflow"
    assert out["redis_url"] == "redis://:***@redis:6379/1"
    assert out["mlflow_tracking_uri"] == "https://alice:***@mlflow:5000/"
    # a lone userinfo may be a token
    assert out["qdrant_url"] == "https://***@qdrant:6333/?api_key=***&timeout=5"
    assert out["storage_url"] == "s3://bucket/data?access_key=***&secret_key=***"
    assert out["s3_endpoint_url"] == "http://minio:9000/?X-Amz-Signature=***#top"
    assert out["qdrant_api_key"] == "***" and out["api_keys"] == ["***"]
    assert out["auth_required"] is True and out["collection"] == "semflow"


def test_bad_setting_error_masks_the_password(env):
    r = run(dict(env, SEMFLOW_QDRANT_URL="ftp://bob:ftp-Secret1@qdrant"), "settings")
    assert r.returncode == 2 and "SEMFLOW_QDRANT_URL" in r.stderr
    assert "ftp-Secret1" not in r.stderr and "ftp://bob:***@qdrant" in r.stderr


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        (f'["{KEY_HASH}:"]', "empty tenant scope"),
        (f'["{KEY_HASH}:|"]', "empty tenant scope"),
        ('["not-a-digest"]', "sha256 hex digest"),
        ("not json", "SEMFLOW_API_KEYS: not valid JSON"),
    ],
)
def test_a_malformed_key_list_stops_with_a_sentence(env, keys: str, says: str):
    r = run(dict(env, SEMFLOW_API_KEYS=keys), "settings")
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
