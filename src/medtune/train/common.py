"""Pieces every trainer shares: precision, tracking, arguments, token counting, the fit loop."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from medtune.logs import bar, log
from medtune.recipe import Recipe, RecipeError

# transformers 5 renamed gradient checkpointing (the old name warns); older 5.x releases know only the old one.
CHECKPOINTING = next((f.name for f in fields(TrainingArguments) if f.name == "activation_checkpointing"), "gradient_checkpointing")


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


@dataclass
class TrainResult:
    global_step: int
    train_loss: float
    runtime_s: float
    train_tokens: int
    log_history: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.runtime_s if self.runtime_s else 0.0

    def to_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "train_loss": self.train_loss,
            "runtime_s": round(self.runtime_s, 2),
            "train_tokens": self.train_tokens,
            "train_tokens_per_s": round(self.tokens_per_s, 1),
            "log_history": self.log_history,
        }


def training_kwargs(recipe: Recipe, output_dir: Path, precision: str, report_to: list[str], *, has_eval: bool,
                    eval_each_epoch: bool = False) -> dict:
    """TrainingArguments fields every medtune trainer sets the same way from the recipe.

    The validation split is scored once, after training, by the pipeline (answer perplexity); the trainer
    evaluates on its own only every `train.eval_steps` when asked, or each epoch with `eval_each_epoch`
    (DPO, whose reward accuracy only its evaluation computes)."""
    t = recipe.train
    periodic = "steps" if t.eval_steps else "epoch" if eval_each_epoch else "no"
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        **{CHECKPOINTING: t.gradient_checkpointing},
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a fraction of all steps
        lr_scheduler_type=t.lr_scheduler,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        use_cpu=cpu_only(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=periodic if has_eval else "no",
        eval_steps=t.eval_steps,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.num_workers,
        report_to=report_to,
        run_name=recipe.name,
    )


def trainer_setup(recipe: Recipe, run_dir: Path, model, *, has_eval: bool, eval_each_epoch: bool = False) -> tuple[dict, list[TrainerCallback]]:
    """Arguments and tracking callbacks for a run of `model`, the same for every trainer."""
    precision = choose_precision(recipe.train.precision, model.config.model_type)
    report_to, callbacks = tracking(recipe, run_dir)
    kwargs = training_kwargs(recipe, run_dir / "checkpoints", precision, report_to, has_eval=has_eval, eval_each_epoch=eval_each_epoch)
    return kwargs, callbacks


class TrainingLine(TrainerCallback):
    """Training progress as one live line (step, loss, learning rate, tokens/s, ETA) in place of the
    Trainer's bar and its raw log dicts, and one summary line at the end."""

    def __init__(self, trainer):
        self.trainer, self.bar, self.first_loss, self.last_loss = trainer, None, None, None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = bar(desc="train", total=state.max_steps, initial=state.global_step, unit="step")
            self.started, self.tokens_before = time.perf_counter(), self.trainer.train_tokens

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        if "loss" in logs:
            self.first_loss = self.first_loss if self.first_loss is not None else logs["loss"]
            self.last_loss = logs["loss"]
        shown = {"loss": self.last_loss, "lr": logs.get("learning_rate"), "eval_loss": logs.get("eval_loss"),
                 "tok/s": self._tokens_per_s()}
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if v is not None}, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is None:
            return
        self.bar.close()
        losses = f", loss {self.first_loss:.3f} -> {self.last_loss:.3f}" if self.last_loss is not None else ""
        log.info("trained %d steps in %.0f s%s, %.0f tokens/s", state.global_step, time.perf_counter() - self.started,
                 losses, self._tokens_per_s())

    def _tokens_per_s(self) -> float:
        return (self.trainer.train_tokens - self.tokens_before) / max(time.perf_counter() - self.started, 1e-9)


def fit(trainer, *, resume: bool = False) -> TrainResult:
    """Train (from the latest checkpoint when resuming), showing one live progress line."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(TrainingLine(trainer))
    trainer.add_callback(GradientCheck(sharded=trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled))
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    runtime = time.perf_counter() - start
    return TrainResult(
        global_step=trainer.state.global_step,
        train_loss=output.training_loss,
        runtime_s=runtime,
        train_tokens=trainer.train_tokens,
        log_history=list(trainer.state.log_history),
    )


class GradientCheck(TrainerCallback):
    """Fails the run at its first optimizer step when no trainable parameter received a gradient: the
    loss would stay exactly where it is for the whole run (a frozen graph, an adapter the loss never
    reaches), which a training line alone would only show as a flat curve."""

    def __init__(self, *, sharded: bool):
        self.checked = sharded  # a rank holds a shard of each gradient: some may be all zero

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.checked or model is None:
            return
        self.checked = True
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if trainable and all(p.grad is None or not p.grad.any() for _, p in trainable):
            names = ", ".join(n for n, _ in trainable[:3])
            raise RecipeError(
                f"no trainable parameter received a gradient at step {state.global_step + 1} "
                f"({len(trainable)} trainable, e.g. {names}): the loss does not depend on them. "
                "Check the LoRA target_modules, that the inputs reach the adapted layers, and that "
                "the model is not in inference mode.")
