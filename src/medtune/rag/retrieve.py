"""Search an index: BM25, dense, or both fused, then optionally re-ranked.

Hybrid takes the top `depth` passages of each retriever and, by default, ranks their union by a
convex combination: alpha * BM25 (min-max normalized over the candidates) + (1 - alpha) * cosine.
Reciprocal rank fusion (rrf_k) is the other choice. On consumer-style questions BM25 is far weaker
than dense retrieval, so rank fusion drags dense down towards it; a small BM25 share added to the
cosine instead breaks dense's near-ties with exact word matches (drug and disease names) and beats
both. The defaults were tuned on the dev half of the MedQuAD self-test and checked on its test half
(benchmarks/retrieval_latency.py).

Question matching (after Ben Abacha & Demner-Fushman's question entailment for consumer questions): when
the index holds the stored questions of QA passages, each passage's dense score is
(1 - question_weight) * cosine(query, passage) + question_weight * cosine(query, its question), and
the best-matching questions bring their passages into the candidates. Long queries are embedded in
sentence windows (see `Embedder.encode_queries`), so a question asked after a long story still counts.

Every hit carries its scores whatever the mode, so a caller can judge it; `Retriever.confident`
compares the best passage cosine with the threshold calibrated when the index was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from medtune.rag.embedder import Embedder
from medtune.rag.index import Index
from medtune.rag.reranker import load_reranker

Mode = Literal["hybrid", "bm25", "dense"]
MODES = ("hybrid", "bm25", "dense")


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    text: str
    title: str
    url: str
    source: str
    lang: str
    score: float  # what the mode ranks by: fused score, BM25 score or cosine
    bm25_score: float
    dense_score: float  # cosine between query and passage
    rank: int  # 1-based, in the returned order
    question_score: float | None = None  # cosine between query and the passage's stored question
    bm25_rank: int | None = None  # 1-based within the BM25 candidates; None when not among them
    dense_rank: int | None = None
    rerank_score: float | None = None  # cross-encoder score when a re-ranker ordered the hits


@dataclass(frozen=True)
class Fusion:
    method: Literal["convex", "rrf"] = "convex"
    alpha: float = 0.05  # convex: the BM25 share
    rrf_k: float = 60.0  # rrf: 1 / (rrf_k + rank) per list
    depth: int = 10  # candidates taken from each retriever
    question_weight: float = 0.75  # share of the query-question cosine in a QA passage's dense score (chosen on the self-test dev foci)


@dataclass
class Candidates:
    """One query's ranked candidates from each retriever (passage indices, best first)."""

    bm25: np.ndarray
    dense: np.ndarray
    bm25_scores: np.ndarray  # every passage's BM25 score
    query_vector: np.ndarray
    questions: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # passages whose stored
    # question is closest to the query, best first (none when the index holds no questions)

    def cosines(self, index: Index, depth: int) -> tuple[dict[int, float], dict[int, float]]:
        """Passage index -> cosine with the query, and -> cosine with its stored question (where it has one),
        for the top `depth` of every list."""
        pool = np.unique(np.concatenate([self.bm25[:depth], self.dense[:depth], self.questions[:depth]]))
        if not len(pool):
            return {}, {}
        return dict(zip(pool.tolist(), (index.vectors(pool) @ self.query_vector).tolist())), index.question_cosines(pool.tolist(), self.query_vector)


def mix(passage: dict[int, float], question: dict[int, float], weight: float) -> dict[int, float]:
    """The dense score of each candidate: its passage cosine, blended with its question's where it has one."""
    return {i: (1 - weight) * c + weight * question[i] if i in question else c for i, c in passage.items()}


def fuse(c: Candidates, fusion: Fusion, cosine: dict[int, float]) -> list[tuple[int, float]]:
    """(passage index, fused score), best first; `cosine` (index -> dense score, mixed with the stored question's
    cosine where there is one) covers the candidates."""
    bm25, dense = c.bm25[: fusion.depth].tolist(), c.dense[: fusion.depth].tolist()
    pool = list(dict.fromkeys(dense + c.questions[: fusion.depth].tolist() + bm25))
    if fusion.method == "rrf":
        # The dense list in the order of the dense score, so that passages found by their stored question rank too.
        dense = sorted(dict.fromkeys(dense + c.questions[: fusion.depth].tolist()), key=lambda i: -cosine[i])[: fusion.depth]
        scores = dict.fromkeys(pool, 0.0)
        for ranked in (bm25, dense):
            for rank, i in enumerate(ranked, 1):
                scores[i] += 1.0 / (fusion.rrf_k + rank)
    else:
        raw = c.bm25_scores[pool]
        lo, span = raw.min(), raw.max() - raw.min()
        norm = (raw - lo) / span if span > 0 else np.zeros_like(raw)
        scores = {i: fusion.alpha * float(b) + (1 - fusion.alpha) * cosine[i] for i, b in zip(pool, norm)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], -cosine.get(kv[0], -1.0)))


