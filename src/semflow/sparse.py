"""Lexical (sparse) vectors: BM25 term weights over the embedder's own WordPiece tokens.

A document's vector holds, for each distinct token, BM25's saturated term frequency
`tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / AVG_LEN))`; a query's holds 1.0 per distinct
token. The inverse document frequency is not in either: the index multiplies it in at query
time (Qdrant's sparse `Modifier.IDF`), so it always reflects the points stored now and no
corpus statistics have to be kept or refreshed here.

English stop words (`STOPWORDS`) are dropped from documents and queries, as Lucene's English
analyzer and Qdrant's own BM25 (fastembed's `Qdrant/bm25`) drop theirs: their IDF is near its
floor, so they barely move a ranking, yet their posting lists are the index's longest and a
sparse search walks every query term's list (at 1M Banking77-like points, keeping them made
sparse search 2.6x slower at p50 and 2.2x at p99: benchmarks/stopwords.py).

The constants and the stop words are part of the vectors' format, not tuning knobs: they are
in the encoder's `version`, which a generation records. A generation built before stop words
were dropped keeps being written and searched with the encoder it was built with
(`LexicalEncoder.for_version`) until it is rebuilt (`semflow index rebuild`, or a full
refresh); any other change needs a rebuild too.

Each tenant has its own term space: in a generation whose metadata maps tenants to spaces
(`sparse_tenant_spaces`, numbered in order of a tenant's first document), tenant T's token t
is stored at sparse index `space(T) * vocab_size + t`. The index counts document frequencies
per sparse index, so the IDF of a tenant's search counts its own documents only, and another
tenant's words never move its scores or its ranking (in one shared space, a tenant could read
from its own scores which words the others' documents hold).
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# BM25's usual constants (Robertson & Zaragoza, 2009).
K1 = 1.2
B = 0.75
# The length a document is "typical" at, in tokens. Fixed rather than measured on a corpus,
# so that incremental syncs keep writing vectors comparable to the ones already stored.
AVG_LEN = 32.0
# NLTK's English stop list less its contractions (whose pieces, "don" and "t", are here).
# Matched against whole WordPiece tokens after lower-casing; a word-piece ("##s") is kept.
_STOP_LIST = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
her hers herself it its itself they them their theirs themselves what which who whom this that
these those am is are was were be been being have has had having do does did doing a an the and
but if or because as until while of at by for with about against between into through during
before after above below to from up down in out on off over under again further then once here
there when where why how all any both each few more most other some such no nor not only own
same so than too very s t can will just don should now
"""
STOPWORDS = frozenset(_STOP_LIST.split())
# Sparse indices are unsigned 32-bit in Qdrant: how many term spaces of `vocab_size` fit.
_MAX_SPARSE_INDEX = 2**32 - 1


@dataclass(frozen=True)
class SparseTerms:
    """One sparse vector: token ids (ascending) and their weights."""

    indices: list[int]
    values: list[float]


