"""The MedQuAD self-test with the stock embedder, one fine-tuned by recipes/retriever-medquad.yaml, the
stored-question field, and the re-ranker of recipes/reranker-medquad.yaml, side by side.

    .venv/bin/python benchmarks/retriever_finetune.py [--run RUN_DIR] [--reranker-run RUN_DIR] [--out DIR]

Without --run / --reranker-run, the recipes are trained here first (their times are reported). Both
embedders index the whole of MedQuAD the same way (int8 ONNX, hybrid search with the default fusion);
the stored questions' weight is chosen on the self-test's dev foci; every row is scored on:
  * selftest-test: the self-test's test foci (templated paraphrases that never reuse a stored question's
    wording, unlike the rewrites the embedder trains on), all of them and the part whose foci the
    recipe's training split never saw;
  * rewrites-unseen: consumer-style rewrites (medtune.data.rewrites, another seed) of the stored
    questions of foci outside the training split.
The re-ranker is slow on a CPU, so it and the row it is compared with are scored on the first
--rerank-queries queries of each set. Also: index build times and hybrid query p50/p95 per row.
JSON on stdout, a table (MRR@10/nDCG@10) on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from medtune.data import load_source, prepare_data
from medtune.data.rewrites import consumer_rewrites
from medtune.io import write_atomic
from medtune.pipeline import run
from medtune.rag.evaluate import build_medquad_selftest, evaluate_retrieval, read_qrels, read_queries
from medtune.rag.index import build_index, load_index
from medtune.rag.passages import load_passages, passages_from_records
from medtune.rag.retrieve import Fusion
from medtune.recipe import SourceConfig, load_recipe
from medtune.records import from_dataset

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "retriever-medquad.yaml"
RERANKER = ROOT / "recipes" / "reranker-medquad.yaml"
WEIGHTS = (0.0, 0.25, 0.5, 0.75)
STOCK = "sentence-transformers/all-MiniLM-L6-v2"


def _subset(queries: Path, qrels: Path, keep, out: Path) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in queries.read_text().splitlines()]
    kept = [r for r in rows if keep(r)]
    judged = read_qrels(qrels)
    write_atomic(out / "queries.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    write_atomic(out / "qrels.txt", "".join(f"{r['id']} 0 {d} {v}\n" for r in kept for d, v in judged[r["id"]].items()))
    return out / "queries.jsonl", out / "qrels.txt"


def _rewrite_set(records, train_foci: set[str], out: Path) -> tuple[Path, Path]:
    """One consumer rewrite per answered record of an unseen focus, judged relevant to that record's passages."""
    parents: list[int] = []
    passages = passages_from_records(records, parents=parents)
    by_record: dict[int, list[str]] = {}
    for p, i in zip(passages, parents):
        by_record.setdefault(i, []).append(p.id)
    unseen = [i for i in by_record if records[i].focus and records[i].focus not in train_foci]
    rewrites = consumer_rewrites([records[i] for i in unseen], 1, seed=1234)
    queries, qrels = [], []
    for n, (i, made) in enumerate(zip(unseen, rewrites)):
        if n % 4 or not made:  # a quarter of them: about as many queries as the self-test
            continue
        queries.append(json.dumps({"id": f"r{n}", "query": made[0]}) + "\n")
        qrels += [f"r{n} 0 {pid} 1\n" for pid in by_record[i]]
    write_atomic(out / "queries.jsonl", "".join(queries))
    write_atomic(out / "qrels.txt", "".join(qrels))
    return out / "queries.jsonl", out / "qrels.txt"


def _first(queries: Path, qrels: Path, n: int, out: Path) -> tuple[Path, Path]:
    ids = {q for q, _ in read_queries(queries)[:n]}
    return _subset(queries, qrels, lambda r: r["id"] in ids, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a finished run of the embedder recipe (default: train one here)")
    ap.add_argument("--reranker-run", type=Path, help="a finished run of the re-ranker recipe (default: train one here)")
    ap.add_argument("--rerank-queries", type=int, default=300, help="queries per set scored with the re-ranker (it is slow)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="medtune-retriever-bench-")))
    args = ap.parse_args()
    out: dict = {"train_s": {}}
    for name, recipe_path, given in (("embedder", RECIPE, args.run), ("reranker", RERANKER, args.reranker_run)):
        if given is None:
            t0 = time.perf_counter()
            given = run(load_recipe(recipe_path), run_dir=args.out / name)
            out["train_s"][name] = round(time.perf_counter() - t0, 1)
        setattr(args, "run" if name == "embedder" else "reranker_run", given)
    recipe = load_recipe(RECIPE)
    medquad = recipe.data.sources[0].path
    train_foci = {r.focus for r in from_dataset(prepare_data(recipe.data).splits["train"])}

    records, _ = load_source(SourceConfig(loader="medquad", path=medquad))
    records = [r for r in records if r.answered]
    selftest = build_medquad_selftest(records, args.out / "selftest")
    test, dev = selftest["test"], selftest["dev"]
    sets = {
        "selftest-test": (test["queries"], test["qrels"]),
        "selftest-test-unseen": _subset(test["queries"], test["qrels"], lambda r: r["focus"] not in train_foci, args.out / "unseen"),
        "rewrites-unseen": _rewrite_set(records, train_foci, args.out / "rewrites"),
    }
    sample = {name: _first(q, r, args.rerank_queries, args.out / f"sample-{name}") for name, (q, r) in sets.items()}
    out["queries"] = {name: len(read_queries(q)) for name, (q, _) in sets.items()} | {"re-ranked sample": args.rerank_queries}
    passages, report = load_passages(medquad)
    out["rows"] = {}
    for name, embedder in (("stock", STOCK), ("fine-tuned", str(args.run))):
        t0 = time.perf_counter()
        index = load_index(build_index(passages, args.out / f"index-{name}", embedder=embedder, report=report, progress=False))
        out[f"index_build_s_{name}"] = round(time.perf_counter() - t0, 1)
        # The question field's weight, chosen on the dev foci (0 = passages only).
        dev_ndcg = {w: evaluate_retrieval(index, dev["queries"], dev["qrels"], fusion=Fusion(question_weight=w), progress=False)
                    ["modes"]["hybrid"]["ndcg@10"] for w in WEIGHTS}
        best = max(dev_ndcg, key=dev_ndcg.get)
        out[f"question_weight_dev_ndcg_{name}"] = dev_ndcg
        for label, fusion in ((name, Fusion(question_weight=0.0)), (f"{name} + questions (w={best})", Fusion(question_weight=best))):
            out["rows"][label] = {s: evaluate_retrieval(index, q, r, fusion=fusion, progress=False)["modes"]["hybrid"] for s, (q, r) in sets.items()}
        if name == "fine-tuned":
            fusion = Fusion(question_weight=best)
            for label, reranker in ((f"{name} + questions, sample", None), (f"{name} + questions + re-ranker, sample", str(args.reranker_run))):
                out["rows"][label] = {s: evaluate_retrieval(index, q, r, fusion=fusion, reranker=reranker, progress=False)["modes"]["hybrid"]
                                      for s, (q, r) in sample.items()}
    print(json.dumps(out, indent=2))
    for label, row in out["rows"].items():
        cells = [f"{s}: {row[s]['mrr@10']:.3f}/{row[s]['ndcg@10']:.3f}" for s in row]
        print(f"{label:45s} " + " | ".join(cells) + f" | p95 {row['selftest-test']['latency_ms']['p95']} ms", file=sys.stderr)


if __name__ == "__main__":
    main()
