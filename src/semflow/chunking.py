"""Long texts as overlapping windows of the embedder's tokens: one index point per chunk.

The embedder reads at most its window (256 tokens for MiniLM, [CLS] and [SEP] included) and
drops the rest, so a longer text is split into chunks of at most `chunk_tokens` tokens (never
more than the window) that overlap by `chunk_overlap_tokens`: a sentence cut at one chunk's
end is whole in the next. Cuts fall between words (the word pieces of one word stay in one
chunk), so a chunk tokenises back into the tokens it was cut from. A text that fits is one
chunk, itself unchanged: short documents are indexed exactly as before chunking.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semflow.config import Settings


@dataclass(frozen=True)
class Chunker:
    """Splits texts with one tokenizer; `size`: tokens of text per chunk (special tokens not
    counted), `overlap`: tokens two neighbouring chunks share."""

    tokenizer: Any  # a `tokenizers.Tokenizer`, without truncation or padding
    size: int
    overlap: int

    def split(self, text: str) -> list[str]:
        """The chunks of one text, in order."""
        return self.split_many([text])[0]

    def split_many(self, texts: Sequence[str]) -> list[list[str]]:
        """The chunks of each text (one batched tokenizer call for all the long ones)."""
        out = [[t] for t in texts]
        # A token covers at least one byte of the text, so a text of at most `size` UTF-8
        # bytes fits without being tokenised (most short documents: no cost at all).
        long = [
            i for i, t in enumerate(texts) if len(t.encode("utf-8", "surrogatepass")) > self.size
        ]
        encodings = self.tokenizer.encode_batch([texts[i] for i in long], add_special_tokens=False)
        for i, e in zip(long, encodings, strict=True):
            out[i] = self._cut(texts[i], e.offsets, e.word_ids)
        return out

    def _cut(self, text: str, offsets: list[tuple[int, int]], words: list[int | None]) -> list[str]:
        n = len(offsets)
        if n <= self.size:
            return [text]
        chunks = []
        start = 0
        while True:
            end = min(start + self.size, n)
            if end < n:
                end = _word_start(words, end, start)
            chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
            if end == n:
                return chunks
            start = _word_start(words, max(end - self.overlap, start + 1), start)


def _word_start(words: list[int | None], i: int, floor: int) -> int:
    """Token `i` moved back to the first piece of its word, unless that reaches `floor` (a
    word longer than a whole chunk is cut inside)."""
    j = i
    while j > floor and words[j] is not None and words[j] == words[j - 1]:
        j -= 1
    return j if j > floor else i


def load_chunker(model_dir: Path, chunk_tokens: int, overlap: int) -> Chunker:
    """The chunker of the sentence-transformers model in `model_dir`: its fast tokenizer, and
    chunks of `chunk_tokens` tokens capped at the model's window."""
    return _load(Path(model_dir), chunk_tokens, overlap)


@functools.lru_cache(maxsize=8)
def _load(model_dir: Path, chunk_tokens: int, overlap: int) -> Chunker:
    from tokenizers import Tokenizer

    from semflow.onnx_backend import transformer_dir

    tdir = transformer_dir(model_dir) if (model_dir / "modules.json").is_file() else model_dir
    tok = Tokenizer.from_file(str(tdir / "tokenizer.json"))
    # tokenizer.json comes with truncation at 128 and padding: chunks need every token
    tok.no_truncation()
    tok.no_padding()
    special = len(tok.encode("", add_special_tokens=True).ids)  # [CLS] and [SEP]
    size = min(chunk_tokens, model_window(model_dir, tdir)) - special
    return Chunker(tok, size, min(overlap, size // 2))


def model_window(model_dir: Path, tdir: Path) -> int:
    """The most tokens the model reads (special tokens included): sentence-transformers'
    `max_seq_length`, else the tokenizer's `model_max_length`, else 512."""
    for path, key in (
        (model_dir / "sentence_bert_config.json", "max_seq_length"),
        (tdir / "sentence_bert_config.json", "max_seq_length"),
        (tdir / "tokenizer_config.json", "model_max_length"),
    ):
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int) and 0 < value < 100_000:  # HF writes 1e30 for "none"
                return value
    return 512


def chunker_for(settings: Settings, embedder_version: str) -> Chunker:
    """The chunker for documents embedded with `embedder_version`: its installed weights'
    tokenizer, else the configured base model's (where `resolve_embedder` finds weights)."""
    from semflow.embedding import installed_embedder_dir

    model_dir = installed_embedder_dir(settings, embedder_version) or settings.base_embedder_dir
    return load_chunker(model_dir, settings.chunk_tokens, settings.chunk_overlap_tokens)
