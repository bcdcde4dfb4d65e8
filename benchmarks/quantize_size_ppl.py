"""Size and held-out perplexity of SmolLM2-135M-Instruct (or --source) quantized to int8, int4 (optimum-quanto) or GGUF q8_0 on a CPU.

Each run goes through `medtune.quantize.quantize` exactly as `medtune quantize` does: quantize, save,
reload the saved folder, and measure both models on the same MedQuAD answers (token-weighted perplexity
of whole answer texts, up to 512 tokens each). Prints the reports as JSON, then a table.

The offline SmolLM2 was converted from a 4-bit GGUF, so int4 lands on its grid; `--finetune STEPS` first
LoRA-fine-tunes it on MedQuAD (medtune's quickstart recipe, STEPS steps) and quantizes the merged model.
`--study` then compares int4 layer choices (which layers stay in int8, quanto's HQQ optimizer) on
`--study-texts` other MedQuAD answers, quantized in memory and not saved; int4 there is in groups of 32
with bf16 embeddings and norms, as in the int4-g32-bf16 run. The README's figures:

    .venv/bin/python benchmarks/quantize_size_ppl.py --finetune 6 --runs int8 int4-g32-bf16 int4-all-g32-bf16 --study
    .venv/bin/python benchmarks/quantize_size_ppl.py --runs gguf-q8_0 int4-all-g32 int4-all-g32-bf16 int4-all-g128-bf16
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from medtune import DEFAULT_MODEL
from medtune.quantize import quantize
from medtune.quantize.quanto_weights import KEEP_INT8, _dequantize_generic_int4, _quantized_modules, _tied_head, quantize_weights
from medtune.quantize.report import parameter_bytes, text_perplexity
from medtune.quantize.texts import load_texts

ROOT = Path(__file__).resolve().parents[1]

# (method, dtype of what stays unquantized, int4 group size, int4 layers kept in int8): SmolLM2's tied
# 28M-parameter embedding is not quantized, so its dtype decides how far the 4-bit ratio can go; groups of
# 128 are quanto's default; int4 keeps v_proj, o_proj and down_proj in int8 unless the run is "all".
RUNS = {
    "int8": ("int8", "float32", None, KEEP_INT8),
    "int4-g32": ("int4", "float32", 32, KEEP_INT8),
    "int4-g32-bf16": ("int4", "bfloat16", 32, KEEP_INT8),
    "int4-g128-bf16": ("int4", "bfloat16", 128, KEEP_INT8),
    "int4-all-g32": ("int4", "float32", 32, ()),
    "int4-all-g32-bf16": ("int4", "bfloat16", 32, ()),
    "int4-all-g128-bf16": ("int4", "bfloat16", 128, ()),
    "gguf-q8_0": ("gguf", "float32", None, ()),  # llama.cpp's converter (scripts/get_llama_cpp.sh), read back dequantized
}


def study_variants(layers: int) -> dict[str, tuple[tuple[str, ...], bool]]:
    """name -> (Linear layers kept in int8, as name suffixes or patterns; HQQ optimizer for int4)."""
    ends = ("layers.0.*", f"layers.{layers - 1}.*")  # every Linear of the first and last blocks
    return {
        "all int4": ((), False),
        "all int4, HQQ": ((), True),
        "v_proj, down_proj": (("v_proj", "down_proj"), False),
        "v_proj, down_proj, k_proj": (("v_proj", "down_proj", "k_proj"), False),
        "v_proj, down_proj, first and last blocks": (("v_proj", "down_proj", *ends), False),
        "v_proj, o_proj, down_proj (default)": (KEEP_INT8, False),
    }


def finetune(source: str, medquad: str, steps: int, work: Path) -> Path:
    """LoRA-fine-tune `source` with the quickstart recipe for `steps` steps and merge it: the merged folder."""
    from importlib import resources

    from medtune.merge.adapter import merge_adapter
    from medtune.pipeline import run
    from medtune.recipe import load_recipe

    recipe = load_recipe(Path(str(resources.files("medtune") / "quickstart.yaml")), [
        f"model={source}", f"data.sources.0.path={Path(medquad).resolve()}", f"train.max_steps={steps}",
        f"output_dir={work / 'runs'}", "eval.metrics=[perplexity]", "eval.compare_before=false", "eval.questions=[]", "eval.max_samples=1",
        "tracking.backend=none"])
    return merge_adapter(run(recipe), work / "finetuned")


def hqq_int4(model, group_size: int) -> None:
    """All-int4 with quanto's HQQ optimizer (scales and shifts fitted to the weights), otherwise as quantize_weights."""
    from optimum.quanto import HqqOptimizer, freeze, qint4
    from optimum.quanto import quantize as quanto_quantize

    tied = _tied_head(model)
    quanto_quantize(model, weights=qint4, optimizer=HqqOptimizer(), exclude=[tied.removesuffix(".weight")] if tied else None)
    for module in _quantized_modules(model).values():
        if module.weight.shape[1] % group_size == 0:
            module.weight_group_size = group_size
    freeze(model)


