"""Bring your own data: a generated dataset (not Banking77) in a PostgreSQL table of its own,
synced into a tenant named in sources.yaml, trained by `dvc repro` with params.yaml edits
only, registered in MLflow and answered by a served `/classify`."""

from __future__ import annotations

import json
import os
import sys
import uuid
from itertools import product
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from semflow.errors import SemflowError
from tests.helpers import PG_URL, run_tree
from tests.integration.test_pipeline import _dvc, _ran, _run, _tracked_copy
from tests.service.serve_helpers import ADMIN, serve

pytestmark = pytest.mark.integration

TENANT = "shop"
# Six support intents of a web shop: for each, templates x fillers give unique texts.
INTENTS: dict[str, tuple[list[str], list[str]]] = {
    "order_status": (
        [
            "where is my order of {}",
            "has my {} shipped yet",
            "tracking number for the {} I ordered",
            "when will the {} I bought arrive",
            "my {} order is late, what is its status",
            "is the {} order on its way",
        ],
        [
            "shoes",
            "a lamp",
            "the blender",
            "two chairs",
            "a jacket",
            "the kettle",
            "a desk",
            "a rug",
        ],
    ),
    "return_item": (
        [
            "I want to return the {}",
            "how do I send back a {}",
            "the {} does not fit, can I return it",
            "return label for my {}",
            "I would like a refund for the {} I returned",
            "can I exchange the {} for another one",
        ],
        ["shoes", "lamp", "blender", "chair", "jacket", "kettle", "desk", "rug"],
    ),
    "change_password": (
        [
            "I forgot my password on {}",
            "reset my password, I am locked out on {}",
            "how can I change my password from {}",
            "password reset email never came to my {}",
            "my login does not work on {}, new password please",
            "I need to set a new password using {}",
        ],
        [
            "my phone",
            "the app",
            "my laptop",
            "the website",
            "my tablet",
            "a new browser",
            "work",
            "my watch",
        ],
    ),
    "update_address": (
        [
            "please change my delivery address to {}",
            "I moved to {}, update my address",
            "ship my next orders to {} instead",
            "how do I edit my address, it is now {}",
            "wrong postcode, the right address is {}",
            "update the billing address to {}",
        ],
        [
            "Main Street 5",
            "Elm Road 12",
            "Oak Avenue 3",
            "Hill Lane 8",
            "Park Way 21",
            "Lake Drive 9",
            "Mill Court 4",
            "Rose Hill 17",
        ],
    ),
    "cancel_subscription": (
        [
            "cancel my {} subscription",
            "I do not want the {} plan any more",
            "how do I stop the {} membership",
            "end my {} subscription before it renews",
            "please unsubscribe me from the {} plan",
            "turn off the automatic renewal of {}",
        ],
        ["premium", "monthly", "yearly", "family", "student", "gold", "delivery pass", "music"],
    ),
    "invoice_request": (
        [
            "send me the invoice for my {} purchase",
            "I need a receipt for the {} order",
            "where can I download the invoice of {}",
            "my company needs a VAT invoice for the {}",
            "the invoice for {} has the wrong name",
            "can I get a copy of the bill for {}",
        ],
        [
            "March",
            "the lamp",
            "last week",
            "the jacket",
            "order 5521",
            "the desk",
            "my May",
            "the rug",
        ],
    ),
}
LABELS = sorted(INTENTS)
PER_LABEL = 40


def generate_dataset() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) with columns text, category: 40 training texts per label (the first five
    templates x 8 fillers), and the held-out sixth template as the test set. Deterministic."""
    train, test = [], []
    for label, (templates, fillers) in INTENTS.items():
        texts = [t.format(f) for t, f in product(templates[:5], fillers)]
        train += [{"text": t, "category": label} for t in texts]
        test += [{"text": templates[5].format(f), "category": label} for f in fillers]
    return pd.DataFrame(train), pd.DataFrame(test)


@pytest.fixture
def own_table(pg_engine):
    """The generated training set in a PostgreSQL table of this test's own, dropped after."""
    import sqlalchemy as sa

    name = f"semflow_own_{uuid.uuid4().hex[:10]}"
    train, _ = generate_dataset()
    rows = train.rename(columns={"category": "label"}).assign(
        id=[f"r{i}" for i in range(len(train))],
        updated_at=pd.Timestamp("2026-05-01", tz="UTC"),
    )
    rows.to_sql(name, pg_engine, index=False)
    try:
        yield name
    finally:
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))


def _sources_file(tmp: Path, table: str) -> Path:
    path = tmp / "sources.yaml"
    entry = {
        "name": "shop_tickets",
        "kind": "postgres",
        "url": PG_URL,
        "table": table,
        "tenant": TENANT,  # one tenant for every document of the source
        "mapping": {"id": "id", "text": "text", "labels": "label", "updated_at": "updated_at"},
    }
    path.write_text(yaml.safe_dump({"sources": [entry]}, sort_keys=False))
    return path


