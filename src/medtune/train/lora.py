"""LoRA and QLoRA through PEFT: adapter configuration and the 4-bit base for QLoRA."""

from __future__ import annotations

import torch
from peft import LoraConfig as PeftLoraConfig
from transformers import BitsAndBytesConfig

from medtune.recipe import Recipe, RecipeError


def check_method(recipe: Recipe) -> None:
    """Refuse what cannot run here before any weights are read."""
    if recipe.train.method == "qlora" and not torch.cuda.is_available():
        raise RecipeError(
            "train.method=qlora loads the base model in 4-bit NF4 with bitsandbytes, which needs a CUDA GPU, "
            "and this machine has none. Use train.method=lora here (LoRA on the full-precision base), "
            "or run the recipe on a GPU."
        )


def quantization_config(recipe: Recipe) -> BitsAndBytesConfig | None:
    if recipe.train.method != "qlora":
        return None
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def peft_config(recipe: Recipe, task_type: str, new_token_ids: list[int] | None = None) -> PeftLoraConfig | None:
    """The adapter for lora/qlora runs; None for full fine-tuning.

    Tokens the run added to the vocabulary (e.g. ChatML markers) get trainable embedding rows,
    so the model can learn them without unfreezing the whole embedding matrix.
    """
    if recipe.train.method == "full":
        return None
    lora = recipe.train.lora
    return PeftLoraConfig(
        task_type=task_type,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        trainable_token_indices=new_token_ids or None,
    )
