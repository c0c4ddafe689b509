from __future__ import annotations

import numpy as np
import pytest

from semflow.embedding import (
    Embedder,
    check_embedder,
    embedder_version,
    format_version,
    parse_version,
    resolve_embedder,
)
from semflow.errors import ModelMismatchError
from tests.helpers import REDIS_URL


def test_model_version_is_name_plus_weight_hash(embedder):
    name, _, digest = embedder.version.partition("@")
    assert name == "all-MiniLM-L6-v2" and len(digest) == 12
    again = Embedder(embedder.model_dir, embedder.name)
    assert again.version == embedder.version


def test_encode_is_normalised_and_semantic(embedder):
    v = embedder.encode(["my card has not arrived", "card still not delivered", "exchange rate"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_resolve_uses_the_installed_embedder_of_the_live_generation(semflow_home, embedder):
    from semflow.config import load_settings
    from semflow.embedding import install_embedder, installed_embedder_dir

    s = load_settings()
    tuned = embedder_version(embedder.model_dir, "tuned")  # same weights, another name
    with pytest.raises(ValueError, match="does not hold"):
        install_embedder(s, embedder.model_dir, "tuned@000000000000")
    assert installed_embedder_dir(s, tuned) is None
    dest = install_embedder(s, embedder.model_dir, tuned)
    assert dest.parent == semflow_home / "embedders"
    picked = resolve_embedder(s, tuned)
    assert picked.version == tuned and picked.model_dir == dest
    # a live version with nothing installed falls back to the configured model
    assert resolve_embedder(s, "other@123456789abc").version == embedder.version
    # ... unless the caller needs exactly that embedder (a bundle)
    with pytest.raises(ModelMismatchError, match="trained with other@123456789abc, but"):
        resolve_embedder(s, "other@123456789abc", required_by="the bundle was trained with")
    # no version at all: the configured model
    assert resolve_embedder(s).version == embedder.version


def test_batch_embedders_do_not_fill_the_serving_cache(monkeypatch, semflow_home):
    """The sync and the CLI embed every document: they must not write them to Redis."""
    from semflow.app import Services
    from semflow.config import load_settings

    monkeypatch.setenv("SEMFLOW_REDIS_URL", REDIS_URL)
    s = load_settings()
    assert resolve_embedder(s).cache is None
    assert Services.from_settings(s).embedder("other@123456789abc").cache is None


def test_versions_have_one_spelling():
    v = format_version("all-MiniLM-L6-v2", "0123456789abcdef")
    assert v == "all-MiniLM-L6-v2@0123456789ab"
    assert parse_version(v) == ("all-MiniLM-L6-v2", "0123456789ab", "torch")
    # a name may itself hold "@"; the digest is what follows the last one
    assert parse_version("org@team/model@0123456789ab") == (
        "org@team/model",
        "0123456789ab",
        "torch",
    )
    # another backend than torch is marked after the digest (torch, the default, never is)
    for backend in ("onnx", "onnx-int8"):
        v = format_version("m+x", "0123456789abcdef", backend)
        assert v == f"m+x@0123456789ab+{backend}"
        assert parse_version(v) == ("m+x", "0123456789ab", backend)
    assert format_version("m", "0123456789ab", "torch") == "m@0123456789ab"
    with pytest.raises(ValueError, match="unknown embedder backend"):
        format_version("m", "0123456789ab", "tensorrt")
    bad_ones = ("", "no-digest", "name@", "@0123456789ab", "name@XYZ", "name@0123456789abc")
    markers = ("name@0123456789ab+torch", "name@0123456789ab+", "name@0123456789ab+int8")
    for bad in (*bad_ones, *markers, "name@0123456789ab+onnx+onnx"):
        with pytest.raises(ValueError, match="not an embedder version"):
            parse_version(bad)


def test_check_embedder_says_what_was_built_with_what():
    check_embedder("a@000000000000", "a@000000000000", "the plan was made for")
    with pytest.raises(ModelMismatchError) as err:
        check_embedder("b@111111111111", "a@000000000000", "the plan was made for")
    assert (
        str(err.value) == "the plan was made for a@000000000000, but the embedder is b@111111111111"
    )
