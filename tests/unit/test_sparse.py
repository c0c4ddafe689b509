"""Lexical vectors: BM25 term weights over the embedder's own WordPiece tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semflow.config import get_settings
from semflow.sparse import (
    AVG_LEN,
    K1,
    STOPWORDS,
    B,
    LexicalEncoder,
    in_tenant_space,
    lexical_encoder,
    max_tenant_spaces,
)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return get_settings().base_embedder_dir


@pytest.fixture(scope="module")
def enc(model_dir: Path) -> LexicalEncoder:
    return LexicalEncoder(model_dir)


def _weights(enc: LexicalEncoder, text: str) -> dict[str, float]:
    tok, _ = enc._load()
    terms = enc.documents([text])[0]
    return {tok.id_to_token(i): v for i, v in zip(terms.indices, terms.values, strict=True)}


def test_document_weights_are_bm25_saturated_term_frequencies(enc: LexicalEncoder) -> None:
    w = _weights(enc, "Card card CARD, lost card in London?!")
    # lower-cased by the tokenizer's normaliser; punctuation, [CLS]/[SEP] and the stop word
    # "in" carry no weight
    assert set(w) == {"card", "lost", "london"}
    n = 6  # tokens kept: card x4, lost, london
    norm = K1 * (1 - B + B * n / AVG_LEN)
    assert w["card"] == pytest.approx(4 * (K1 + 1) / (4 + norm))
    assert w["lost"] == pytest.approx((K1 + 1) / (1 + norm))
    # more occurrences weigh more, but never more than k1 + 1
    assert w["lost"] < w["card"] < K1 + 1
    terms = enc.documents(["card lost"])[0]
    assert terms.indices == sorted(set(terms.indices))


def test_stop_words_are_dropped_from_documents_and_queries(enc: LexicalEncoder) -> None:
    tok, _ = enc._load()
    text = "Where is my card? I don't have it and the app says nothing"
    kept = {tok.id_to_token(i) for i in enc.query(text).indices}
    assert kept == {"card", "app", "says", "nothing"}  # "don't": don, ', t
    assert set(_weights(enc, text)) == kept
    # a word that starts with a stop word is not one
    assert {tok.id_to_token(i) for i in enc.query("thereafter the ones").indices} == {
        "thereafter",
        "ones",
    }
    assert enc.query("Where is it? How do I do that?").indices == []  # only stop words
    assert {"the", "my", "i", "how", "not", "don", "t"} <= STOPWORDS


def test_generations_from_before_stop_words_keep_their_encoder(
    enc: LexicalEncoder, model_dir: Path
) -> None:
    """An index built before stop words were dropped recorded the encoder that kept them
    (this version): it is still written and searched with that one, until a full refresh."""
    before = enc.for_version("wordpiece-bm25@348123f6cd27")
    assert before is not None and not before.stopwords and before is not enc
    assert before.version == LexicalEncoder(model_dir, stopwords=False).version
    assert enc.for_version(enc.version) is enc and enc.version != before.version
    assert enc.for_version("wordpiece-bm25@000000000000") is None
    assert before.for_version(enc.version) is None  # the old one does not know the new
    tok, _ = before._load()
    assert {tok.id_to_token(i) for i in before.query("where is my card").indices} == {
        "where",
        "is",
        "my",
        "card",
    }


def test_longer_documents_weigh_a_term_less(enc: LexicalEncoder) -> None:
    short = _weights(enc, "card please")["card"]
    long = _weights(enc, "card " + "please " * 60)["card"]
    assert long < short


def test_the_whole_text_counts_not_only_the_models_window(enc: LexicalEncoder) -> None:
    # the model reads 128 tokens; a term far past them is still in the lexical vector
    w = _weights(enc, "please " * 300 + "london")
    assert "london" in w


def test_query_is_one_per_distinct_token_and_rare_words_split(enc: LexicalEncoder) -> None:
    q = enc.query("Quorbel quorbel KX4-77Q9 ???")
    tok, _ = enc._load()
    assert q.values == [1.0] * len(q.indices) and q.indices == sorted(set(q.indices))
    tokens = {tok.id_to_token(i) for i in q.indices}
    # an unknown name or code becomes WordPiece pieces, which is what it is matched by
    assert {"quo", "##rb", "##el", "77"} <= tokens and "-" not in tokens
    assert enc.query("?!").indices == []


def test_version_names_the_vocabulary_not_the_file(enc: LexicalEncoder, tmp_path: Path) -> None:
    """A fine-tuned copy saves its tokenizer again (other truncation settings): same version;
    another vocabulary: another version."""
    src = json.loads(enc.tokenizer_file.read_text())
    src["truncation"] = {"max_length": 256, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "tokenizer.json").write_text(json.dumps(src))
    assert LexicalEncoder(tmp_path / "copy").version == enc.version
    assert enc.version.startswith("wordpiece-bm25@") and len(enc.version) == 27
    src["model"]["vocab"]["semflowtoken"] = len(src["model"]["vocab"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "tokenizer.json").write_text(json.dumps(src))
    assert LexicalEncoder(tmp_path / "other").version != enc.version
    # The spec's hash is kept per process: a file rewritten in place with another vocabulary
    # gets that vocabulary's version, not the one kept for its path.
    (tmp_path / "copy" / "tokenizer.json").write_text(json.dumps(src))
    assert LexicalEncoder(tmp_path / "copy").version == LexicalEncoder(tmp_path / "other").version


def test_a_model_without_a_fast_tokenizer_has_no_encoder(model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(model_dir / "vocab.txt", tmp_path / "vocab.txt")
    assert lexical_encoder(tmp_path) is None
    assert lexical_encoder(model_dir) is lexical_encoder(model_dir)  # shared


def test_each_term_space_holds_the_whole_vocabulary_within_32_bits(enc: LexicalEncoder) -> None:
    vocab = enc.vocab_size
    assert vocab == 30522  # MiniLM's WordPiece vocabulary
    assert max_tenant_spaces(vocab) == 140717
    q = enc.query("lost card refund")
    last = in_tenant_space(q, max_tenant_spaces(vocab) - 1, vocab)
    assert max(last.indices) < 2**32  # Qdrant's sparse indices are unsigned 32-bit
    for space in (0, 1, 7, max_tenant_spaces(vocab) - 1):
        t = in_tenant_space(q, space, vocab)
        # each token keeps its id within the space, in order; the weights are untouched
        assert [i - space * vocab for i in t.indices] == q.indices
        assert t.indices == sorted(t.indices) and t.values == q.values
    # two spaces never share an index: the largest of one is below the smallest of the next
    assert in_tenant_space(q, 1, vocab).indices[-1] < in_tenant_space(q, 2, vocab).indices[0]
