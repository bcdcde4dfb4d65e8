"""Encoder-decoder (T5 / FLAN-T5) fine-tuning with transformers' Seq2SeqTrainer.

Examples are tokenized once without padding; the collator pads each batch to its longest
member (labels with -100, ignored by the loss) and the sampler groups similar lengths, so
little compute goes to padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

from medtune.recipe import Recipe
from medtune.train.common import CountTokens, choose_precision, cpu_only, tracking


class Seq2SeqTrainerWithTokens(CountTokens, Seq2SeqTrainer):
    pass


@dataclass
class TrainResult:
    global_step: int
    train_loss: float
    runtime_s: float
    train_tokens: int
    eval_loss: float | None = None
    log_history: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.runtime_s if self.runtime_s else 0.0

    def to_dict(self) -> dict:
        return {
            "global_step": self.global_step,
            "train_loss": self.train_loss,
            "eval_loss": self.eval_loss,
            "runtime_s": round(self.runtime_s, 2),
            "train_tokens": self.train_tokens,
            "train_tokens_per_s": round(self.tokens_per_s, 1),
            "log_history": self.log_history,
        }


def render_prompt(template: str, question: str) -> str:
    return template.format(question=question)


def tokenize_pairs(ds: datasets.Dataset, tokenizer, template: str, max_source: int, max_target: int) -> datasets.Dataset:
    """question/answer columns -> input_ids, attention_mask, labels (and length for grouping), unpadded."""

    def encode(batch):
        enc = tokenizer([render_prompt(template, q) for q in batch["question"]], max_length=max_source, truncation=True)
        labels = tokenizer(text_target=batch["answer"], max_length=max_target, truncation=True)["input_ids"]
        enc["labels"] = labels
        enc["length"] = [len(i) + len(l) for i, l in zip(enc["input_ids"], labels)]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")


def training_args(recipe: Recipe, output_dir: Path, precision: str, report_to: list[str], *, has_eval: bool) -> Seq2SeqTrainingArguments:
    t = recipe.train
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    return Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
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
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.num_workers,
        report_to=report_to,
        run_name=recipe.name,
        predict_with_generate=False,  # generation metrics run once, after training, on the test split
    )


def train_seq2seq(
    recipe: Recipe,
    model,
    tokenizer,
    splits: datasets.DatasetDict,
    run_dir: Path,
    *,
    resume: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[Seq2SeqTrainer, TrainResult]:
    t = recipe.train

    def encode(ds):
        return tokenize_pairs(ds, tokenizer, recipe.prompt.template, t.max_source_length, t.max_target_length)

    train_ds = encode(splits["train"])
    eval_ds = encode(splits["validation"]) if len(splits.get("validation", [])) else None
    precision = choose_precision(t.precision, model.config.model_type)
    report_to, tracking_callbacks = tracking(recipe, run_dir)
    trainer = Seq2SeqTrainerWithTokens(
        model=model,
        args=training_args(recipe, run_dir / "checkpoints", precision, report_to, has_eval=eval_ds is not None),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=tracking_callbacks + (callbacks or []),
    )
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    runtime = time.perf_counter() - start
    eval_loss = trainer.evaluate()["eval_loss"] if eval_ds is not None else None
    result = TrainResult(
        global_step=trainer.state.global_step,
        train_loss=output.training_loss,
        runtime_s=runtime,
        train_tokens=trainer.train_tokens,
        eval_loss=eval_loss,
        log_history=list(trainer.state.log_history),
    )
    return trainer, result
