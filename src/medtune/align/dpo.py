"""DPO with TRL's DPOTrainer, starting from a base model, an SFT run's model or an SFT run's LoRA adapter.

The reference model is the frozen starting point, and no start holds a second copy of its weights:

  * full fine-tuning (a base, or an SFT run's `model/`): the reference log-probs of every pair are
    computed once with the starting weights before the first step (TRL's `precompute_ref_log_probs`).
    Keeping a frozen copy instead would double the memory for the same numbers.
  * a new LoRA adapter on a full model: the reference is the same model with the adapter disabled,
    which is exactly the starting model since a fresh adapter starts as a no-op.
  * an SFT run's `adapter/`: DPO goes on training that adapter. Disabling it would make the bare base
    the reference, not the SFT model, so TRL loads a frozen copy of the adapter as a second adapter
    named "ref" on the same base (megabytes of LoRA weights, one copy of the base). TRL's copy leaves
    out trainable-token rows (chat markers the SFT run added), so the whole adapter state is copied
    here again; the run then saves the trained adapter alone.

Pairs are conversational: the recipe's system message and templated question, then the chosen or
rejected assistant turn, rendered with the model's chat template exactly as in SFT.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate.utils import is_peft_model
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from torch.nn.utils.rnn import pad_sequence
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from medtune.align.pairs import Generate, Pair
from medtune.models import Start
from medtune.predict import Predictor
from medtune.prompts import chat_messages
from medtune.recipe import PairsConfig, PromptConfig, Recipe, RecipeError
from medtune.train.common import CountTokens, trainer_setup
from medtune.train.sharding import FsdpOnCpu
from medtune.train.lora import peft_config

POLICY, REFERENCE = "default", "ref"  # PEFT's name for the trained adapter; TRL's for its frozen copy


def check_start(start: Start, *, method: str | None = None) -> None:
    """What DPO can start from, checked before any weights are read: a causal LM, and an adapter start goes
    on training its adapter."""
    if start.adapter and method == "full":
        raise RecipeError(
            f"model: {start.adapter} is a LoRA adapter, and DPO goes on training it: set train.method=lora (or qlora), "
            "or fold it into its base first with `medtune merge-adapter` and start from the merged model"
        )
    if start.base.kind != "causal":
        raise RecipeError(f"align: DPO trains causal LMs; {start.base.ref} is a {start.base.kind} model")


def sampler(model, tokenizer, prompt: PromptConfig, cfg: PairsConfig) -> Generate:
    """The starting model's answers, drawn with the pairs' generation settings, the same on every run."""
    predictor = Predictor(model, tokenizer, template=prompt.template, system=prompt.system, generation=cfg.generation)

    def generate(questions: list[str]) -> list[str]:
        torch.manual_seed(cfg.seed)
        return predictor.predict(questions, batch_size=cfg.batch_size, progress=True)

    return generate


def pairs_dataset(pairs: list[Pair], prompt: PromptConfig) -> datasets.Dataset:
    """Pairs in TRL's conversational preference format."""
    return datasets.Dataset.from_list([
        {
            "prompt": chat_messages(p.record.question, prompt.template, prompt.system),
            "chosen": [{"role": "assistant", "content": p.record.answer}],
            "rejected": [{"role": "assistant", "content": p.record.rejected}],
        }
        for p in pairs
    ])


class MedtuneDPOTrainer(CountTokens, FsdpOnCpu, DPOTrainer):
    """DPOTrainer with token counting, length-grouped batches, counted overlong pairs and a clean final save."""

    def __init__(self, *args, **kwargs):
        self.too_long: dict[str, int] = {}  # set first: TRL's __init__ prepares the datasets
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        before = len(dataset)
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        # TRL drops pairs whose prompt alone fills max_length; the report says how many.
        self.too_long[dataset_name] = before - len(dataset)

        # Length-grouped batching needs a length per pair: its longer row, prompt plus the longer answer.
        def length(ex):
            return {args.length_column_name: len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))}

        return dataset.map(length, desc=f"lengths of {dataset_name} pairs")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self.args.length_column_name not in self._signature_columns:
            self._signature_columns.append(self.args.length_column_name)  # kept for the length-grouped sampler

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        # The frozen "ref" adapter is the starting point, rebuilt from it on every start (resumes included):
        # the run's result is the trained adapter alone.
        super().save_model(output_dir, _internal_call)
        shutil.rmtree(Path(output_dir or self.args.output_dir) / REFERENCE, ignore_errors=True)

    def perplexity_inputs(self) -> tuple[datasets.Dataset, Any]:
        """The validation pairs' prompt + chosen answer as (input_ids, attention_mask, labels) and their collator.

        The labels are the chosen answer's tokens as the DPO loss reads them (same template, same
        truncation), so held-out answer perplexity means the same as after SFT.
        """
        limit = self.args.max_length

        def chosen(ex):
            ids = (ex["prompt_ids"] + ex["chosen_ids"])[:limit]
            labels = ([-100] * len(ex["prompt_ids"]) + ex["chosen_ids"])[:limit]
            return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

        view = self.eval_dataset.map(chosen, remove_columns=self.eval_dataset.column_names, desc="chosen answers")
        pad_id = self.processing_class.pad_token_id

        def collate(rows):
            # Right padding: real tokens keep positions 0..n-1, as in training.
            return {
                key: pad_sequence([torch.tensor(r[key]) for r in rows], batch_first=True, padding_value=value)
                for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100))
            }

        return view, collate


def build_dpo_trainer(
    recipe: Recipe,
    model,
    tokenizer,
    pairs: dict[str, list[Pair]],
    run_dir: Path,
    *,
    new_token_ids: list[int] | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> MedtuneDPOTrainer:
    """A DPO trainer over the train (and validation) pairs; `model` is the loaded start, its tokenizer prepared."""
    a, t, p = recipe.align, recipe.train, recipe.prompt
    adapter_start = is_peft_model(model)
    has_eval = len(pairs.get("validation", [])) > 0
    common, tracking_callbacks = trainer_setup(recipe, run_dir, model, has_eval=has_eval, eval_each_epoch=True)
    args = DPOConfig(
        **common,
        beta=a.beta,
        loss_type=[a.loss_type],
        label_smoothing=a.label_smoothing,
        max_length=t.max_length,
        precompute_ref_log_probs=t.method == "full",
    )
    trainer = MedtuneDPOTrainer(
        model=model,
        args=args,
        train_dataset=pairs_dataset(pairs["train"], p),
        eval_dataset=pairs_dataset(pairs["validation"], p) if has_eval else None,
        processing_class=tokenizer,
        peft_config=None if adapter_start else peft_config(recipe, "CAUSAL_LM", new_token_ids),
        callbacks=tracking_callbacks + (callbacks or []),
    )
    if adapter_start:
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        state = get_peft_model_state_dict(unwrapped, adapter_name=POLICY)
        set_peft_model_state_dict(unwrapped, state, adapter_name=REFERENCE)
    return trainer


def reward_history(log_history: list[dict]) -> dict[str, list[dict]]:
    """Reward accuracy (chosen rewarded above rejected) and mean margin per logging and evaluation step."""
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    for entry in log_history:
        for split, prefix in (("train", "rewards/"), ("eval", "eval_rewards/")):
            if prefix + "accuracies" in entry:
                out[split].append({"step": entry["step"], "accuracy": entry[prefix + "accuracies"],
                                   "margin": entry[prefix + "margins"], "chosen": entry[prefix + "chosen"],
                                   "rejected": entry[prefix + "rejected"]})
    return out
