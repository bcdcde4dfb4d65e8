"""How often the safety rules fire on MedQuAD's questions: general questions, which should rarely trigger.

Loads MedQuAD with medtune's loader (every question, answered or not), runs each question through
`medtune.rag.safety.load_rules().check` as `medtune ask` does, and prints the counts (all questions,
distinct question texts) and every question that triggers emergency advice or a dose-change refusal.

    .venv/bin/python benchmarks/safety_medquad.py [--medquad ../shared/data/medquad] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from medtune.data import load_source
from medtune.rag.safety import load_rules
from medtune.recipe import SourceConfig

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medquad", default=str(ROOT.parent / "shared" / "data" / "medquad"))
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of text")
    args = ap.parse_args()

    records, report = load_source(SourceConfig(loader="medquad", path=args.medquad))
    rules = load_rules()
    start = time.perf_counter()
    fired = []
    for r in records:
        # MedQuAD is English; every language's patterns are tried whatever the language, so it only picks the message.
        verdict = rules.check(r.question, "en")
        if verdict.emergency or verdict.refusal:
            fired.append({"id": r.id, "question": r.question, "emergency": verdict.emergency.id if verdict.emergency else None,
                          "dose_refusal": verdict.refusal is not None})
    seconds = time.perf_counter() - start
    distinct = {r.question for r in records}
    out = {
        "questions": len(records),
        "distinct_questions": len(distinct),
        "answered": report.answered,
        "emergency": sum(f["emergency"] is not None for f in fired),
        "dose_refusal": sum(f["dose_refusal"] for f in fired),
        "triggered": len(fired),
        "triggered_distinct": len({f["question"] for f in fired}),
        "by_rule": dict(Counter(f["emergency"] or "dose_change" for f in fired).most_common()),
        "seconds": round(seconds, 1),
        "triggering": fired,
    }
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    for f in fired:
        print(f"{f['emergency'] or 'dose_change':<22} {f['id']:<28} {f['question']}")
    print(f"\n{out['questions']:,} MedQuAD questions ({out['distinct_questions']:,} distinct texts, {out['answered']:,} answered), "
          f"checked in {out['seconds']} s: {out['triggered']} trigger ({out['triggered_distinct']} distinct texts): "
          f"emergency advice {out['emergency']}, dose-change refusal {out['dose_refusal']}; by rule {out['by_rule']}")


if __name__ == "__main__":
    main()
