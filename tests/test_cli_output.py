"""What a person sees on the command line: medtune's status lines, one live training line, no library noise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _train(recipe_dict: dict, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / "r.yaml"
    # No checkpoint before the end: two saved in one second make transformers warn that it sorts them by number.
    recipe_dict["train"]["save_steps"] = 100
    recipe.write_text(yaml.safe_dump(recipe_dict))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_", "TRANSFORMERS_", "DATASETS_"))}
    return subprocess.run([sys.executable, "-m", "medtune.cli", *flags, "train", str(recipe)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=600)


def test_lora_run_prints_status_lines_not_library_noise(causal_recipe_dict, tmp_path):
    causal_recipe_dict["eval"]["metrics"] = ["perplexity"]
    proc = _train(causal_recipe_dict, tmp_path)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.replace("\r", "\n")
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("model: ") and "(local: " in lines[0]
    assert any(line.startswith("trained 6 steps in ") and "tokens/s" in line for line in lines)
    for noise in ("{'loss'", "Warning", "warnings.warn", "Tokenizing", "Loading weights"):
        assert noise not in err, noise  # the Trainer's dicts, library warnings, the libraries' own bars
    assert {line.split(":")[0] for line in lines if "%|" in line} <= {"train", "perplexity", "generate"}  # medtune's bars only
    assert proc.stdout.strip().splitlines()[-1] == str(next((tmp_path / "runs").iterdir()))  # the run directory, last


def test_quiet_prints_only_the_run_directory(recipe_dict, tmp_path):
    proc = _train(recipe_dict, tmp_path, "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""
    assert proc.stdout.strip() == str(next((tmp_path / "runs").iterdir()))


def test_verbose_lets_the_libraries_speak(recipe_dict, tmp_path):
    proc = _train(recipe_dict, tmp_path, "-v")
    assert proc.returncode == 0, proc.stderr
    assert "model: " in proc.stderr and "%|" in proc.stderr.replace("\r", "\n")  # the libraries' own bars are back