def study(source: str, texts: list[str]) -> list[dict]:
    """int4 variants of `source`, each quantized in memory from the same fp32 weights, on the same texts."""
    from medtune.models import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(source)
    tokenizer, model = load_tokenizer(resolved), load_model(resolved).eval()
    start = time.perf_counter()
    rows = [{"variant": "fp32 source", "parameter_bytes": parameter_bytes(model)} | text_perplexity(model, tokenizer, texts)
            | {"seconds": round(time.perf_counter() - start, 1)}]
    print(f"study: {rows[0]}", flush=True)
    for name, (keep, hqq) in study_variants(model.config.num_hidden_layers).items():
        start = time.perf_counter()
        variant = copy.deepcopy(model).to(torch.bfloat16)
        if hqq:
            hqq_int4(variant, 32)
        else:
            quantize_weights(variant, 4, 32, keep)
        _dequantize_generic_int4(variant)  # as a reloaded folder runs, under torch.inference_mode
        rows.append({"variant": name, "parameter_bytes": parameter_bytes(variant)} | text_perplexity(variant, tokenizer, texts)
                    | {"seconds": round(time.perf_counter() - start, 1)})
        print(f"study: {rows[-1]}", flush=True)
        del variant
    return rows


def method_of(result: dict) -> str:
    return RUNS[result["run"]][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--medquad", default=str(ROOT.parent / "shared" / "data" / "medquad"))
    ap.add_argument("--texts", type=int, default=50)
    ap.add_argument("--out", help="keep the quantized folders here (default: a temporary folder)")
    ap.add_argument("--runs", nargs="*", choices=list(RUNS), default=["int8", "int4-g32", "int4-g32-bf16", "int4-all-g32-bf16"])
    ap.add_argument("--source", default=DEFAULT_MODEL, help="model or run directory to quantize (default: SmolLM2-135M-Instruct, "
                    "whose offline copy comes from a 4-bit GGUF: pass a fine-tuned run, or --finetune, for weights off that grid)")
    ap.add_argument("--finetune", type=int, metavar="STEPS", help="LoRA-fine-tune --source on MedQuAD for STEPS steps first, and quantize that")
    ap.add_argument("--study", action="store_true", help="also compare int4 layer choices on --study-texts other MedQuAD answers")
    ap.add_argument("--study-texts", type=int, default=100)
    args = ap.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="quantize-bench-"))
    source = args.source
    if args.finetune:
        start = time.perf_counter()
        source = str(finetune(args.source, args.medquad, args.finetune, work))
        print(f"fine-tuned {args.source} for {args.finetune} steps and merged it in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"model: {source}", flush=True)
    texts = load_texts(args.medquad, args.texts)  # drawn with seed 0 across all collections
    results = []
    for name in args.runs:
        method, dtype, group_size, keep_int8 = RUNS[name]
        start = time.perf_counter()
        out = quantize(source, method, work / name, eval_texts=texts, dtype=dtype, group_size=group_size, keep_int8=keep_int8)
        report = json.loads((out / "quantize_report.json").read_text())
        results.append(report | {"run": name, "seconds": round(time.perf_counter() - start, 1)})
        print((out / "quantize_report.md").read_text(), flush=True)
    rows = []
    if args.study:  # texts drawn with another seed, none of the ones above
        others = [t for t in load_texts(args.medquad, args.study_texts + args.texts, seed=1) if t not in texts][: args.study_texts]
        rows = study(source, others)
    print(json.dumps({"runs": results, "study": rows}, indent=2))

    name = f"{args.source} fine-tuned {args.finetune} steps (LoRA, merged)" if args.finetune else args.source
    if results:
        src = results[0]["source"]
        print(f"\n{name}, {src['texts']} MedQuAD answers, {src['tokens']:,} tokens; source {src['dtype']}, "
              f"{src['weight_file_bytes'] / 1e6:,.1f} MB on disk, perplexity {src['perplexity']:.3f}\n")
        print("| run | group size | int8 layers | unquantized parts | on disk | in memory | size ratio | perplexity | change |")
        print("|---|---:|---|---|---:|---:|---:|---:|---:|")
        for r in results:
            q, c, qz = r["quantized"], r["comparison"], r["quantization"]
            groups = "q8_0 blocks of 32" if method_of(r) == "gguf" else ",".join(map(str, qz["group_size"] or ["row"]))
            kept = "–" if method_of(r) == "gguf" else "all" if r["bits"] == 8 else "/".join(qz["kept_in_int8"]) or "none"
            rest = "–" if method_of(r) == "gguf" else q["dtype"]  # the GGUF's own layout (llama.cpp's converter decides)
            print(f"| {r['run']} | {groups} | {kept} | {rest} | {q['weight_file_bytes'] / 1e6:,.1f} MB | "
                  f"{q['parameter_bytes'] / 1e6:,.1f} MB | {c['size_ratio']:.2f}× | {q['perplexity']:.3f} | "
                  f"{c['perplexity_change_pct']:+.2f}% |")
    if rows:
        base = rows[0]
        print(f"\nint4 layer choices, {name}: {base['texts']} other MedQuAD answers, {base['tokens']:,} tokens; "
              f"int4 in groups of 32, bf16 rest, in memory\n")
        print("| int4, kept in int8 | in memory | smaller by | perplexity | change |")
        print("|---|---:|---:|---:|---:|")
        for r in rows:
            change = "" if r is base else f"{100 * (r['perplexity'] / base['perplexity'] - 1):+.2f}%"
            print(f"| {r['variant']} | {r['parameter_bytes'] / 1e6:,.1f} MB | {base['parameter_bytes'] / r['parameter_bytes']:.2f}× | "
                  f"{r['perplexity']:.3f} | {change} |")


if __name__ == "__main__":
    main()
