"""Retrieval for real patients' messages: the stock embedder and a fine-tuned one on ai-medical-chatbot.

    .venv/bin/python benchmarks/retriever_real_messages.py [--run RUN_DIR] [--data FILE] [--medquad DIR | --medquad ""]

Our self-test and rewrites are paraphrases we wrote; these are real messages people sent to an online
doctor service (ruslanmv/ai-medical-chatbot, ../shared/data/ai_medical_chatbot/sample.jsonl): long,
narrative, several questions, typos. The index is built like a FAQ: per dialogue, its question title
(`Description`, "Q. What causes ...?", without the "Q. ") as the stored question and the doctor's
reply as the answer, chunked and embedded as `medtune index build` does, among MedQuAD's answered
passages as distractors (--medquad "" leaves them out: easier still, stock MRR@10 about 0.95 against
0.93). The query is the patient's message; the relevant passages are its own dialogue's. Each embedder
is scored with passages only and with the stored-question field (the default weight), hybrid search,
MRR@10 / nDCG@10 and query p95. Also, per embedder, how often the index's weak-retrieval flag (answers
say they found nothing trusted) fires on these messages, and how often on ones whose first hit is right.
--run is a run of recipes/retriever-medquad.yaml (MedQuAD only: it never saw these messages).
JSON on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from medtune.data import load_source
from medtune.io import write_atomic
from medtune.logs import setup
from medtune.rag.index import build_index, load_index
from medtune.rag.evaluate import evaluate_retrieval, read_qrels, read_queries
from medtune.rag.passages import load_passages, passages_from_records
from medtune.rag.retrieve import Fusion, Retriever
from medtune.recipe import SourceConfig

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "ai_medical_chatbot" / "sample.jsonl"
MEDQUAD = ROOT.parent / "shared" / "data" / "medquad"
STOCK = "sentence-transformers/all-MiniLM-L6-v2"


def faq_set(data: Path, out: Path):
    """(passages, queries.jsonl, qrels.txt, counts): the dialogues as a FAQ, their patients' messages as queries."""
    records, report = load_source(SourceConfig(loader="ai_medical_chatbot", path=str(data)))
    usable = [r for r in records if r.answered and r.focus.strip() and r.question.strip()]
    faq = [replace(r, question=re.sub(r"^\s*Q\.\s*", "", r.focus)) for r in usable]
    parents: list[int] = []
    passages = passages_from_records(faq, parents=parents)
    queries = "".join(json.dumps({"id": f"m{i}", "query": r.question}) + "\n" for i, r in enumerate(usable))
    qrels = "".join(f"m{i} 0 {p.id} 1\n" for p, i in zip(passages, parents))
    counts = {"rows": report.rows_seen, "skipped by the loader": len(report.skipped), "messages": len(usable),
              "without title or reply": len(records) - len(usable), "passages": len(passages)}
    return passages, write_atomic(out / "queries.jsonl", queries), write_atomic(out / "qrels.txt", qrels), counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, help="a run of recipes/retriever-medquad.yaml (default: the stock embedder only)")
    ap.add_argument("--data", type=Path, default=DATA, help="ai-medical-chatbot rows (JSONL, CSV or the hub's Parquet)")
    ap.add_argument("--medquad", default=str(MEDQUAD), help='MedQuAD tree whose passages join the index as distractors ("": none)')
    ap.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="medtune-real-messages-")))
    args = ap.parse_args()
    setup(-1)
    passages, queries, qrels, counts = faq_set(args.data, args.out)
    if args.medquad:
        distractors = load_passages(args.medquad)[0]
        clash = {p.id for p in passages} & {p.id for p in distractors}
        if clash:
            raise SystemExit(f"passage ids in both sets, e.g. {sorted(clash)[0]}")
        passages += distractors
        counts["distractors"] = len(distractors)
    out: dict = {"data": str(args.data), "counts": counts, "rows": {}}
    judged, asked = read_qrels(qrels), read_queries(queries)
    embedders = {"stock": STOCK} | ({"fine-tuned": str(args.run)} if args.run else {})
    for name, embedder in embedders.items():
        index = load_index(build_index(passages, args.out / f"index-{name}", embedder=embedder, progress=False))
        for label, weight in (("passages only", 0.0), ("+ stored questions", Fusion().question_weight)):
            row = evaluate_retrieval(index, queries, qrels, fusion=Fusion(question_weight=weight), progress=False)["modes"]["hybrid"]
            out["rows"][f"{name}, {label} (w={weight})"] = row
        retriever = Retriever(index)
        hits = retriever.search_batch([q for _, q in asked], k=10)
        weak = [not retriever.confident(h) for h in hits]
        right = [bool(h) and h[0].id in judged[qid] for (qid, _), h in zip(asked, hits)]
        out[f"weak_retrieval_{name}"] = {"threshold": index.threshold, "flagged": round(sum(weak) / len(weak), 4),
                                         "flagged_with_right_first_hit": round(sum(w and r for w, r in zip(weak, right)) / len(weak), 4)}
    print(json.dumps(out, indent=2))
    print(f"{counts['messages']} real messages, {counts['passages']} passages + {counts.get('distractors', 0)} MedQuAD ones", file=sys.stderr)
    for label, row in out["rows"].items():
        print(f"{label:40s} MRR@10 {row['mrr@10']:.3f}  nDCG@10 {row['ndcg@10']:.3f}  p95 {row['latency_ms']['p95']} ms", file=sys.stderr)
    for name in embedders:
        w = out[f"weak_retrieval_{name}"]
        print(f"{name}: weak-retrieval flag on {w['flagged']:.1%} of the messages, {w['flagged_with_right_first_hit']:.1%} with the "
              "right first hit", file=sys.stderr)


if __name__ == "__main__":
    main()
