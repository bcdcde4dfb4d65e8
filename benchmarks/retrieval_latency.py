"""Build the full MedQuAD retrieval index and measure it: build and load time, query latency, self-test quality.

    .venv/bin/python benchmarks/retrieval_latency.py [--medquad ../shared/data/medquad] [--index-dir DIR]

Targets on the 2-core CPU machine: build <= 5 min, single hybrid query p95 <= 30 ms. Three times
are reported apart: reading and chunking MedQuAD, the embedder's one-time int8 ONNX export (made
here in a fresh cache folder, so it is measured every run; `medtune index build` makes it on first
use and keeps it in ~/.cache/medtune/onnx), and the build proper (embedding, BM25, HNSW, threshold
calibration, writing), which is what `build_index` times. The embedding is compared, in the same
run, with plain torch sentence-transformers encoding a sample of the same passages, extrapolated
to all of them. Fusion is tuned on the self-test's dev foci and every mode is reported on the
test foci. JSON on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from medtune.data import load_source
from medtune.rag.embedder import Embedder
from medtune.rag.evaluate import build_medquad_selftest, evaluate_retrieval, read_queries, tune_fusion
from medtune.rag.index import build_index, load_index
from medtune.rag.passages import load_passages
from medtune.rag.retrieve import Fusion, Retriever
from medtune.recipe import SourceConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--medquad", default=str(ROOT.parent / "shared" / "data" / "medquad"))
    ap.add_argument("--index-dir", help="keep the index here (default: a temporary folder)")
    ap.add_argument("--torch-sample", type=int, default=384, help="passages encoded with plain torch for the comparison")
    ap.add_argument("--queries", type=int, default=2000, help="self-test queries (dev + test)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="medtune-retrieval-bench-"))
    os.environ["MEDTUNE_CACHE"] = str(work / "cache")  # a fresh cache: the ONNX export below is made, and timed, in this run
    index_dir = Path(args.index_dir) if args.index_dir else work / "index"
    out: dict = {}

    t0 = time.perf_counter()
    passages, report = load_passages(args.medquad)
    out["passages"] = {"count": len(passages), "chunked_records": report.chunked, "unanswered_skipped": report.unanswered,
                       "chunk_words": report.chunk_words, "overlap": report.overlap, "read_s": round(time.perf_counter() - t0, 1)}

    # The baseline: plain torch on a random sample of the same passages, same 128-token limit.
    torch_embedder = Embedder(backend="torch")
    sample = [passages[i].text for i in np.random.default_rng(0).choice(len(passages), args.torch_sample, replace=False)]
    torch_embedder.encode(sample[:32])  # warm-up
    t0 = time.perf_counter()
    torch_embedder.encode(sample)
    torch_rate = args.torch_sample / (time.perf_counter() - t0)
    del torch_embedder

    # The default embedder, all-MiniLM-L6-v2 as int8 ONNX: exported and quantized once (the model itself was
    # unpacked above for the torch baseline), timed apart from the build.
    t0 = time.perf_counter()
    embedder = Embedder()
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_index(passages, index_dir, embedder=embedder, report=report, progress=False)
    build_s = time.perf_counter() - t0
    manifest = json.loads((index_dir / "manifest.json").read_text())
    torch_estimate = len(passages) / torch_rate
    out["build"] = {"seconds": round(build_s, 1), "embed_seconds": manifest["timings_s"]["embed"], "onnx_export_s": round(export_s, 1),
                    "embed_rate_per_s": round(len(passages) / manifest["timings_s"]["embed"], 1),
                    "torch_rate_per_s": round(torch_rate, 1), "torch_embed_estimate_s": round(torch_estimate, 1),
                    "speedup_vs_torch_embed": round(torch_estimate / manifest["timings_s"]["embed"], 2),
                    "target_s": 300, "weak_retrieval": manifest["weak_retrieval"]}

    t0 = time.perf_counter()
    index = load_index(index_dir)
    load_s = time.perf_counter() - t0
    retriever = Retriever(index)
    out["load"] = {"index_s": round(load_s, 2), "with_embedder_s": round(time.perf_counter() - t0, 2)}
    off_topic = retriever.search("What is the capital of France?", 5)
    out["off_topic_confident"] = retriever.confident(off_topic)

    records, _ = load_source(SourceConfig(loader="medquad", path=args.medquad))
    sets = build_medquad_selftest(records, work / "selftest", chunk_words=report.chunk_words, overlap=report.overlap, max_queries=args.queries)
    t0 = time.perf_counter()
    tuned, table = tune_fusion(index, sets["dev"]["queries"], sets["dev"]["qrels"], progress=False)
    dev_default = next(r for r in table if all(r[k] == v for k, v in vars(Fusion()).items()))
    out["tuning"] = {"seconds": round(time.perf_counter() - t0, 1), "settings_tried": len(table), "best_on_dev": vars(tuned),
                     "dev_best": max(table, key=lambda r: r["ndcg@10"]), "dev_default": dev_default}
    test = evaluate_retrieval(index, sets["test"]["queries"], sets["test"]["qrels"], work / "report",
                              modes=("bm25", "dense", "hybrid"), progress=False)
    tuned_test = evaluate_retrieval(index, sets["test"]["queries"], sets["test"]["qrels"], modes=("hybrid",), fusion=tuned, progress=False)
    out["selftest_test"] = test["modes"] | {"hybrid_tuned": tuned_test["modes"]["hybrid"]}
    out["selftest_queries"] = {"dev": len(read_queries(sets["dev"]["queries"])), "test": test["judged_queries"]}
    out["latency_ms_hybrid"] = test["modes"]["hybrid"]["latency_ms"] | {"target_p95": 30}

    print(json.dumps(out, indent=2))
    rows = [("passages", out["passages"]["count"]), ("read + chunk s", out["passages"]["read_s"]),
            ("one-time ONNX export s", out["build"]["onnx_export_s"]), ("build s (target 300)", out["build"]["seconds"]),
            ("embed s / torch estimate s", f"{out['build']['embed_seconds']} / {out['build']['torch_embed_estimate_s']} "
                                           f"(x{out['build']['speedup_vs_torch_embed']})"),
            ("load s (index / +embedder)", f"{out['load']['index_s']} / {out['load']['with_embedder_s']}"),
            ("hybrid p50 / p95 ms (target 30)", f"{out['latency_ms_hybrid']['p50']} / {out['latency_ms_hybrid']['p95']}"),
            ("threshold", out["build"]["weak_retrieval"]["threshold"])]
    for name, value in rows:
        print(f"{name:<34} {value}", file=sys.stderr)
    print(f"\n{'test foci':<14}{'MRR@10':>8}{'nDCG@10':>9}{'R@10':>8}{'p95 ms':>8}", file=sys.stderr)
    for mode, m in out["selftest_test"].items():
        print(f"{mode:<14}{m['mrr@10']:>8.4f}{m['ndcg@10']:>9.4f}{m['recall@10']:>8.4f}{m['latency_ms']['p95']:>8.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
