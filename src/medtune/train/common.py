"""Pieces every trainer shares: precision choice, tracking backends, token counting."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback
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


def tracking(recipe: Recipe, run_dir: Path) -> tuple[list[str], list[TrainerCallback]]:
    """`report_to` names and extra callbacks for the recipe's tracking backend."""
    backend = recipe.tracking.backend
    if backend == "tensorboard":
        # Our own callback so the event files land in this run's folder, whatever ran before.
        callback = TensorBoardCallback()
        callback.logging_dir = str(run_dir / "tensorboard")
        return [], [callback]
    if backend == "wandb":
        os.environ.setdefault("WANDB_PROJECT", recipe.tracking.project)
    elif backend == "mlflow":
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", recipe.tracking.project)
    return ([] if backend == "none" else [backend]), []


class CountTokens:
    """Trainer mixin: counts the real (non-padding) tokens of training batches, not eval ones.

    Encoder-decoder models process source and target tokens, so both count; a decoder-only
    model's labels are its inputs, so only the inputs count. Packed batches have no padding.
    """

    train_tokens = 0

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        if self.model.config.is_encoder_decoder:
            tokens += int((inputs["labels"] != -100).sum())
        self.train_tokens += tokens
        return super().training_step(model, inputs, *args, **kwargs)