def _semflow(*args: str) -> str:
    exe = Path(sys.executable).with_name("semflow")
    proc = run_tree([str(exe), *args], env=os.environ, timeout=300)
    assert proc.returncode == 0, f"semflow {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr}"
    return proc.stdout


def test_snapshot_names_the_tenants_the_index_holds(
    semflow_home: Path, tmp_path: Path, own_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents synced into `shop` while params.yaml trains `bank`: the snapshot stops and
    says where the labelled documents are, instead of exporting an empty CSV."""
    from semflow.config import get_settings
    from semflow.training import Paths, load_pipeline_params, run_stage

    monkeypatch.setenv("SEMFLOW_SOURCES_FILE", str(_sources_file(tmp_path, own_table)))
    _semflow("sync", "--source", "shop_tickets")
    params = load_pipeline_params()  # the repo's: base.tenant is bank
    assert params.base.tenant != TENANT
    paths = Paths(tmp_path / "work")
    with pytest.raises(SemflowError) as err:
        run_stage("snapshot", paths, params, get_settings())
    msg = str(err.value)
    assert f"no labelled documents for tenant {params.base.tenant!r}" in msg, msg
    assert f"'{TENANT}' ({len(LABELS) * PER_LABEL} labelled of {len(LABELS) * PER_LABEL})" in msg
    assert not paths.snapshot.exists()


@pytest.mark.slow
def test_own_data_from_postgres_trained_by_dvc_repro_and_served(
    semflow_home: Path, tmp_path: Path, own_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from semflow import registry
    from semflow.config import get_settings

    train, test = generate_dataset()
    # 1. sources.yaml: the table, with the tenant its documents belong to.
    monkeypatch.setenv("SEMFLOW_SOURCES_FILE", str(_sources_file(tmp_path, own_table)))
    # 2. sync it into the index.
    synced = json.loads(_semflow("sync", "--source", "shop_tickets"))
    assert synced["counts"]["points"] == len(train), synced

    # 3. params.yaml: the reference set, label list, test set and tenant are the user's.
    repo = tmp_path / "repo"
    _tracked_copy(repo)
    own = repo / "data" / "own"
    own.mkdir(parents=True)
    train.to_csv(own / "reference.csv", index=False)
    test.to_csv(own / "test.csv", index=False)
    (own / "labels.json").write_text(json.dumps(LABELS))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["base"]["tenant"] = TENANT
    params["validate"]["reference"] = "data/own/reference.csv"
    params["validate"]["allowed_labels"] = "data/own/labels.json"
    params["prepare"]["external_test"] = "data/own/test.csv"
    params["finetune"]["enabled"] = False  # speed: the base embedder is enough here
    params["validate"]["drift"]["sample"] = 200
    params["ranker"].update(max_queries=40, step=0.1)
    params["register"]["floors"] = {"classifier.accuracy": 0.6, "search.ndcg@10": 0.5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "own data"]):
        _run(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd)

    # 4. dvc repro.
    out = _dvc(repo, "repro")
    assert _ran(out) >= {"snapshot", "validate", "prepare", "classifier", "register"}, out[-3000:]
    snap = pd.read_csv(repo / "data" / "snapshot" / "documents.csv")
    assert len(snap) == len(train) and set(snap["tenant"]) == {TENANT}
    assert sorted(snap["label"].unique()) == LABELS
    assert json.loads((repo / "metrics" / "prepare.json").read_text())["test"] == len(test)
    # dvc.yaml followed params.yaml: the user's files are the deps, Banking77 is not.
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    deps = {stage: {d["path"] for d in lock[stage]["deps"]} for stage in ("validate", "prepare")}
    assert {"data/own/reference.csv", "data/own/labels.json"} <= deps["validate"], deps
    assert "data/own/test.csv" in deps["prepare"], deps
    assert not any("banking77" in d for ds in deps.values() for d in ds), deps
    reg = json.loads((repo / "metrics" / "register.json").read_text())
    assert reg["promoted"] is True, reg

    s = get_settings()
    champion = registry.load_champion(s.tracking_uri, s.registered_model)
    assert champion is not None and champion.labels == LABELS

    # 5. serve it: /classify answers with the generated labels.
    with serve(semflow_home, tmp_path) as url:
        labels = httpx.get(f"{url}/labels", headers=ADMIN, timeout=30).json()
        assert labels["labels"] == LABELS
        queries = {
            "where is the parcel with my shoes": "order_status",
            "I need to send this jacket back": "return_item",
            "I can't remember my password": "change_password",
            "my new address is Birch Street 7": "update_address",
            "stop my premium subscription": "cancel_subscription",
            "please email me an invoice": "invoice_request",
        }
        r = httpx.post(
            f"{url}/classify",
            json={"texts": list(queries), "tenant": TENANT},
            headers=ADMIN,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == f"{s.registered_model}/{champion.registry_version}"
        got = [p["label"] for p in body["predictions"]]
        assert set(got) <= {*LABELS, "unknown"}, got
        right = sum(g == want for g, want in zip(got, queries.values(), strict=True))
        assert right >= len(queries) - 1, dict(zip(queries, got, strict=True))
