"""The GPU check kit: every CUDA path of medtune, end to end, in one call on a lent device.

Each step reports PASS, FAIL or SKIPPED (with the reason) and its figures; the kit writes
gpu_check.json and gpu_check.md to --out (default $OUT when set, else ./gpu_check) and prints
the table. It builds its models itself (nothing is downloaded): a tiny Llama for correctness and,
on a GPU, a Llama-shaped model of about 1.1B parameters (TinyLlama's shape), random weights, for
speed.

  qlora_sft      `medtune train` with a seed-004-shaped recipe: NF4 + double quantization, bf16
                 compute on the GPU (fp32 on the CPU), gradient checkpointing, ChatML, loss on the
                 answers only; the loss must fall; the adapter is saved
  merge          `medtune merge-adapter` of that run: the merged model's logits match the adapter
                 model's (bf16 tolerance on the GPU)
  dpo            DPO from the QLoRA adapter (seed 002's chain): the reward margin is logged
  quantize       `medtune quantize --method bnb4` and `bnb8`: size and perplexity before/after
  speed_lora     bf16 LoRA on the 1.1B shape, packed 2,048-token rows: tokens/s and MFU (GPU only)
  speed_full     the same, full fine-tuning (GPU only)
  speed_qlora    QLoRA step time on that shape against bf16 LoRA's (GPU only; target <= 1.5x)
  headqa_eval    `medtune eval` of the tiny model on 50 HEAD-QA (es) items, on the GPU and on the CPU:
                 the same answers (needs --data-dir with head_qa/es)
  fsdp           full fine-tuning of the tiny model under `accelerate launch --config_file
                 recipes/accelerate/fsdp.yaml` on 2 GPUs: the loss falls, checkpoints are sharded,
                 the saved model is whole (SKIPPED with fewer GPUs; CI runs the 2-process CPU
                 config in tests/test_train_sharded.py)

MFU = model FLOPs / time / the GPU's dense bf16 peak (--peak-tflops, 790 measured on the lent
H200). FLOPs per token: 6N for full fine-tuning, 4N for LoRA (frozen weights get no weight
gradient), plus attention, 6 * layers * sequence * hidden (causal: half of 12).

    python benchmarks/gpu_check.py --data-dir .device/data   # on the device (the README says what it carries)
    python benchmarks/gpu_check.py --cpu-smoke     # here and in CI: the tiny model, CUDA-only steps SKIPPED
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from medtune.testing import make_llama, qa_rows  # noqa: E402

DISEASES = ["gout", "asthma", "lupus", "anemia", "psoriasis", "scurvy", "rickets", "measles", "glaucoma", "migraine",
            "malaria", "tetanus", "shingles", "goiter", "eczema", "sepsis"]
STEPS = ("qlora_sft", "merge", "dpo", "quantize", "speed_lora", "speed_full", "speed_qlora", "headqa_eval", "fsdp")
SPEED_SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                   num_key_value_heads=4, vocab_size=32000)  # TinyLlama-1.1B's shape


class Skip(Exception):
    """A step that cannot run here; its message is the reason."""


class Kit:
    def __init__(self, out: Path, work: Path, cpu_smoke: bool, peak_tflops: float, data_dir: Path | None):
        import torch

        self.out, self.work, self.peak, self.data_dir = out, work, peak_tflops * 1e12, data_dir
        self.cuda = torch.cuda.is_available() and not cpu_smoke
        self.results: list[dict] = []
        self.data = work / "qa.jsonl"
        self.data.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(DISEASES)))

        texts = [t for r in qa_rows(DISEASES) for t in (r["question"], r["answer"])]
        # 64 wide at least: bitsandbytes' NF4 blocks hold 64 inputs.
        self.tiny = make_llama(work / "tiny-llama", texts * 5, vocab_size=400, hidden=64, layers=2)

    def step(self, name: str, fn) -> dict:
        start = time.perf_counter()
        try:
            result = {"status": "PASS"} | (fn() or {})
        except Skip as why:
            result = {"status": "SKIPPED", "reason": str(why)}
        except Exception as exc:  # a failing step must not stop the kit: the others still report
            result = {"status": "FAIL", "error": f"{type(exc).__name__}: {exc}"[:2000],
                      "traceback": traceback.format_exc()[-4000:]}
        result = {"step": name} | result | {"seconds": round(time.perf_counter() - start, 1)}
        self.results.append(result)
        print(f"{name}: {result['status']} ({result['seconds']} s)", file=sys.stderr, flush=True)
        return result

    def needs_cuda(self) -> None:
        if not self.cuda:
            raise Skip("needs a CUDA GPU" + (" (--cpu-smoke)" if _has_cuda() else ": this machine has none"))

    # ---- correctness on the tiny model, through medtune's own commands --------------------------

    def recipe(self, name: str, **train) -> dict:
        return {
            "name": name, "model": str(self.tiny),
            "data": {"sources": [{"loader": "jsonl", "path": str(self.data)}], "split": {"validation": 0.1, "test": 0.0, "seed": 0}},
            "prompt": {"template": "{question}", "system": "You answer medical questions."},
            "train": {"method": "qlora", "learning_rate": 5e-3, "batch_size": 4, "eval_batch_size": 4, "logging_steps": 1,
                      "max_length": 64, "gradient_checkpointing": True, "save_steps": 1000,
                      "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}} | train,
            "eval": {"metrics": ["perplexity"], "max_samples": 4, "generation": {"max_new_tokens": 4}},
            "tracking": {"backend": "none"}, "output_dir": str(self.work / "runs"),
        }

    def qlora_sft(self) -> dict:
        from medtune.pipeline import run
        from medtune.recipe import recipe_from_dict

        steps = 30 if self.cuda else 8
        self.sft_run = run(recipe_from_dict(self.recipe("qlora-sft", max_steps=steps)), run_dir=self.work / "qlora-sft")
        report = json.loads((self.sft_run / "report.json").read_text())
        losses = [h["loss"] for h in report["train"]["log_history"] if "loss" in h]
        if not losses[-1] < losses[0]:
            raise AssertionError(f"the loss did not fall: {losses}")
        if not (self.sft_run / "adapter" / "adapter_model.safetensors").is_file():
            raise AssertionError("no adapter saved")
        return {"steps": steps, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                "perplexity_before": report["eval"]["before"]["perplexity"]["perplexity"],
                "perplexity_after": report["eval"]["perplexity"]["perplexity"]}

    def merge(self) -> dict:
        import torch

        from medtune.merge.adapter import merge_adapter
        from medtune.models import load_adapter_model, load_for_inference, read_card

        if not hasattr(self, "sft_run"):
            raise Skip("qlora_sft did not finish")
        merged = merge_adapter(self.sft_run, self.work / "merged")
        folder, card = read_card(self.sft_run)
        dtype = torch.bfloat16 if self.cuda else torch.float32
        adapted, tokenizer = load_adapter_model(folder, card, dtype=dtype)
        plain, _, _ = load_for_inference(merged)
        device = "cuda" if self.cuda else "cpu"
        adapted, plain = adapted.to(device).eval(), plain.to(device, dtype).eval()
        ids = tokenizer(["What causes gout ?", "How to treat asthma ?"], return_tensors="pt", padding=True).to(device)
        with torch.no_grad():
            a, b = adapted(**ids).logits.float(), plain(**ids).logits.float()
        diff = (a - b).abs().max().item()
        tolerance = 0.1 if self.cuda else 1e-3  # bf16 keeps 8 bits of mantissa
        if diff > tolerance:
            raise AssertionError(f"merged logits differ from the adapter model's by {diff:.4g} (> {tolerance})")
        return {"max_abs_logit_diff": float(f"{diff:.3g}"), "tolerance": tolerance}

    def dpo(self) -> dict:
        from medtune.pipeline import run
        from medtune.recipe import recipe_from_dict

        if not hasattr(self, "sft_run"):
            raise Skip("qlora_sft did not finish")
        recipe = self.recipe("qlora-dpo", max_steps=10 if self.cuda else 4, learning_rate=1e-3)
        recipe["model"] = str(self.sft_run)
        recipe["align"] = {"beta": 0.1, "pairs": {"rejected": ["same_focus", "corrupted"]}}
        out = run(recipe_from_dict(recipe), run_dir=self.work / "qlora-dpo")
        report = json.loads((out / "report.json").read_text())
        margins = [h["rewards/margins"] for h in report["train"]["log_history"] if "rewards/margins" in h]
        if not margins:
            raise AssertionError("no reward margins logged")
        return {"reward_margin_first": round(margins[0], 4), "reward_margin_last": round(margins[-1], 4)}

    def quantize(self) -> dict:
        from medtune.quantize import quantize

        texts = [r["answer"] for r in qa_rows(DISEASES)[:24]]
        figures = {}
        for method in ("bnb4", "bnb8"):
            out = quantize(self.tiny, method, self.work / method, eval_texts=texts)
            report = json.loads((out / "quantize_report.json").read_text())
            figures[method] = {"size_ratio": round(report["comparison"]["size_ratio"], 2),
                               "perplexity_before": round(report["source"]["perplexity"], 3),
                               "perplexity_after": round(report["quantized"]["perplexity"], 3)}
        return figures

    # ---- speed on the 1.1B shape --------------------------------------------------------------

    def _speed(self, mode: str, *, batch: int = 4, seq: int = 2048, steps: int = 8, warmup: int = 3) -> dict:
        import torch
        from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

        self.needs_cuda()
        config = LlamaConfig(**SPEED_SHAPE, max_position_embeddings=seq, attn_implementation="sdpa")
        torch.manual_seed(0)
        if mode == "qlora":
            folder = self.work / "speed-1b"
            if not (folder / "config.json").exists():
                LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                       bnb_4bit_compute_dtype=torch.bfloat16)
            model = LlamaForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=torch.bfloat16, device_map="cuda")
        else:
            with torch.device("cuda"):
                model = LlamaForCausalLM(config).to(torch.bfloat16)
        n = sum(p.numel() for p in model.parameters()) if mode == "full" else _params(SPEED_SHAPE)
        if mode != "full":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
        ids = torch.randint(0, SPEED_SHAPE["vocab_size"], (batch, seq), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        for i in range(warmup + steps):
            if i == warmup:
                torch.cuda.synchronize()
                start = time.perf_counter()
            # bf16 autocast, as the trainer runs with bf16=True: PEFT keeps adapters in fp32, and without it
            # every adapter matmul would run in fp32 on an upcast copy of its input
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        tokens = batch * seq / seconds
        per_token = (6 if mode == "full" else 4) * n + 6 * SPEED_SHAPE["num_hidden_layers"] * seq * SPEED_SHAPE["hidden_size"]
        del model, optimizer
        torch.cuda.empty_cache()
        return {"parameters": n, "batch": batch, "seq": seq, "step_s": round(seconds, 4), "tokens_per_s": round(tokens),
                "mfu": round(tokens * per_token / self.peak, 4), "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1)}

    def speed_lora(self) -> dict:
        self.lora_step = self._speed("lora")
        return self.lora_step

    def speed_full(self) -> dict:
        return self._speed("full", batch=2)

    def speed_qlora(self) -> dict:
        figures = self._speed("qlora")
        if hasattr(self, "lora_step"):
            figures["step_time_vs_bf16_lora"] = round(figures["step_s"] / self.lora_step["step_s"], 2)
        return figures

    # ---- evaluation and sharding, through medtune's command line ---------------------------------

    def headqa_eval(self) -> dict:
        if self.data_dir is None or not (self.data_dir / "head_qa" / "es").is_dir():
            raise Skip("no HEAD-QA here: --data-dir DIR with head_qa/es (scripts/device_kit.sh copies it into .device/data)")
        answers = {}
        for device in ("cuda", "cpu") if self.cuda else ("cpu",):
            out = self.work / f"eval-{device}"
            env = {} if device == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}
            _medtune("eval", str(self.tiny), "--tasks", "headqa_es", "--limit", "50", "--data-dir", str(self.data_dir),
                     "--out", str(out), env=env)
            report = json.loads((out / "report.json").read_text())
            if report["settings"]["device"] != device:
                raise AssertionError(f"asked for {device}, scored on {report['settings']['device']}")
            rows = [json.loads(line) for line in (out / "items" / "headqa_es.jsonl").read_text().splitlines()]
            answers[device] = ([r["pred"] for r in rows], report["tasks"]["headqa_es"]["metrics"]["accuracy"]["value"])
        figures = {"items": len(answers["cpu"][0]), "accuracy_cpu": round(answers["cpu"][1], 3)}
        if self.cuda:
            same = sum(a == b for a, b in zip(answers["cuda"][0], answers["cpu"][0]))
            figures |= {"accuracy_gpu": round(answers["cuda"][1], 3), "same_answers": same}
            if same != len(answers["cpu"][0]):
                raise AssertionError(f"GPU and CPU answers differ on {len(answers['cpu'][0]) - same} of {len(answers['cpu'][0])} items")
        return figures

    def fsdp(self) -> dict:
        import torch

        self.needs_cuda()
        if torch.cuda.device_count() < 2:
            raise Skip(f"FSDP needs 2 GPUs; this machine has {torch.cuda.device_count()}")
        recipe = self.recipe("fsdp", method="full", max_steps=12, save_steps=6, learning_rate=1e-3, gradient_checkpointing=False)
        path = self.work / "fsdp.yaml"
        path.write_text(json.dumps(recipe))  # JSON is YAML
        run_dir = self.work / "fsdp"
        config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "fsdp.yaml"
        proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
                               "-m", "medtune.cli", "train", str(path), "--run-dir", str(run_dir)], capture_output=True, text=True)
        if proc.returncode:
            raise AssertionError(proc.stderr[-3000:])
        report = json.loads((run_dir / "report.json").read_text())
        losses = [h["loss"] for h in report["train"]["log_history"] if "loss" in h]
        shards = sorted(p.name for p in (run_dir / "checkpoints" / "checkpoint-12" / "pytorch_model_fsdp_0").glob("*.distcp"))
        if not losses[-1] < losses[0] or len(shards) != 2 or not (run_dir / "model" / "model.safetensors").is_file():
            raise AssertionError(f"losses {losses}, checkpoint shards {shards}, model {list((run_dir / 'model').iterdir())}")
        return {"loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4), "checkpoint_shards": len(shards)}


def _medtune(*args: str, env: dict | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "-q", *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode:
        raise AssertionError(f"medtune {args[0]} failed: {proc.stderr[-3000:]}")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _params(shape: dict) -> int:
    """A Llama's parameter count from its shape (for the 4-bit model, whose packed weights count differently)."""
    h, i, layers, v = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    return layers * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + 2 * v * h + h