class Retriever:
    def __init__(
        self,
        index: Index,
        mode: Mode = "hybrid",
        reranker=None,
        *,
        embedder: Embedder | None = None,
        fusion: Fusion = Fusion(),
        rerank_depth: int = 20,
    ):
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}; choose one of {', '.join(MODES)}")
        if embedder is not None:
            index.check_embedder(embedder)
        self.index, self.mode, self.fusion, self.rerank_depth = index, mode, fusion, rerank_depth
        self.embedder = embedder or index.embedder()
        self.reranker = load_reranker(reranker) if reranker is not None else None

    def candidates(self, queries: list[str], depth: int) -> list[Candidates]:
        vectors = self.embedder.encode_queries(queries)
        dense, _ = self.index.dense_search(vectors, depth)
        # question_weight 0 turns question matching off: no candidates from the stored questions either
        by_question, _ = self.index.dense_search(vectors, depth if self.fusion.question_weight > 0 else 0, questions=True)
        out = []
        for query, vec, ranked, asked in zip(queries, vectors, dense, by_question):
            scores = self.index.bm25_scores(query)
            top = np.argpartition(-scores, min(depth, len(scores) - 1))[:depth]
            top = top[scores[top] > 0]  # passages sharing no word with the query are not BM25 results
            top = top[np.argsort(-scores[top], kind="stable")]
            out.append(Candidates(top, ranked[ranked >= 0], scores, vec, asked[asked >= 0]))
        return out

    def _ranked(self, c: Candidates, k: int) -> list[Hit]:
        depth = max(k, self.fusion.depth, self.rerank_depth if self.reranker else 0)
        cosine, question = c.cosines(self.index, depth)
        dense_scores = mix(cosine, question, self.fusion.question_weight)
        if self.mode == "hybrid":
            order = fuse(c, self.fusion, dense_scores)
        elif self.mode == "bm25":
            order = [(i, float(c.bm25_scores[i])) for i in c.bm25.tolist()]
        else:
            pool = list(dict.fromkeys(c.dense[:depth].tolist() + c.questions[:depth].tolist()))
            order = sorted(((i, dense_scores[i]) for i in pool), key=lambda kv: -kv[1])
        bm25_rank = {i: r for r, i in enumerate(c.bm25[:depth].tolist(), 1)}
        dense_rank = {i: r for r, i in enumerate(c.dense[:depth].tolist(), 1)}
        hits = []
        for rank, (i, score) in enumerate(order[: max(k, self.rerank_depth if self.reranker else 0)], 1):
            p = self.index.passages[i]
            hits.append(Hit(id=p.id, text=p.text, title=p.title, url=p.url, source=p.source, lang=p.lang, score=float(score),
                            bm25_score=float(c.bm25_scores[i]), dense_score=float(cosine[i]), rank=rank,
                            bm25_rank=bm25_rank.get(i), dense_rank=dense_rank.get(i), question_score=question.get(i)))
        return hits

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: list[str], k: int = 5) -> list[list[Hit]]:
        """The top `k` hits for each query; queries are embedded together, which is faster than one by one."""
        depth = max(k, self.fusion.depth, self.rerank_depth if self.reranker else 0)
        results = [self._ranked(c, k) for c in self.candidates(queries, depth)]
        if self.reranker is not None:
            results = [self._rerank(q, hits, k) for q, hits in zip(queries, results)]
        return results

    def _rerank(self, query: str, hits: list[Hit], k: int) -> list[Hit]:
        if not hits:
            return hits
        scores = self.reranker.predict([(query, h.text) for h in hits])
        order = np.argsort(-scores, kind="stable")[:k]
        return [replace(hits[i], rank=r, rerank_score=float(scores[i])) for r, i in enumerate(order.tolist(), 1)]

    def confident(self, hits: list[Hit]) -> bool:
        """Whether the retrieval found something on topic: best cosine at or above the index's threshold."""
        return bool(hits) and max(h.dense_score for h in hits) >= self.index.threshold
