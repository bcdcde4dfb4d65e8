"""Re-ranking latency: one query's top 20 scored by a cross-encoder, sentence-transformers (torch) against
medtune's ONNX exports of the same model (float32 and int8), on the same queries in the same run.

    .venv/bin/python benchmarks/reranker_latency.py --index INDEX_DIR --reranker RUN_DIR [--queries N]

Prints p50/p95 per backend, torch's p95 over each export's, and how often each export picks torch's first hit.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from medtune.rag.index import load_index
from medtune.rag.reranker import Reranker
from medtune.rag.retrieve import Retriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", required=True)
    ap.add_argument("--reranker", required=True)
    ap.add_argument("--queries", type=int, default=100, help="questions of the index's passages, asked in order")
    args = ap.parse_args()
    index = load_index(args.index)
    questions = [p.question for p in index.passages if p.question][: args.queries]
    candidates = Retriever(index).search_batch(questions, k=20)
    out = {"queries": len(questions), "pairs_per_query": 20}
    top1 = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        reranker = Reranker(args.reranker, backend)
        reranker.predict([(questions[0], h.text) for h in candidates[0]])  # warm-up: first-call costs
        times, firsts = [], []
        for q, hits in zip(questions, candidates):
            t0 = time.perf_counter()
            scores = reranker.predict([(q, h.text) for h in hits])
            times.append((time.perf_counter() - t0) * 1000)
            firsts.append(int(np.argmax(scores)))
        out[backend] = {"p50_ms": round(float(np.percentile(times, 50)), 1), "p95_ms": round(float(np.percentile(times, 95)), 1)}
        top1[backend] = firsts
    out["p95_ratio_torch_over"] = {b: round(out["torch"]["p95_ms"] / out[b]["p95_ms"], 2) for b in ("onnx", "onnx-int8")}
    out["same_top1_as_torch"] = {b: float(np.mean(np.array(top1[b]) == np.array(top1["torch"]))) for b in ("onnx", "onnx-int8")}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
