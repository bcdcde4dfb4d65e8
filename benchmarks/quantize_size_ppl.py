"""Size and held-out perplexity of SmolLM2-135M-Instruct (or --source) quantized to int8 and int4 (optimum-quanto, CPU).

Each method goes through `medtune.quantize.quantize` exactly as `medtune quantize` does: quantize, save,
reload the saved folder, and measure both models on the same MedQuAD answers (token-weighted perplexity
of whole answer texts, up to 512 tokens each). Prints the reports as JSON, then a table.

    .venv/bin/python benchmarks/quantize_size_ppl.py --medquad ../shared/data/medquad [--texts 50] [--source RUN_DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from medtune import DEFAULT_MODEL
from medtune.quantize import quantize
from medtune.quantize.quanto_weights import KEEP_INT8
from medtune.quantize.texts import load_texts

# (method, dtype of what stays unquantized, int4 group size, int4 layers kept in int8): SmolLM2's tied
# 28M-parameter embedding is not quantized, so its dtype decides how far the 4-bit ratio can go; groups of
# 128 are quanto's default; int4 keeps v_proj, o_proj and down_proj in int8 unless told otherwise.
RUNS = {
    "int8": ("int8", "float32", None, KEEP_INT8),
    "int4-g32": ("int4", "float32", 32, KEEP_INT8),
    "int4-g32-bf16": ("int4", "bfloat16", 32, KEEP_INT8),
    "int4-all-g32-bf16": ("int4", "bfloat16", 32, ()),
    "int4-g128-bf16": ("int4", "bfloat16", 128, KEEP_INT8),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medquad", default="../shared/data/medquad")
    ap.add_argument("--texts", type=int, default=50)
    ap.add_argument("--out", help="keep the quantized folders here (default: a temporary folder)")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--source", default=DEFAULT_MODEL, help="model or run directory to quantize (default: SmolLM2-135M-Instruct, "
                    "whose offline copy comes from a 4-bit GGUF: pass a fine-tuned run for weights off that grid)")
    args = ap.parse_args()

    print(f"model: {args.source}", flush=True)
    texts = load_texts(args.medquad, args.texts)  # drawn with seed 0 across all collections
    work = Path(args.out or tempfile.mkdtemp(prefix="quantize-bench-"))
    results = []
    for name in args.runs:
        method, dtype, group_size, keep_int8 = RUNS[name]
        start = time.perf_counter()
        out = quantize(args.source, method, work / name, eval_texts=texts, dtype=dtype, group_size=group_size, keep_int8=keep_int8)
        report = json.loads((out / "quantize_report.json").read_text())
        results.append(report | {"run": name, "seconds": round(time.perf_counter() - start, 1)})
        print((out / "quantize_report.md").read_text(), flush=True)
    print(json.dumps(results, indent=2))

    src = results[0]["source"]
    print(f"\n{args.source}, {src['texts']} MedQuAD answers, {src['tokens']:,} tokens; source {src['dtype']}, "
          f"{src['weight_file_bytes'] / 1e6:,.1f} MB on disk, perplexity {src['perplexity']:.3f}\n")
    print("| run | group size | unquantized parts | on disk | in memory | size ratio | perplexity | change |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        q, c = r["quantized"], r["comparison"]
        groups = ",".join(map(str, r["quantization"]["group_size"] or ["row"]))
        print(f"| {r['run']} | {groups} | {q['dtype']} | {q['weight_file_bytes'] / 1e6:,.1f} MB | "
              f"{q['parameter_bytes'] / 1e6:,.1f} MB | {c['size_ratio']:.2f}× | {q['perplexity']:.3f} | "
              f"{c['perplexity_change_pct']:+.2f}% |")


if __name__ == "__main__":
    main()
