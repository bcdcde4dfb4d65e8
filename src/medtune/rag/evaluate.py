"""Retrieval evaluation: TREC qrels + a queries JSONL in, MRR/MAP/nDCG/recall and latency out.

Metrics come from ir-measures (trec_eval's definitions, via pytrec_eval). Every judged query
counts: one with no results scores 0 rather than dropping out of the mean.

`build_medquad_selftest` makes a test set from MedQuAD itself with no hand labels: one
consumer-style paraphrase per (focus, question type), e.g. "how would i know if i have gout"
for a "symptoms" question about Gout, never the stored question's wording, judged relevant to
every passage of the pairs with that focus and type. It is split into dev and test halves by
focus, so fusion settings tuned on dev are reported on foci they never saw.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtune.logs import bar
from medtune.data.report import DataError
from medtune.data.tabular import parse_json
from medtune.io import write_atomic, write_json
from medtune.rag.index import Index
from medtune.rag.passages import CHUNK_WORDS, OVERLAP, passages_from_records
from medtune.rag.reranker import load_reranker
from medtune.rag.retrieve import Fusion, Retriever, fuse, mix
from medtune.records import QARecord

KS = (1, 5, 10)


def read_queries(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(id, query) pairs from a JSONL of `{"id", "query"}` rows."""
    path, out, seen = Path(path), [], set()
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = parse_json(line, path, line_no)
            if not isinstance(row, dict) or not str(row.get("id") or "").strip() or not str(row.get("query") or "").strip():
                raise DataError(path, 'expected an object with a non-empty "id" and "query"', line=line_no)
            qid = str(row["id"])
            if qid in seen:
                raise DataError(path, f"duplicate query id {qid!r}", line=line_no)
            seen.add(qid)
            out.append((qid, str(row["query"])))
    return out


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """TREC qrels (`qid 0 docid relevance` per line) as {qid: {docid: relevance}}."""
    path, qrels = Path(path), {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4 or not parts[3].lstrip("-").isdigit():
                raise DataError(path, f"expected 'qid 0 docid relevance', got {line.strip()!r}", line=line_no)
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return qrels


def score(qrels: dict[str, dict[str, int]], ranked: dict[str, list[str]], ks: Sequence[int] = KS) -> dict[str, float]:
    """Mean MRR@10, MAP@10, nDCG@10 and recall@k over every judged query (missing runs count 0)."""
    import ir_measures
    from ir_measures import AP, R, RR, nDCG

    measures = {"mrr@10": RR @ 10, "map@10": AP @ 10, "ndcg@10": nDCG @ 10} | {f"recall@{k}": R @ k for k in ks}
    # scores that fall with the rank, so trec_eval's tie-breaking by docid never reorders a run
    run = {q: {d: 1.0 / r for r, d in enumerate(docs, 1)} for q, docs in ranked.items() if q in qrels and docs}
    totals = dict.fromkeys(measures, 0.0)
    by_measure = {str(m): name for name, m in measures.items()}
    for metric in ir_measures.iter_calc(list(measures.values()), qrels, run):
        totals[by_measure[str(metric.measure)]] += metric.value
    return {name: round(total / max(len(qrels), 1), 4) for name, total in totals.items()}


def _run(retriever: Retriever, queries: list[tuple[str, str]], k: int, progress: bool) -> tuple[dict[str, list[str]], list[float]]:
    ranked, latency = {}, []
    for qid, query in bar(queries, desc=f"{retriever.mode} queries", disable=not progress):
        t0 = time.perf_counter()
        hits = retriever.search(query, k)
        latency.append((time.perf_counter() - t0) * 1000)
        ranked[qid] = [h.id for h in hits]
    return ranked, latency


def evaluate_retrieval(
    index: Index,
    queries: str | os.PathLike,
    qrels: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    modes: Sequence[str] = ("hybrid",),
    ks: Sequence[int] = KS,
    fusion: Fusion = Fusion(),
    reranker=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics and p50/p95 single-query latency per mode; writes report.json and report.md to `out_dir`."""
    pairs, judged = read_queries(queries), read_qrels(qrels)
    known = {p.id for p in index.passages}
    docs = {d for rel in judged.values() for d in rel}
    if docs and not docs & known:
        raise DataError(qrels, f"none of its {len(docs)} relevant passage ids are in the index {index.path}; "
                               "were both built from the same source with the same chunking?")
    judged = {q: rel for q, rel in judged.items() if q in dict(pairs)}
    report: dict[str, Any] = {
        "index": str(index.path), "queries": str(queries), "qrels": str(qrels), "judged_queries": len(judged),
        "unjudged_queries": len(pairs) - len(judged), "unknown_relevant_ids": len(docs - known),
        "embedding": index.manifest["embedding"], "fusion": vars(fusion), "modes": {},
    }
    reranker = load_reranker(reranker) if reranker is not None else None  # once, for every mode
    report["reranker"] = reranker.describe() if reranker is not None else None
    k = max(10, *ks)
    for mode in modes:
        retriever = Retriever(index, mode, reranker, embedder=index.embedder(), fusion=fusion)
        retriever.search("warm-up", 1)  # first call pays one-off costs (page faults, session set-up)
        ranked, latency = _run(retriever, pairs, k, progress)
        report["modes"][mode] = score(judged, ranked, ks) | {
            "latency_ms": {"p50": round(float(np.percentile(latency, 50)), 2), "p95": round(float(np.percentile(latency, 95)), 2)}
        }
    if out_dir is not None:
        write_json(Path(out_dir) / "report.json", report)
        write_atomic(Path(out_dir) / "report.md", to_markdown(report))
    return report


def to_markdown(report: dict[str, Any]) -> str:
    modes = report["modes"]
    metrics = [m for m in next(iter(modes.values())) if m != "latency_ms"]
    lines = [
        f"# Retrieval evaluation\n\nindex `{report['index']}` ({report['embedding']['model']}, {report['embedding']['backend']}); "
        f"{report['judged_queries']} judged queries from `{report['queries']}`.\n",
        "| mode | " + " | ".join(metrics) + " | p50 ms | p95 ms |",
        "|---|" + "---:|" * (len(metrics) + 2),
    ]
    for mode, row in modes.items():
        lines.append(f"| {mode} | " + " | ".join(f"{row[m]:.4f}" for m in metrics)
                     + f" | {row['latency_ms']['p50']:.1f} | {row['latency_ms']['p95']:.1f} |")
    return "\n".join(lines) + "\n"


def batch_retrieve(index: Index, queries_jsonl: str | os.PathLike, out_jsonl: str | os.PathLike, k: int = 10, *,
                   mode: str = "hybrid", batch_size: int = 64, progress: bool = True, reranker=None) -> Path:
    """Write `{"id", "ranked": [passage ids]}` per query, in the queries' order."""
    pairs = read_queries(queries_jsonl)
    retriever = Retriever(index, mode, reranker)
    lines = []
    for start in bar(range(0, len(pairs), batch_size), desc="retrieving", disable=not progress):
        chunk = pairs[start : start + batch_size]
        for (qid, _), hits in zip(chunk, retriever.search_batch([q for _, q in chunk], k)):
            lines.append(json.dumps({"id": qid, "ranked": [h.id for h in hits]}, ensure_ascii=False) + "\n")
    return write_atomic(out_jsonl, "".join(lines))


def tune_fusion(index: Index, queries: str | os.PathLike, qrels: str | os.PathLike, *,
                alphas: Iterable[float] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5), rrf_ks: Iterable[float] = (5, 10, 60),
                depths: Iterable[int] = (10, 20, 50), question_weights: Iterable[float] = (0.0, 0.25, 0.5, 0.75),
                metric: str = "ndcg@10", progress: bool = True) -> tuple[Fusion, list[dict[str, Any]]]:
    """The fusion settings with the best `metric` on these queries (use a dev set), and every setting's scores."""
    pairs, judged = read_queries(queries), read_qrels(qrels)
    depths = sorted(depths)
    retriever = Retriever(index, "hybrid")
    cands = retriever.candidates([q for _, q in pairs], depths[-1])
    cosines = [c.cosines(index, depths[-1]) for c in bar(cands, desc="candidate cosines", disable=not progress)]
    weights = question_weights if index.questions is not None else (0.0,)
    settings = [Fusion("convex", alpha=a, depth=d, question_weight=w) for a in alphas for d in depths for w in weights]
    settings += [Fusion("rrf", rrf_k=k, depth=d, question_weight=w) for k in rrf_ks for d in depths for w in weights]
    table = []
    for f in settings:
        ranked = {qid: [index.passages[i].id for i, _ in fuse(c, f, mix(*cos, f.question_weight))[:10]]
                  for (qid, _), c, cos in zip(pairs, cands, cosines)}
        table.append(vars(f) | score(judged, ranked))
    best = max(table, key=lambda row: row[metric])
    return Fusion(**{k: best[k] for k in vars(Fusion())}), table


# Consumer-style rewrites per MedQuAD question type; {f} is the focus in lower case.
PARAPHRASES = {
    "information": ("can you explain {f} to me", "i was told i have {f}, what does that mean", "what kind of condition is {f}"),
    "symptoms": ("how would i know if i have {f}", "what signs should i watch for with {f}", "how does {f} show up in the body"),
    "treatment": ("can {f} be cured", "how do doctors manage {f}", "what are my options for dealing with {f}"),
    "causes": ("why do people get {f}", "what leads to {f}", "where does {f} come from"),
    "inheritance": ("can {f} be passed down in families", "if my parent has {f} will my kids get it", "does {f} run in families"),
    "frequency": ("how common is {f}", "how many people get {f}", "is {f} rare"),
    "genetic changes": ("which genes are involved in {f}", "what mutation is behind {f}", "what dna changes lead to {f}"),
    "exams and tests": ("how do doctors find out if someone has {f}", "what test checks for {f}", "how is {f} detected"),
    "research": ("are scientists studying new ways to help {f}", "any clinical trials going on for {f}", "what is new in the science of {f}"),
    "outlook": ("what can someone with {f} expect in the future", "will a person recover from {f}", "how does life go on with {f}"),
    "susceptibility": ("who is likely to get {f}", "am i at risk of {f}", "which people tend to get {f}"),
    "considerations": ("what should i keep in mind about {f}", "anything special to watch out for with {f}"),
    "prevention": ("how can i avoid getting {f}", "is there a way to stop {f} before it starts", "can {f} be avoided"),
    "stages": ("how far along can {f} get", "how do doctors grade how advanced {f} is"),
    "complications": ("what problems can {f} lead to", "can {f} cause other health issues"),
    "support groups": ("where can i meet others living with {f}",),
}
_FALLBACK = ("what should i know about {f}",)


def build_medquad_selftest(
    records: Iterable[QARecord], out_dir: str | os.PathLike, *, chunk_words: int = CHUNK_WORDS, overlap: int = OVERLAP,
    seed: int = 0, max_queries: int | None = 2000,
) -> dict[str, dict[str, Path]]:
    """Write {all,dev,test}/queries.jsonl + qrels.txt; returns their paths by split.

    Passage ids are made as `load_passages` makes them, so the chunking must match the index's.
    """
    records = list(records)
    parents: list[int] = []
    passages = passages_from_records(records, chunk_words=chunk_words, overlap=overlap, parents=parents)
    groups: dict[tuple[str, str], list[str]] = {}
    for p, parent in zip(passages, parents):
        rec = records[parent]
        if rec.focus and rec.qtype:
            groups.setdefault((rec.focus, rec.qtype), []).append(p.id)
    rng = np.random.default_rng(seed)
    keys = sorted(groups)
    if max_queries is not None and len(keys) > max_queries:
        keys = sorted(keys[i] for i in rng.choice(len(keys), size=max_queries, replace=False))
    foci = sorted({f for f, _ in keys})
    dev_foci = {foci[i] for i in rng.permutation(len(foci))[: len(foci) // 2]}
    splits: dict[str, list[str]] = {"all": [], "dev": [], "test": []}
    qrels: dict[str, list[str]] = {"all": [], "dev": [], "test": []}
    for n, (focus, qtype) in enumerate(keys, 1):
        templates = PARAPHRASES.get(qtype, _FALLBACK)
        query = templates[int(rng.integers(len(templates)))].format(f=focus.lower())
        row = json.dumps({"id": f"q{n:05d}", "query": query, "focus": focus, "qtype": qtype}, ensure_ascii=False) + "\n"
        judgments = [f"q{n:05d} 0 {pid} 1\n" for pid in groups[(focus, qtype)]]
        for split in ("all", "dev" if focus in dev_foci else "test"):
            splits[split].append(row)
            qrels[split] += judgments
    out = Path(out_dir)
    paths = {}
    for split in splits:
        paths[split] = {
            "queries": write_atomic(out / split / "queries.jsonl", "".join(splits[split])),
            "qrels": write_atomic(out / split / "qrels.txt", "".join(qrels[split])),
        }
    return paths

