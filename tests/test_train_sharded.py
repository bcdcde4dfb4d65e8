"""FSDP through `accelerate launch --config_file recipes/accelerate/fsdp-cpu.yaml`: two CPU processes (gloo)
train a tiny Llama sharded by decoder layer, like one process on the same data; sharded checkpoints
resume; the run's model is one full folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
FSDP_CPU = ROOT / "recipes" / "accelerate" / "fsdp-cpu.yaml"
TRAIN_ROWS = 24  # 40 rows less 20% validation and 20% test

KILL_AFTER_SAVE = """
import os, sys
from transformers import TrainerCallback
from medtune.pipeline import run
from medtune.recipe import load_recipe

class Die(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        if state.global_step == 4:
            os._exit(17)  # every rank, after its shard is written: no final save

run(load_recipe(sys.argv[1]), run_dir=sys.argv[2], callbacks=[Die()])
"""


def _launch(*args: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CPU), "--main_process_port", str(port), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _losses(run_dir: Path) -> list[float]:
    report = json.loads((run_dir / "report.json").read_text())
    return [h["loss"] for h in report["train"]["log_history"] if "loss" in h]


@pytest.fixture(scope="module")
def recipe(tiny_llama, qa_jsonl, tmp_path_factory) -> Path:
    """Full fine-tuning where every step sees the whole training split: 1 process x 24 rows, or 2 x 12."""
    tmp = tmp_path_factory.mktemp("fsdp")
    recipe = {
        "name": "fsdp", "model": str(tiny_llama),
        "data": {"sources": [{"loader": "jsonl", "path": str(qa_jsonl)}], "split": {"validation": 0.2, "test": 0.2, "seed": 0}},
        "prompt": {"template": "{question}", "system": "You answer medical questions."},
        "train": {"method": "full", "max_steps": 8, "batch_size": TRAIN_ROWS // 2, "learning_rate": 3e-3, "logging_steps": 1,
                  "save_steps": 4, "save_total_limit": None, "max_length": 64},
        "eval": {"max_samples": 4, "batch_size": 4, "generation": {"max_new_tokens": 4}},
        "tracking": {"backend": "none"}, "output_dir": str(tmp / "runs"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def sharded_run(recipe) -> Path:
    run_dir = recipe.parent / "sharded"
    proc = _launch("-m", "medtune.cli", "train", str(recipe), "--run-dir", str(run_dir), port=29541)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("trained 8 steps") == 1  # one set of status lines, not one per process
    return run_dir


def test_two_sharded_cpu_processes_train_like_one(recipe, sharded_run, tmp_path):
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "train", str(recipe), "--run-dir", str(single),
                           "--set", f"train.batch_size={TRAIN_ROWS}"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _losses(single), _losses(sharded_run)
    assert len(one) == len(two) == 8
    assert two[-1] < two[0] - 0.3  # it learns
    # Same rows, same seed: the curves agree within 1% at every step. They are not identical because each
    # process averages the loss over its own answer tokens before the two averages are averaged.
    assert two == pytest.approx(one, rel=0.01)

    checkpoint = sharded_run / "checkpoints" / "checkpoint-8"
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # The run's model is whole: every tensor at its full shape, loadable without FSDP.
    full, reference = load_file(sharded_run / "model" / "model.safetensors"), load_file(single / "model" / "model.safetensors")
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in reference.items()}
    a = json.loads((sharded_run / "report.json").read_text())["eval"]["metrics"]["perplexity"]
    b = json.loads((single / "report.json").read_text())["eval"]["metrics"]["perplexity"]
    assert a == pytest.approx(b, rel=0.05)  # evaluated on the gathered model


def test_a_killed_sharded_run_resumes_from_its_sharded_checkpoint(recipe, sharded_run, tmp_path):
    script = tmp_path / "die.py"
    script.write_text(KILL_AFTER_SAVE)
    killed = tmp_path / "killed"
    proc = _launch(str(script), str(recipe), str(killed), port=29542)
    assert proc.returncode != 0
    assert (killed / "checkpoints" / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()
    assert not (killed / "report.json").exists()

    resumed = _launch("-m", "medtune.cli", "train", "--resume", str(killed), port=29543)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    report = json.loads((killed / "report.json").read_text())["train"]
    assert report["global_step"] == 8
    assert _losses(killed)[-1] == pytest.approx(_losses(sharded_run)[-1], rel=1e-4)
