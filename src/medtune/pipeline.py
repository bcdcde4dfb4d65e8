"""A recipe run from top to bottom: data -> model -> train -> save -> evaluate -> report.

This is the only module that wires the stages together; each stage stays usable alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch.distributed as dist
from accelerate import PartialState
from transformers import TrainerCallback

from medtune.data import prepare_data
from medtune.eval.generation import evaluate_generation
from medtune.eval.report import plot_loss_curve, write_report
from medtune.io import write_atomic
from medtune.models import load_model, load_tokenizer, resolve_model
from medtune.predict import Predictor, write_model_card
from medtune.recipe import Recipe, dump_recipe
from medtune.train.common import cpu_only
from medtune.train.seq2seq import train_seq2seq


def new_run_dir(recipe: Recipe) -> Path:
    """runs/<name>-<timestamp>, chosen once by the main process and shared with the others."""
    chosen = [""]
    if PartialState().is_main_process:
        base = Path(recipe.output_dir) / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, suffix = base, 1
        while path.exists():  # two runs started in the same second
            path, suffix = Path(f"{base}-{suffix}"), suffix + 1
        chosen = [str(path)]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


def run(recipe: Recipe, *, run_dir: Path | None = None, resume: bool = False, callbacks: list[TrainerCallback] | None = None) -> Path:
    state = PartialState(cpu=cpu_only())  # joins the process group under torchrun / accelerate launch
    resolved = resolve_model(recipe.model.name_or_path, recipe.model.kind, recipe.model.revision)
    if resolved.kind != "seq2seq":
        raise NotImplementedError(f"{resolved.describe()}: causal-LM training is not available yet")
    run_dir = Path(run_dir) if run_dir else new_run_dir(recipe)
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(run_dir / "recipe.yaml", dump_recipe(recipe))
    data = prepare_data(recipe.data)
    tokenizer = load_tokenizer(resolved)
    model = load_model(resolved)
    trainer, result = train_seq2seq(recipe, model, tokenizer, data.splits, run_dir, resume=resume, callbacks=callbacks)

    model_dir = run_dir / "model"
    trainer.save_model(str(model_dir))
    state.wait_for_everyone()
    if state.is_main_process:
        write_model_card(model_dir, template=recipe.prompt.template, generation=recipe.eval.generation, resolved=resolved)
        predictor = Predictor(trainer.model, tokenizer, template=recipe.prompt.template, generation=recipe.eval.generation)
        split = recipe.eval.split if len(data.splits[recipe.eval.split]) else "validation"
        evaluation = evaluate_generation(predictor, data.splits[split], recipe.eval, split=split)
        _write_predictions(run_dir / "predictions.jsonl", evaluation.pop("predictions", []))
        plots = {}
        if plot_loss_curve(result.log_history, run_dir / "loss_curve.png"):
            plots["loss_curve"] = "loss_curve.png"
        write_report(
            run_dir,
            {
                "name": recipe.name,
                "model": resolved.describe(),
                "recipe": "recipe.yaml",
                "data": data.report,
                "train": result.to_dict(),
                "eval": evaluation,
                "plots": plots,
            },
        )
    state.wait_for_everyone()
    return run_dir


def _write_predictions(path: Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
