"""The token splitter of long documents, with the packaged MiniLM's fast tokenizer."""

from __future__ import annotations

import itertools
import re
import uuid

import pytest

from semflow.chunking import load_chunker
from semflow.config import load_settings
from semflow.documents import NAMESPACE, Document, point_id
from semflow.errors import SettingsError
from tests.helpers import FACT, garden_prose, long_text


@pytest.fixture(scope="module")
def chunker():
    s = load_settings()
    return load_chunker(s.base_embedder_dir, s.chunk_tokens, s.chunk_overlap_tokens)


def _tokens(chunker, text: str) -> list[str]:
    return chunker.tokenizer.encode(text, add_special_tokens=False).tokens


def test_a_text_that_fits_is_one_chunk_unchanged(chunker):
    assert chunker.size == 254  # MiniLM's 256-token window less [CLS] and [SEP]
    for text in ["I lost my card", "  spaces kept  ", garden_prose(8)]:
        assert chunker.split(text) == [text]


def test_chunks_fill_the_window_overlap_and_cover_the_text(chunker):
    text = long_text(20_000)
    chunks = chunker.split(text)
    assert len(chunks) == 18
    for c in chunks:
        # what the model reads of each chunk: all of it, special tokens included
        assert len(chunker.tokenizer.encode(c).ids) <= 256
    assert text.startswith(chunks[0]) and text.endswith(chunks[-1])
    assert FACT in chunks[-1] and not any(FACT in c for c in chunks[:-1])
    pos = 0
    for prev, nxt in itertools.pairwise(chunks):
        start = text.index(nxt, pos)
        end = text.index(prev, pos) + len(prev)
        # the next chunk starts at least `overlap` tokens before this one ends
        assert start < end and len(_tokens(chunker, text[start:end])) >= chunker.overlap
        pos = start
    assert sum(len(_tokens(chunker, c)) for c in chunks) >= len(_tokens(chunker, text))


def test_cuts_fall_between_words(chunker):
    # long words the tokenizer splits into several pieces, never cut inside
    words = ["unbelievableness", "transatlanticism", "counterrevolutionaries", "card"]
    text = " ".join(words[i % 4] for i in range(1500))
    chunks = chunker.split(text)
    assert len(chunks) > 5
    for c in chunks:
        assert set(c.split()) <= set(words) and re.fullmatch(r"\w[\w ]*\w", c)


def test_splitting_is_deterministic_and_ids_are_stable(chunker):
    text = long_text(5_000)
    assert chunker.split(text) == chunker.split(text) == chunker.split_many([text, "x"])[0]
    # chunk 0 keeps the id a document had before chunking: older indexes stay valid
    assert point_id("src", "a") == str(uuid.uuid5(NAMESPACE, "src/a"))
    assert point_id("src", "a", 0) == Document("src", "a", "t").point_id
    ids = {point_id("src", "a", k) for k in range(20)}
    assert len(ids) == 20
    assert point_id("src", "a", 1) != point_id("src", "a/1", 0)  # no collisions across docs
    assert (
        point_id("src", "a", 3) == "8839922e-87b8-5516-be77-ab3bd858a8f8"
    )  # pinned: ids must never change


def test_chunk_size_is_capped_at_the_model_window_and_checked():
    s = load_settings()
    assert load_chunker(s.base_embedder_dir, 10_000, 32).size == 254
    small = load_chunker(s.base_embedder_dir, 64, 8)
    assert (small.size, small.overlap) == (62, 8)
    assert all(len(small.tokenizer.encode(c).ids) <= 64 for c in small.split(long_text(3000)))
    with pytest.raises(SettingsError, match="SEMFLOW_CHUNK_OVERLAP_TOKENS"):
        load_settings(chunk_tokens=64, chunk_overlap_tokens=32)
