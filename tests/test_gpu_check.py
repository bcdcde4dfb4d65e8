"""The GPU check kit runs here as --cpu-smoke: every step that can run on a CPU passes, the CUDA-only
ones are skipped with their reason, and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["step"]: s["status"] for s in report["steps"]}
    has_headqa = (SHARED_DATA / "head_qa" / "es").is_dir()
    assert status == {"qlora_sft": "PASS", "merge": "PASS", "dpo": "PASS", "quantize": "PASS",
                      "speed_lora": "SKIPPED", "speed_full": "SKIPPED", "speed_qlora": "SKIPPED",
                      "headqa_eval": "PASS" if has_headqa else "SKIPPED", "fsdp": "SKIPPED"}
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["qlora_sft"]["loss_last"] < steps["qlora_sft"]["loss_first"]
    assert steps["merge"]["max_abs_logit_diff"] <= steps["merge"]["tolerance"]
    assert all(steps["quantize"][m]["size_ratio"] > 1 for m in ("bnb4", "bnb8"))
    assert "needs a CUDA GPU" in steps["speed_lora"]["reason"]
    if has_headqa:
        assert steps["headqa_eval"]["items"] == 50 and 0 <= steps["headqa_eval"]["accuracy_cpu"] <= 1
    assert "2 GPUs" in steps["fsdp"]["reason"] or "CUDA" in steps["fsdp"]["reason"]
    assert report["device"] == "cpu" and (tmp_path / "gpu_check.md").read_text().count("| SKIPPED |") == 4 + (not has_headqa)
    assert "MatMul8bitLt" not in proc.stderr and "Traceback" not in proc.stderr  # quiet: status lines only
    # no library warnings about what medtune does on purpose (mean-initialized new tokens, aligned token ids)
    assert "[transformers]" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr[-3000:]
    assert not torch.cuda.is_available() or report["cpu_smoke"]
