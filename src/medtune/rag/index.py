"""A retrieval index on disk: BM25 (bm25s) and dense vectors (usearch HNSW) over the same passages.

Layout of an index folder:
    manifest.json    embedding model, backend, dimension, counts, chunking, build time, threshold
    passages.jsonl   one passage per line; line i is document i in both indexes
    bm25/            bm25s's own files, loaded memory-mapped
    dense.usearch    the HNSW graph with half-precision vectors, opened memory-mapped (view)
    questions.usearch  the same for the stored questions of QA passages (key = passage), when there are any:
                     a consumer question is matched to the questions a passage answers as well as to its text
The folder is built in a temporary sibling and renamed into place, so a crash never leaves a
half-built index; a rebuild replaces the old one only once it is complete.

Queries must be embedded by the index's own model and backend: `Index.embedder()` loads it, and
`Index.check_embedder` refuses another one, naming both.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import medtune
from medtune.io import check_replaceable, replace_dir_atomic, write_atomic, write_json
from medtune.rag.embedder import DEFAULT_EMBEDDER, Embedder
from medtune.data.passages import Passage
from medtune.rag.passages import PassageReport

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"  # written last into an index folder: what it holds and how it was built
# Non-medical questions for calibrating the weak-retrieval threshold (see `calibrate_threshold`).
OFF_TOPIC = (
    "What is the capital of France?", "Best pizza recipe", "How do I change a flat tyre?",
    "Who won the world cup in 2018?", "How to learn to play the guitar", "What time is it in Tokyo?",
    "Cheap flights to Barcelona in summer", "How do I reset my router password?", "Recommend a good science fiction novel",
    "What is the speed of light?", "How to bake sourdough bread at home", "Which programming language should I learn first?",
    "How tall is the Eiffel Tower?", "Best way to clean a leather sofa", "How do solar panels work?",
    "What are the rules of chess?", "How to write a cover letter for a job", "Where can I watch the football match tonight?",
    "How do I grow tomatoes on a balcony?", "What is the stock price of Apple?", "How many planets are in the solar system?",
    "Translate hello into Japanese", "How to fix a leaking kitchen tap", "What is the plot of Hamlet?",
    "How long does it take to drive from Madrid to Lisbon?", "Best hiking trails in the Alps", "How do I knit a scarf?",
    "What's the weather forecast for tomorrow?", "How to train a puppy to sit", "Who painted the Mona Lisa?",
    "How do I make cold brew coffee?", "What is a good name for a cat?", "How to paint a bedroom wall",
    "When was the Roman Empire founded?", "How to set up a fish tank", "Which car has the best fuel economy?",
)
_IN_DOMAIN_TEMPLATES = ("what is {t}", "what are the signs of {t}", "how is {t} treated", "what causes {t}", "tell me about {t}")


class IndexMismatch(ValueError):
    """Query vectors from a different embedding model or backend than the index's."""


def _stopwords(langs: Sequence[str]) -> list[str]:
    from bm25s import stopwords as sw

    known = {"en": sw.STOPWORDS_EN, "es": sw.STOPWORDS_SPANISH, "pt": sw.STOPWORDS_PORTUGUESE}
    return sorted({w for lang in langs for w in known.get(lang, ())})


def tokenize(texts: list[str], stopwords: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)


def calibrate_threshold(passages: list[Passage], vectors: np.ndarray, embedder: Embedder, *, sample: int = 200, seed: int = 0) -> dict[str, Any]:
    """A top-cosine cut between in-domain questions and off-topic ones, from the index's own passages.

    In-domain queries are consumer-style questions about a sample of passage titles ("what
    causes {title}"), or, for untitled passages, a 6-word window of their text; off-topic ones
    are `OFF_TOPIC`. Each query's best cosine against the index is computed exactly, and the
    threshold is the cut with the best balanced accuracy (midway between the neighbouring scores).
    """
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(passages), size=min(sample, len(passages)), replace=False)
    queries = []
    for n, i in enumerate(picks):
        p = passages[i]
        if p.title:
            queries.append(_IN_DOMAIN_TEMPLATES[n % len(_IN_DOMAIN_TEMPLATES)].format(t=p.title.lower()))
        else:
            words = p.text.split()
            start = int(rng.integers(0, max(1, len(words) - 6)))
            queries.append(" ".join(words[start : start + 6]))
    top = (embedder.encode(queries + list(OFF_TOPIC)) @ vectors.T).max(axis=1)
    inside, outside = top[: len(queries)], top[len(queries) :]
    cuts = np.unique(np.concatenate([inside, outside]))
    best, threshold = -1.0, float(cuts[0])
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        cut = (lo + hi) / 2
        acc = ((inside >= cut).mean() + (outside < cut).mean()) / 2
        if acc > best:
            best, threshold = float(acc), float(cut)
    return {
        "threshold": round(threshold, 4),
        "signal": "top dense cosine",
        "balanced_accuracy": round(best, 4),
        "in_domain": {"n": len(inside), "p5": round(float(np.percentile(inside, 5)), 4), "median": round(float(np.median(inside)), 4)},
        "off_topic": {"n": len(outside), "p95": round(float(np.percentile(outside, 95)), 4), "median": round(float(np.median(outside)), 4)},
    }


