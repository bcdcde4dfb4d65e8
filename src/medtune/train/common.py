"""Pieces every trainer shares: precision choice, tracking backends, token counting."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from medtune.recipe import Recipe, RecipeError


def cpu_only() -> bool:
    """No accelerator: training (and torchrun's process group) must be set up for CPU and gloo."""
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def choose_precision(requested: str, model_type: str) -> str:
    """fp32/bf16/fp16 for this machine. T5 overflows in fp16, so it never gets it."""
    if requested == "fp16" and model_type in {"t5", "mt5", "umt5"}:
        raise RecipeError(f"train.precision=fp16: {model_type} models overflow in fp16; use bf16 or fp32")
    if requested == "fp16" and not torch.cuda.is_available():
        raise RecipeError("train.precision=fp16 needs a CUDA GPU; use fp32 on CPU")
    if requested == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise RecipeError("train.precision=bf16 needs a GPU with bf16 support; use fp32 here")
    if requested != "auto":
        return requested
    # CPUs here lack native bf16 (emulated bf16 is many times slower than fp32).
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def tracking_report_to(recipe: Recipe, run_dir: Path) -> list[str]:
    backend = recipe.tracking.backend
    if backend == "none":
        return []
    if backend == "tensorboard":
        # The Trainer reads this variable for the event-file folder; keep it inside the run.
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    elif backend == "wandb":
        os.environ.setdefault("WANDB_PROJECT", recipe.tracking.project)
    elif backend == "mlflow":
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", recipe.tracking.project)
    return [backend]


class TokenCounter:
    """Counts the real (non-padding) tokens the collator hands to the model, source and target.

    Wraps the data collator, so the count is exact whatever the padding strategy; the
    Trainer's own counter sees input_ids only and counts padding.
    """

    def __init__(self, collator, pad_token_id: int):
        self.collator = collator
        self.pad_token_id = pad_token_id
        self.tokens = 0

    def __call__(self, features):
        batch = self.collator(features)
        self.tokens += int((batch["input_ids"] != self.pad_token_id).sum())
        if "labels" in batch:
            self.tokens += int((batch["labels"] != -100).sum())
        return batch
