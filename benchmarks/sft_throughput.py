"""Causal-LM SFT throughput: medtune's SFT against TRL's SFTTrainer with its default settings.

Same model (SmolLM2-135M-Instruct, the offline default), same MedQuAD sample, same LoRA
adapter (r=16 on all linear layers), same max length (512), batch 8, one epoch, so both see the
same examples, same precision (fp32 on CPU, bf16 on GPUs that have it) and no gradient
checkpointing. TRL's run uses SFTConfig's defaults otherwise (random batches padded to their
longest member). medtune's run uses `train.packing: true`: examples packed into 512-token rows
with no padding, one row per forward pass (see medtune.train.sft). TRL's own defaults also turn on
bf16 autocast and gradient checkpointing, which on a CPU without native bf16 are slower still; they
are set equal here so the ratio measures batching alone. `--ways` adds `trl-packed` (TRL's
packing=True: the batch's rows concatenated into one padding-free sequence) or `medtune-grouped`
(medtune without packing: length-grouped batches). Each run is a fresh process, alternating; it
reports real (non-padding) tokens/s and its peak resident memory (peak GPU memory on CUDA).

    python benchmarks/sft_throughput.py [--examples 32] [--rounds 2] [--data ../shared/data]
                                        [--ways trl,medtune,trl-packed,medtune-grouped]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LABELS = {
    "trl": "TRL SFTTrainer defaults",
    "medtune": "medtune SFT, train.packing: true",
    "trl-packed": "TRL SFTTrainer, packing=True",
    "medtune-grouped": "medtune SFT, length-grouped (no packing)",
}
WAYS = list(LABELS)


def recipe(data: str, examples: int, out: str, packing: bool = False):
    from medtune.recipe import recipe_from_dict

    return recipe_from_dict({
        "name": "bench-sft",
        "model": MODEL,
        "data": {"sources": [{"loader": "medquad", "path": f"{data}/medquad"}], "max_examples": examples},
        "train": {"method": "lora", "packing": packing, "epochs": 1, "batch_size": 8, "max_length": 512, "learning_rate": 2e-4,
                  "logging_steps": 1, "save_steps": 10**6, "precision": "fp32" if not torch.cuda.is_available() else "auto"},
        "tracking": {"backend": "none"},
        "output_dir": out,
    })


def one_run(way: str, data: str, examples: int) -> dict:
    import datasets
    from trl import SFTConfig

    from medtune.data import prepare_data
    from medtune.models import load_model, load_tokenizer, resolve_model
    from medtune.train.common import cpu_only, fit
    from medtune.train.lora import peft_config
    from medtune.train.sft import SFTTrainerWithTokens, build_sft_trainer, to_chat

    out = tempfile.mkdtemp(prefix=f"bench-{way}-")
    r = recipe(data, examples, out, packing=way == "medtune")
    splits = datasets.DatasetDict(train=prepare_data(r.data).splits["train"])  # no in-loop evaluation
    resolved = resolve_model(MODEL)
    model, tokenizer = load_model(resolved), load_tokenizer(resolved)
    if way.startswith("medtune"):
        trainer = build_sft_trainer(r, model, tokenizer, splits, Path(out))
    else:
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        args = SFTConfig(output_dir=out, max_length=512, per_device_train_batch_size=8, num_train_epochs=1,
                         learning_rate=2e-4, report_to=[], save_strategy="no", use_cpu=cpu_only(), logging_steps=1,
                         bf16=bf16, gradient_checkpointing=False, packing=way == "trl-packed")
        trainer = SFTTrainerWithTokens(model=model, args=args, train_dataset=to_chat(splits["train"], r.prompt.template, r.prompt.system),
                                       processing_class=tokenizer, peft_config=peft_config(r, "CAUSAL_LM"))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    res = fit(trainer)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"way": way, "tokens": res.train_tokens, "seconds": res.runtime_s, "steps": res.global_step,
            "loss": res.train_loss, "peak_mib": peak, "peak_kind": "GPU" if torch.cuda.is_available() else "RSS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ways", default="trl,medtune", help="comma-separated: " + ",".join(WAYS))
    ap.add_argument("--one", choices=WAYS, help=argparse.SUPPRESS)  # a single run, in a child process
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_run(args.one, args.data, args.examples)), flush=True)
        return
    ways = args.ways.split(",")
    if set(ways) - set(WAYS) or not {"trl", "medtune"} <= set(ways):
        sys.exit(f"--ways: needs trl and medtune, from {', '.join(WAYS)}; got {args.ways}")

    results: dict[str, list[dict]] = {w: [] for w in ways}
    for r in range(args.rounds):
        for way in ways:
            start = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", way, "--data", args.data, "--examples", str(args.examples)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{way} run failed:\n{proc.stderr[-3000:]}")
            res = json.loads(line[7:])
            results[way].append(res)
            print(f"round {r + 1} {way:15s}: {res['tokens'] / res['seconds']:7.1f} tokens/s ({res['tokens']} tokens, {res['steps']} steps, "
                  f"{res['seconds']:.1f} s train, {time.perf_counter() - start:.0f} s in all), loss {res['loss']:.4f}, "
                  f"peak {res['peak_kind']} {res['peak_mib']:.0f} MiB", flush=True)

    tps = {w: statistics.median(x["tokens"] / x["seconds"] for x in v) for w, v in results.items()}
    peak = {w: max(x["peak_mib"] for x in v) for w, v in results.items()}
    kind = results["trl"][0]["peak_kind"]
    print()
    for way in ways:
        print(f"{LABELS[way]:42s} {tps[way]:7.1f} tokens/s, peak {kind} {peak[way]:.0f} MiB, x{tps[way] / tps['trl']:.2f}")
    print(f"ratio medtune/TRL: {tps['medtune'] / tps['trl']:.2f}x  (target >= 1.5x)")

if __name__ == "__main__":
    main()
