"""Build the keyword-heavy search set `data/keyword_search/` from Banking77's train split.

    .venv/bin/python benchmarks/keyword_set.py [--check]

Deterministic (seeded); `--check` rebuilds in memory and fails if the shipped files differ.
Three kinds of queries, each naming something that only a few documents contain:

- `code`: a made-up reference code (e.g. `QX-4821`) added to 2 documents; the query asks
  about that code in a short banking sentence;
- `entity`: a made-up merchant name (e.g. `Vorquist`) added to 2 documents; the query asks
  about a charge or refund from it;
- `rare_name`: a proper name already in Banking77 (a place, a brand: `Heathrow`, `Netflix`)
  that occurs in 1 to 5 documents, written capitalised inside a sentence in at least half
  of them; the query is the name itself.

`edits.csv` (row, text) holds the changed train rows: the corpus is `train.csv` with them
replaced. `queries.csv` (query, kind, relevant) lists each query and the train rows
(space-separated) that are relevant: exactly those whose text contains the code, the name
or the word (whole word, any case).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "data" / "banking77" / "train.csv"
OUT = REPO / "data" / "keyword_search"
SEED = 77
PER_KIND = 60  # codes and entities; rare terms are capped at the same number
DOCS_PER_NAME = 2

_CODE_SUFFIX = ["({code})", "- reference {code}", "(ref {code})"]
_CODE_QUERY = [
    "what happened to transaction {code}",
    "payment {code} is still pending",
    "I need help with reference {code}",
]
_ENTITY_SUFFIX = ["It was at {name}.", "(merchant: {name})", "This was with {name}."]
_ENTITY_QUERY = ["charge from {name}", "refund from {name}", "my payment to {name}"]
_SYLLABLES = [
    "vor",
    "quist",
    "del",
    "mar",
    "zan",
    "tor",
    "bel",
    "quo",
    "rix",
    "nel",
    "fen",
    "dra",
    "lum",
    "sab",
    "kor",
    "vin",
    "tes",
    "gol",
]
_WORD = re.compile(r"[A-Za-z]+")
# A capitalised word that does not start a sentence.
_INNER_CAPITAL = re.compile(r"(?<![.?!]\s)(?<!^)\b([A-Z][a-z]{3,})\b")
# Capitalised for emphasis, not names.
_NOT_NAMES = {"accordingly", "economic", "unfortunately", "yesterdays"}


def _code(rng: np.random.Generator) -> str:
    letters = "".join(rng.choice(list("ABCDEFGHJKLMNPQRSTUVWXYZ"), 2))
    return f"{letters}-{int(rng.integers(1000, 10000))}"


def _name(rng: np.random.Generator) -> str:
    parts = rng.choice(_SYLLABLES, int(rng.integers(2, 4)), replace=False)
    return "".join(parts).capitalize()


def build() -> tuple[str, str]:
    """The contents of edits.csv and queries.csv."""
    with TRAIN.open(encoding="utf-8") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)]
    rng = np.random.default_rng(SEED)
    edited: dict[int, str] = {}
    queries: list[tuple[str, str, list[int]]] = []
    free = [int(i) for i in rng.permutation(len(texts))]

    def inject(kind: str, names: list[str], suffixes: list[str], templates: list[str]) -> None:
        for k, name in enumerate(names):
            rows = sorted(free.pop() for _ in range(DOCS_PER_NAME))
            for j, row in enumerate(rows):
                suffix = suffixes[(k + j) % len(suffixes)]
                edited[row] = f"{texts[row].rstrip()} {suffix.format(code=name, name=name)}"
            query = templates[k % len(templates)].format(code=name, name=name)
            queries.append((query, kind, rows))

    codes: list[str] = []
    while len(codes) < PER_KIND:
        c = _code(rng)
        if c not in codes:
            codes.append(c)
    vocab = {w.lower() for t in texts for w in _WORD.findall(t)}
    names: list[str] = []
    while len(names) < PER_KIND:
        n = _name(rng)
        if n not in names and n.lower() not in vocab:
            names.append(n)
    inject("code", codes, _CODE_SUFFIX, _CODE_QUERY)
    inject("entity", names, _ENTITY_SUFFIX, _ENTITY_QUERY)

    corpus = [edited.get(i, t) for i, t in enumerate(texts)]
    words = [{w.lower() for w in _WORD.findall(t)} for t in corpus]
    df = Counter(w for ws in words for w in ws)
    capital = Counter(m.group(1) for t in texts for m in _INNER_CAPITAL.finditer(t))
    spelled = {w.lower(): w for w, _ in capital.most_common()[::-1]}  # the most common spelling
    names_lower = {x.lower() for x in names}
    rare = sorted(
        w
        for w in spelled
        if 1 <= df[w] <= 5
        and sum(n for c, n in capital.items() if c.lower() == w) >= df[w] / 2
        and w not in _NOT_NAMES | names_lower
    )
    for w in rare[:PER_KIND]:
        queries.append((spelled[w], "rare_name", [i for i, ws in enumerate(words) if w in ws]))

    edits = io.StringIO()
    ew = csv.writer(edits, lineterminator="\n")
    ew.writerow(["row", "text"])
    ew.writerows(sorted(edited.items()))
    qs = io.StringIO()
    qw = csv.writer(qs, lineterminator="\n")
    qw.writerow(["query", "kind", "relevant"])
    qw.writerows((q, kind, " ".join(map(str, rows))) for q, kind, rows in queries)
    return edits.getvalue(), qs.getvalue()


def load(directory: Path = OUT) -> tuple[list[str], list[tuple[str, str, set[str]]]]:
    """(corpus texts, [(query, kind, relevant doc ids)]): train.csv with the edits applied;
    a document's id is its row number (as `banking77_source` names them)."""
    with TRAIN.open(encoding="utf-8") as fh:
        corpus = [r["text"] for r in csv.DictReader(fh)]
    with (directory / "edits.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            corpus[int(r["row"])] = r["text"]
    with (directory / "queries.csv").open(encoding="utf-8") as fh:
        queries = [(r["query"], r["kind"], set(r["relevant"].split())) for r in csv.DictReader(fh)]
    return corpus, queries


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the shipped files differ")
    args = ap.parse_args()
    edits, queries = build()
    files = {OUT / "edits.csv": edits, OUT / "queries.csv": queries}
    if args.check:
        stale = [str(p) for p, text in files.items() if p.read_text(encoding="utf-8") != text]
        if stale:
            print(
                f"out of date: {', '.join(stale)}; run benchmarks/keyword_set.py", file=sys.stderr
            )
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for p, text in files.items():
        p.write_text(text, encoding="utf-8")
    print(f"wrote {', '.join(str(p.relative_to(REPO)) for p in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