def markdown(results: list[dict]) -> str:
    lines = ["| step | status | seconds | figures or reason |", "|---|---|---:|---|"]
    for r in results:
        extra = {k: v for k, v in r.items() if k not in ("step", "status", "seconds", "traceback")}
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']} | {json.dumps(extra, ensure_ascii=False)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="the CPU with the tiny model; CUDA-only steps SKIPPED")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check"))
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 peak, for MFU")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    ap.add_argument("--data-dir", type=Path, default=shared if shared.is_dir() else None,
                    help="folder with head_qa/es for the eval step (default: ../shared/data when it exists)")
    ap.add_argument("--only", type=lambda v: v.split(","), help=f"comma-separated steps to run (default all: {','.join(STEPS)})")
    args = ap.parse_args()
    if unknown := set(args.only or ()) - set(STEPS):
        ap.error(f"--only: no such step {', '.join(sorted(unknown))}; steps are {', '.join(STEPS)}")

    import torch

    from medtune.logs import setup

    setup(-1)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        kit = Kit(args.out, Path(tmp), args.cpu_smoke, args.peak_tflops, args.data_dir)
        device = torch.cuda.get_device_name(0) if kit.cuda else "cpu"
        for name in args.only or STEPS:
            kit.step(name, getattr(kit, name))
            # after every step: a lease that runs out mid-kit still brings back the steps done
            report = {"device": device, "torch": torch.__version__, "cpu_smoke": args.cpu_smoke, "steps": kit.results}
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(kit.results)
    (args.out / "gpu_check.md").write_text(f"# medtune GPU check on {device}\n\n{table}\n")
    print(table)
    failed = [r["step"] for r in kit.results if r["status"] == "FAIL"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
