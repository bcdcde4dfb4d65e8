"""Encoder-decoder (T5 / FLAN-T5) fine-tuning with transformers' Seq2SeqTrainer.

Examples are tokenized once without padding; the collator pads each batch to its longest
member (labels with -100, ignored by the loss) and the sampler groups similar lengths, so
little compute goes to padding.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from peft import get_peft_model
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

from medtune.prompts import render_prompt
from medtune.recipe import Recipe
from medtune.train.common import CountTokens, trainer_setup
from medtune.train.sharding import FsdpOnCpu
from medtune.train.lora import peft_config


class Seq2SeqTrainerWithTokens(CountTokens, FsdpOnCpu, Seq2SeqTrainer):
    def _get_train_sampler(self, train_dataset=None):
        # The Trainer hands the sampler a copy without unused columns, so length grouping would
        # fall back to source lengths alone; our `length` column holds source + target tokens.
        return super()._get_train_sampler(self.train_dataset)


def tokenize_pairs(ds: datasets.Dataset, tokenizer, template: str, max_source: int, max_target: int) -> datasets.Dataset:
    """question/answer columns -> input_ids, attention_mask, labels (and length for grouping), unpadded."""

    def encode(batch):
        enc = tokenizer([render_prompt(template, q) for q in batch["question"]], max_length=max_source, truncation=True)
        labels = tokenizer(text_target=batch["answer"], max_length=max_target, truncation=True)["input_ids"]
        enc["labels"] = labels
        enc["length"] = [len(i) + len(l) for i, l in zip(enc["input_ids"], labels)]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenize")


def build_seq2seq_trainer(
    recipe: Recipe,
    model,
    tokenizer,
    splits: datasets.DatasetDict,
    run_dir: Path,
    *,
    callbacks: list[TrainerCallback] | None = None,
) -> Seq2SeqTrainerWithTokens:
    t = recipe.train

    def encode(ds):
        return tokenize_pairs(ds, tokenizer, recipe.prompt.template, t.max_source_length, t.max_target_length)

    eval_ds = encode(splits["validation"]) if len(splits.get("validation", [])) else None
    args, tracking_callbacks = trainer_setup(recipe, run_dir, model, has_eval=eval_ds is not None)
    adapter = peft_config(recipe, "SEQ_2_SEQ_LM")
    if adapter is not None:
        model = get_peft_model(model, adapter)
    return Seq2SeqTrainerWithTokens(
        model=model,
        # Generation metrics run once, after training, on the held-out split.
        args=Seq2SeqTrainingArguments(**args, predict_with_generate=False),
        train_dataset=encode(splits["train"]),
        eval_dataset=eval_ds,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        callbacks=tracking_callbacks + (callbacks or []),
    )
