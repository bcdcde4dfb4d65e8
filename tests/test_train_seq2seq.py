"""Seq2seq training end to end on a tiny random T5: collation, CLI run, report, resume, DDP, predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import medtune
from medtune.models import load_tokenizer, resolve_model
from medtune.pipeline import run
from medtune.recipe import recipe_from_dict
from medtune.train.seq2seq import tokenize_pairs

ROOT = Path(__file__).resolve().parents[1]


def _write(recipe_dict: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(recipe_dict))
    return path


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medtune.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)


def test_dynamic_padding_pads_labels_with_minus_100(tiny_t5):
    import datasets
    from transformers import DataCollatorForSeq2Seq, T5ForConditionalGeneration

    tok = load_tokenizer(resolve_model(str(tiny_t5)))
    ds = datasets.Dataset.from_dict({"question": ["What is gout ?", "How to treat chronic lupus in adults ?"],
                                     "answer": ["A disease .", "Treatment of lupus includes rest , medicines and visits ."]})
    enc = tokenize_pairs(ds, tok, "Q: {question}", 64, 64)
    assert enc["length"] == [len(i) + len(l) for i, l in zip(enc["input_ids"], enc["labels"])]
    assert all(seq[-1] == tok.eos_token_id for seq in enc["labels"])  # the model learns to stop
    batch = DataCollatorForSeq2Seq(tok, model=T5ForConditionalGeneration.from_pretrained(tiny_t5), label_pad_token_id=-100)(list(enc))
    short, long_ = (len(enc["labels"][0]), len(enc["labels"][1]))
    assert batch["labels"].shape == (2, max(short, long_))  # padded to the batch's longest, not a fixed max
    assert (batch["labels"][0, short:] == -100).all() and (batch["labels"][0, :short] != -100).all()
    assert batch["decoder_input_ids"][0, 0] == 0  # decoder starts from T5's start token


def test_train_cli_writes_run_report_and_model(recipe_dict, tmp_path):
    proc = _cli("train", str(_write(recipe_dict, tmp_path / "r.yaml")), "--set", "train.max_steps=8")
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("tiny-")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train"]["global_step"] == 8
    losses = [h["loss"] for h in report["train"]["log_history"] if "loss" in h]
    assert len(losses) == 8 and losses[-1] < losses[0]  # lr 3e-3 on a tiny model: loss must fall
    assert report["train"]["train_tokens"] > 0 and report["eval"]["n"] == 8
    assert set(report["eval"]["metrics"]) == {"perplexity", "rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf"}
    # Held-out answer perplexity over label tokens, before and after: training lowers it.
    assert report["eval"]["perplexity"]["perplexity"] < report["eval"]["before"]["perplexity"]["perplexity"]
    assert report["data"]["sizes"]["train"] > 0
    assert (run_dir / "report.md").read_text().count("rouge1") >= 1
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 8
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["max_steps"] == 8
    assert (run_dir / "model" / "medtune.json").is_file()
    assert not list(run_dir.glob("**/*.tmp"))


def test_invalid_recipe_fails_before_loading_model(recipe_dict, tmp_path):
    recipe_dict["model"] = str(tmp_path / "does-not-exist")
    recipe_dict["train"]["batch_size"] = 0
    proc = _cli("train", str(_write(recipe_dict, tmp_path / "bad.yaml")))
    assert proc.returncode == 2
    assert "bad.yaml: invalid recipe" in proc.stderr and "train.batch_size: Input should be greater than 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_offline_hub_id_fails_fast_with_local_copy_hint(recipe_dict, tmp_path):
    proc = _cli("train", str(_write(recipe_dict, tmp_path / "r.yaml")), "--set", "model=google/flan-t5-base",
                env={"HF_HUB_OFFLINE": "1"}, timeout=60)
    assert proc.returncode == 2
    assert "hf download google/flan-t5-base --local-dir ./models/flan-t5-base" in proc.stderr
    assert "--set model=./models/flan-t5-base" in proc.stderr


def test_fp16_is_refused_for_t5(recipe_dict, tmp_path):
    proc = _cli("train", str(_write(recipe_dict, tmp_path / "r.yaml")), "--set", "train.precision=fp16")
    assert proc.returncode == 2 and "t5 models overflow in fp16" in proc.stderr


KILL_AFTER_SAVE = """
import os, sys
from transformers import TrainerCallback
from medtune.pipeline import run
from medtune.recipe import load_recipe

class Die(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        if state.global_step == 4:
            os._exit(17)  # as abrupt as a kill: no cleanup, no final save

run(load_recipe(sys.argv[1]), run_dir=sys.argv[2], callbacks=[Die()])
"""


def test_killed_run_resumes_to_the_same_step_and_loss(recipe_dict, tmp_path):
    recipe_dict["train"].update(max_steps=8, save_steps=4, save_total_limit=None)
    recipe = _write(recipe_dict, tmp_path / "r.yaml")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, str(recipe), str(tmp_path / "killed")], capture_output=True, text=True)
    assert killed.returncode == 17, killed.stderr
    assert (tmp_path / "killed" / "checkpoints" / "checkpoint-4").is_dir()
    assert not (tmp_path / "killed" / "report.json").exists()

    resumed = _cli("train", "--resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    straight = _cli("train", str(recipe), "--run-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    a = json.loads((tmp_path / "killed" / "report.json").read_text())["train"]
    b = json.loads((tmp_path / "straight" / "report.json").read_text())["train"]
    assert a["global_step"] == b["global_step"] == 8
    last = lambda t: [h["loss"] for h in t["log_history"] if "loss" in h and h["step"] == 8][0]  # noqa: E731
    assert last(a) == pytest.approx(last(b), rel=1e-4)


def test_two_process_ddp_on_cpu(recipe_dict, tmp_path):
    recipe_dict["train"].update(max_steps=-1, epochs=1, batch_size=2)
    recipe = _write(recipe_dict, tmp_path / "r.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "medtune.cli", "train", str(recipe), "--run-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    n_train = report["data"]["sizes"]["train"]
    # Two ranks of batch 2 share one epoch: 4 examples per optimizer step.
    assert report["train"]["global_step"] == -(-n_train // 4)
    assert proc.stdout.count(str(tmp_path / "ddp")) == 2  # each rank returns the same run directory


def test_predict_api_and_cli(recipe_dict, tmp_path):
    recipe_dict["tracking"] = {"backend": "tensorboard"}
    run_dir = run(recipe_from_dict(recipe_dict), run_dir=tmp_path / "run")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # logs stay inside the run
    predictor = medtune.load(run_dir)
    assert predictor.template == "Please answer this question: {question}"
    questions = ["What causes gout ?", "How to treat a long standing case of psoriasis in adults ?", "What is lupus ?"]
    batched = predictor.predict(questions, batch_size=2)
    assert batched == [predictor.predict(q)[0] for q in questions]  # length-sorted batching keeps the order
    short = predictor.predict(questions, max_new_tokens=2)
    tok = predictor.tokenizer
    assert all(len(tok(s, add_special_tokens=False).input_ids) <= 2 for s in short)

    proc = _cli("predict", str(run_dir), "What causes gout ?", "--max-new-tokens", "4", "--num-beams", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out[0]["question"] == "What causes gout ?"
    assert out[0]["answer"] == predictor.predict("What causes gout ?", max_new_tokens=4, num_beams=2)[0]
