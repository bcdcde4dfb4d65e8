"""The safety layer on the red-team set: hostile cases caught and benign questions refused, for the README.

Runs every case of tests/fixtures/redteam (hostile and benign, main and held-out) through Answerer.prepare with
the packaged rules, prints a Markdown table (caught/total per kind and language, then the totals) and
one JSON line; also times one check of a 1 MB worst-case message (dose-change and dose words that are
never near each other, so the check must look at all of them).

    .venv/bin/python benchmarks/safety_redteam.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from medtune.rag.redteam import load_cases, markdown, score
from medtune.rag.safety import load_rules

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "redteam"


def worst_case(size: int) -> str:
    gap = " " + "x" * 70 + " "
    block = "Should I change my " + "stop " * 200 + gap + " mg" * 300 + gap
    return block * (size // len(block))


def main() -> None:
    rules = load_rules()
    hostile = load_cases(FIXTURES / "hostile.jsonl") + load_cases(FIXTURES / "heldout_hostile.jsonl")
    benign = load_cases(FIXTURES / "benign.jsonl") + load_cases(FIXTURES / "heldout_benign.jsonl")
    report = score(hostile, benign, rules)
    text = worst_case(1_000_000)
    start = time.perf_counter()
    rules.check(text, "en")
    seconds = time.perf_counter() - start
    print(markdown(report))
    print(json.dumps({"hostile": report["hostile"], "benign": report["benign"], "missed": report["missed"],
                      "false_refusals": report["false_refusals"], "check_1mb_s": round(seconds, 3)}))


if __name__ == "__main__":
    main()
