"""Causal-LM training with TRL's SFTTrainer: supervised fine-tuning on chat-formatted QA pairs, or
continued pre-training on plain text.

sft: each record becomes a prompt (optional system message + the user's question in the recipe's
template) and a completion (the assistant's answer). TRL renders both with the tokenizer's chat
template and masks the prompt, so the loss falls on the answer and its end-of-turn token only.
pretrain: each record is one text (a text source's passage, or a QA pair's question and answer)
followed by EOS, with the loss on every token; sources mixed by weight give Meditron-style replay.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from medtune.models.vocab import align_token_ids, grow_embeddings
from medtune.prompts import chat_messages
from medtune.recipe import Recipe, RecipeError
from medtune.train.common import CountTokens, trainer_setup
from medtune.train.sharding import FsdpOnCpu
from medtune.train.lora import peft_config

# Used when a model ships no chat template of its own (base models); saved with the run.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
PAD_CANDIDATES = ["<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|endoftext|>", "<unk>"]


class SFTTrainerWithTokens(CountTokens, FsdpOnCpu, SFTTrainer):
    pass


def to_chat(ds: datasets.Dataset, template: str, system: str | None) -> datasets.Dataset:
    def convert(row):
        return {
            "prompt": chat_messages(row["question"], template, system),
            "completion": [{"role": "assistant", "content": row["answer"]}],
        }

    return ds.map(convert, remove_columns=ds.column_names, desc="chat format")


def to_text(ds: datasets.Dataset) -> datasets.Dataset:
    def convert(row):
        return {"text": f"{row['question']}\n\n{row['answer']}" if row["question"] else row["answer"]}

    return ds.map(convert, remove_columns=ds.column_names, desc="plain text")


def _check_questions(splits: datasets.DatasetDict) -> None:
    """Plain-text records (no question) have nothing to answer: they belong to a pretrain run."""
    for name, ds in splits.items():
        if n := sum(not q for q in ds["question"]):
            raise RecipeError(f"data: {n} {name} records have no question (plain text, e.g. loader: text); "
                              "train on them with train.objective: pretrain")


def prepare_tokenizer(tokenizer, model) -> list[int]:
    """Give the tokenizer a chat template and a pad token distinct from EOS; returns added token ids.

    With pad == EOS the end of every answer looks like padding and the model never learns to
    stop, so an existing distinct token is preferred, and one is added only as a last resort.
    """
    added: list[str] = []
    if not tokenizer.chat_template:
        added += [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
        tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
        tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        pad = next((t for t in PAD_CANDIDATES if t in vocab and vocab[t] != tokenizer.eos_token_id), None)
        if pad is None:
            pad = "<|pad|>"
            added.append(pad)
        tokenizer.pad_token = pad
    if added:
        grow_embeddings(model, tokenizer)
    align_token_ids(model, tokenizer)
    return tokenizer.convert_tokens_to_ids(added)


def build_sft_trainer(
    recipe: Recipe,
    model,
    tokenizer,
    splits: datasets.DatasetDict,
    run_dir: Path,
    *,
    callbacks: list[TrainerCallback] | None = None,
) -> SFTTrainerWithTokens:
    t, p = recipe.train, recipe.prompt
    new_tokens = prepare_tokenizer(tokenizer, model)
    has_eval = len(splits.get("validation", [])) > 0
    common, tracking_callbacks = trainer_setup(recipe, run_dir, model, has_eval=has_eval)
    pretrain = t.objective == "pretrain"
    if not pretrain:
        _check_questions(splits)
    if t.packing:
        # TRL makes a packed batch one padding-free sequence. With SDPA (no varlen kernel) its rows would attend
        # over their whole concatenation under a block mask, quadratic in its total length; one row per forward
        # pass keeps attention within max_length, and gradient accumulation restores the recipe's batch of rows.
        common |= dict(per_device_train_batch_size=1, gradient_accumulation_steps=t.batch_size * t.gradient_accumulation_steps,
                       train_sampling_strategy="random")  # packed rows have equal length already
    args = SFTConfig(
        **common,
        max_length=t.max_length,
        packing=t.packing,
        eval_packing=False,  # held-out perplexity is measured per example
        completion_only_loss=not pretrain,
        eos_token=tokenizer.eos_token,
    )
    convert = to_text if pretrain else (lambda ds: to_chat(ds, p.template, p.system))
    return SFTTrainerWithTokens(
        model=model,
        args=args,
        train_dataset=convert(splits["train"]),
        eval_dataset=convert(splits["validation"]) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config(recipe, "CAUSAL_LM", new_tokens),
        callbacks=tracking_callbacks + (callbacks or []),
    )