class LexicalEncoder:
    """BM25 sparse vectors of texts, tokenised by the WordPiece tokenizer in `model_dir`.

    The tokenizer loads on first use. Special tokens, tokens without a letter or digit
    (punctuation) and, with `stopwords` (the default), `STOPWORDS` carry no term weight and
    are dropped; `stopwords=False` is the encoder of generations built before they were.
    """

    def __init__(self, model_dir: Path | str, stopwords: bool = True) -> None:
        self.tokenizer_file = Path(model_dir) / "tokenizer.json"
        if not self.tokenizer_file.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        self.stopwords = stopwords
        self._tokenizer: Any = None
        self._keep: np.ndarray | None = None
        self._version: str | None = None
        self._before: LexicalEncoder | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        """`wordpiece-bm25@<12 hex>` of the vocabulary, normaliser and the BM25 constants:
        equal exactly when two encoders write the same vectors (a fine-tuned copy of the
        embedder keeps its tokenizer, so it keeps the version)."""
        if self._version is None:
            st = self.tokenizer_file.stat()
            # a copy: the cached hasher is shared by every encoder of this file
            h = _spec_hash(str(self.tokenizer_file.resolve()), st.st_mtime_ns, st.st_size).copy()
            h.update(f"k1={K1} b={B} avg_len={AVG_LEN}".encode())
            if self.stopwords:  # without: the version of the encoder from before
                h.update(("stopwords=" + " ".join(sorted(STOPWORDS))).encode())
            self._version = f"wordpiece-bm25@{h.hexdigest()[:12]}"
        return self._version

    def for_version(self, version: str | None) -> LexicalEncoder | None:
        """The encoder that writes `version`'s vectors: this one, or the one of the same
        tokenizer from before stop words were dropped; None when neither does."""
        if version == self.version:
            return self
        if self.stopwords:
            if self._before is None:
                self._before = LexicalEncoder(self.tokenizer_file.parent, stopwords=False)
            if version == self._before.version:
                return self._before
        return None

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size: every token id is below it."""
        return len(self._load()[1])

    def _load(self) -> tuple[Any, np.ndarray]:
        if self._tokenizer is None or self._keep is None:
            with self._lock:
                if self._tokenizer is None:
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_file(str(self.tokenizer_file))
                    # The whole text counts, not only the model's first 128 tokens.
                    tok.no_truncation()
                    tok.no_padding()
                    keep = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=bool)
                    for token, i in tok.get_vocab(with_added_tokens=True).items():
                        keep[i] = any(c.isalnum() for c in token.removeprefix("##"))
                    for i in tok.get_added_tokens_decoder():
                        keep[i] = False  # [CLS], [SEP], [PAD], [UNK], [MASK]
                    if self.stopwords:
                        for word in STOPWORDS:
                            i = tok.token_to_id(word)
                            if i is not None:
                                keep[i] = False
                    self._keep, self._tokenizer = keep, tok
        return self._tokenizer, self._keep  # type: ignore[return-value]

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        tok, keep = self._load()
        # ids only: the offsets `encode_batch` also computes are not needed
        encodings = tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [[i for i in e.ids if keep[i]] for e in encodings]

    def documents(self, texts: Sequence[str]) -> list[SparseTerms]:
        """Document vectors: BM25-saturated term frequencies (see the module docstring)."""
        out = []
        for ids in self._token_ids(texts):
            counts = Counter(ids)
            norm = K1 * (1 - B + B * len(ids) / AVG_LEN)
            keys = sorted(counts)
            out.append(SparseTerms(keys, [counts[t] * (K1 + 1) / (counts[t] + norm) for t in keys]))
        return out

    def query(self, text: str) -> SparseTerms:
        """A query vector: 1.0 for each distinct token (the index multiplies in the IDF)."""
        keys = sorted(set(self._token_ids([text])[0]))
        return SparseTerms(keys, [1.0] * len(keys))


def max_tenant_spaces(vocab_size: int) -> int:
    """How many term spaces of `vocab_size` fit in a sparse index (140,717 for MiniLM's
    30,522 tokens)."""
    return _MAX_SPARSE_INDEX // vocab_size


def in_tenant_space(terms: SparseTerms, space: int, vocab_size: int) -> SparseTerms:
    """`terms` moved into term space `space` (the order of the indices is kept)."""
    base = space * vocab_size
    return SparseTerms([base + i for i in terms.indices], terms.values)


@functools.lru_cache(maxsize=8)
def _spec_hash(path: str, mtime_ns: int, size: int) -> Any:
    """sha256 over the tokenizer's normaliser, pre-tokeniser and model (its vocabulary), as
    sorted JSON: once per file and process (0.13 s for MiniLM's; a sync asks several
    encoders, both stop-word variants among them)."""
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for part in (spec.get("normalizer"), spec.get("pre_tokenizer"), spec.get("model")):
        h.update(json.dumps(part, sort_keys=True).encode())
    return h


@functools.lru_cache(maxsize=8)
def lexical_encoder(model_dir: Path | str) -> LexicalEncoder | None:
    """The shared encoder of the tokenizer in `model_dir`; None when the model has no fast
    tokenizer file (its index generations then hold dense vectors only)."""
    try:
        return LexicalEncoder(model_dir)
    except FileNotFoundError:
        return None