def build_index(
    passages: list[Passage],
    out_dir: str | os.PathLike,
    *,
    embedder: str | Embedder = DEFAULT_EMBEDDER,
    backend: str = "onnx-int8",
    max_seq_length: int = 128,
    report: PassageReport | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Embed and index `passages` into `out_dir` (replacing an earlier index there once done; anything else
    there only with `force`); returns the folder."""
    import bm25s

    if not passages:
        raise ValueError("no passages to index")
    ids = [p.id for p in passages]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"passage ids must be unique; {dup!r} appears more than once")
    started = time.perf_counter()
    out = Path(out_dir)
    check_replaceable(out, MANIFEST, force)
    emb = embedder if isinstance(embedder, Embedder) else Embedder(embedder, backend, max_seq_length=max_seq_length)

    def build(staging: Path) -> None:
        texts = [p.text for p in passages]
        t0 = time.perf_counter()
        vectors = emb.encode(texts, progress=progress)
        embed_s = time.perf_counter() - t0

        langs = sorted({p.lang for p in passages})
        stopwords = _stopwords(langs)
        bm25 = bm25s.BM25()
        # BM25 and HNSW take seconds even for MedQuAD: embedding is the stage with a bar
        bm25.index(bm25s.tokenize(texts, stopwords=stopwords, show_progress=False), show_progress=False)
        bm25.save(staging / "bm25")

        hnsw = _hnsw(emb.dim)
        hnsw.add(np.arange(len(passages), dtype=np.uint64), vectors, log=False)
        hnsw.save(str(staging / "dense.usearch"))
        questions = _index_questions(passages, emb, staging / "questions.usearch", progress)

        write_atomic(staging / "passages.jsonl", "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in passages))
        manifest = {
            "format": FORMAT,
            "medtune_version": medtune.__version__,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "embedding": emb.describe(),
            "counts": {"passages": len(passages), "languages": {lang: sum(p.lang == lang for p in passages) for lang in langs}},
            "source": report.to_dict() if report else None,
            "chunking": {"chunk_words": report.chunk_words, "overlap": report.overlap} if report else None,
            "bm25": {"library": "bm25s", "stopwords": langs, "k1": bm25.k1, "b": bm25.b},
            "dense": {"library": "usearch", "metric": "ip", "dtype": "f16", "connectivity": 32, "expansion_search": 200},
            "questions": questions,
            "weak_retrieval": calibrate_threshold(passages, vectors, emb),
            "timings_s": {"embed": round(embed_s, 2), "total": None},
        }
        manifest["timings_s"]["total"] = round(time.perf_counter() - started, 2)
        write_json(staging / MANIFEST, manifest)

    replace_dir_atomic(out, build, marker=MANIFEST, force=force)
    log.info("indexed %d passages into %s in %.1f s", len(passages), out, time.perf_counter() - started)
    return out


def _hnsw(dim: int):
    from usearch.index import Index as HNSW

    # Connectivity and expansions above usearch's defaults: recall close to exact search
    # at these sizes, and a single query still takes a fraction of a millisecond.
    return HNSW(ndim=dim, metric="ip", dtype="f16", connectivity=32, expansion_add=200, expansion_search=200)


def _index_questions(passages: list[Passage], emb: Embedder, path: Path, progress: bool) -> dict[str, int] | None:
    """Embed each distinct stored question once and index it under every passage that answers it."""
    keys = [i for i, p in enumerate(passages) if p.question]
    if not keys:
        return None
    distinct = list(dict.fromkeys(passages[i].question for i in keys))
    position = {q: n for n, q in enumerate(distinct)}
    vectors = emb.encode(distinct, progress=progress)
    hnsw = _hnsw(emb.dim)
    hnsw.add(np.asarray(keys, dtype=np.uint64), vectors[[position[passages[i].question] for i in keys]], log=False)
    hnsw.save(str(path))
    return {"passages": len(keys), "distinct": len(distinct)}


@dataclass
class Index:
    path: Path
    manifest: dict[str, Any]
    passages: list[Passage]
    bm25: Any  # bm25s.BM25, memory-mapped
    dense: Any  # usearch Index, a read-only view of the file
    stopwords: list[str]
    questions: Any = None  # usearch Index of the stored questions (key = passage), or None
    _embedder: Embedder | None = None

    def __len__(self) -> int:
        return len(self.passages)

    @property
    def threshold(self) -> float:
        return float(self.manifest["weak_retrieval"]["threshold"])

    def embedder(self) -> Embedder:
        """The index's own embedding model and backend, loaded on first use."""
        if self._embedder is None:
            e = self.manifest["embedding"]
            self._embedder = Embedder(e["model"], e["backend"], max_seq_length=e["max_seq_length"])
        return self._embedder

    def check_embedder(self, embedder: Embedder) -> None:
        want = self.manifest["embedding"]
        got = embedder.describe()
        if (got["model"], got["backend"], got["dim"]) != (want["model"], want["backend"], want["dim"]):
            raise IndexMismatch(
                f"{self.path} was embedded with {want['model']} ({want['backend']}, dim {want['dim']}); queries embedded "
                f"with {got['model']} ({got['backend']}, dim {got['dim']}) cannot be compared with it. Use the index's "
                f"model, or rebuild the index with the other one."
            )

    def bm25_scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for `query` (zeros when no query word is in the index)."""
        tokens = [t for t in tokenize([query], self.stopwords)[0] if t in self.bm25.vocab_dict]
        if not tokens:
            return np.zeros(len(self.passages), dtype=np.float32)
        return self.bm25.get_scores(tokens)

    def dense_search(self, vectors: np.ndarray, k: int, *, questions: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(passage indices, cosines), best first, for each query vector; -1 pads short results. With `questions`,
        the cosines are with the passages' stored questions (an empty result when the index has none)."""
        vectors = np.atleast_2d(vectors).astype(np.float32)
        graph = self.questions if questions else self.dense
        k = min(k, len(graph) if graph is not None else 0)
        keys = np.full((len(vectors), k), -1, dtype=np.int64)
        cos = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        if k == 0:
            return keys, cos
        matches = graph.search(vectors, k)
        for row, m in enumerate([matches] if len(vectors) == 1 else matches):  # one query gives Matches, not a batch
            n = len(m.keys)
            keys[row, :n], cos[row, :n] = m.keys, 1.0 - m.distances  # ip distance = 1 - dot
        return keys, cos

    def vectors(self, indices, *, questions: bool = False) -> np.ndarray:
        """The passages' vectors (with `questions`: their stored questions' vectors), one row each."""
        found = (self.questions if questions else self.dense).get(np.asarray(indices, dtype=np.uint64), dtype=np.float32)
        return np.stack(found) if isinstance(found, tuple) else np.atleast_2d(found)

    def question_cosines(self, indices: list[int], query_vector: np.ndarray) -> dict[int, float]:
        """Passage index -> cosine between the query and the question it answers, for those that have one."""
        with_question = [i for i in indices if self.passages[i].question] if self.questions is not None else []
        if not with_question:
            return {}
        return dict(zip(with_question, (self.vectors(with_question, questions=True) @ query_vector).tolist()))


def load_index(path: str | os.PathLike) -> Index:
    """Open an index folder; the BM25 matrix and the HNSW graph are memory-mapped, not read."""
    import bm25s
    from usearch.index import Index as HNSW

    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{path}: not a medtune retrieval index (no manifest.json); build one with build_index")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: index format {manifest.get('format')!r}, this medtune reads format {FORMAT}; rebuild it")
    with (path / "passages.jsonl").open(encoding="utf-8") as fh:
        passages = [Passage(**json.loads(line)) for line in fh]
    bm25 = bm25s.BM25.load(path / "bm25", mmap=True)
    dense = HNSW.restore(str(path / "dense.usearch"), view=True)
    questions = HNSW.restore(str(path / "questions.usearch"), view=True) if manifest.get("questions") else None
    for graph in (dense, questions):
        if graph is not None:
            graph.expansion_search = manifest["dense"]["expansion_search"]  # a search setting: not in the file
    if len(dense) != len(passages) or bm25.scores["num_docs"] != len(passages):
        raise ValueError(f"{path}: the index files disagree on the passage count; rebuild it")
    return Index(path, manifest, passages, bm25, dense, _stopwords(manifest["bm25"]["stopwords"]), questions)
