"""LoRA and QLoRA through PEFT: adapter configuration and the 4-bit base for QLoRA."""

from __future__ import annotations

import importlib.util

import torch
from peft import LoraConfig as PeftLoraConfig
from transformers import BitsAndBytesConfig

from medtune.recipe import Recipe, RecipeError
from medtune.train.sharding import fsdp_requested


def check_method(recipe: Recipe) -> None:
    """Refuse what cannot run here before any weights are read."""
    if recipe.train.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise RecipeError(
            "train.method=qlora loads the base model in 4-bit NF4 with bitsandbytes, which is not installed: "
            "pip install 'medtune[qlora]' (bitsandbytes >= 0.50 has CPU kernels too), or use train.method=lora "
            "(LoRA on the full-precision base)."
        )


def quantization_config(recipe: Recipe) -> BitsAndBytesConfig | None:
    """NF4 with double quantization. Compute in bf16 on GPUs that have it, fp16 on older ones, and fp32
    on the CPU (bitsandbytes' CPU kernels dequantize to it; these CPUs have no fast bf16). Under FSDP
    the 4-bit weights are stored in the compute dtype (see train.sharding)."""
    if recipe.train.method != "qlora":
        return None
    if torch.cuda.is_available():
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        compute = torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute,
        # FSDP shards flat tensors of one dtype: packed 4-bit weights stored as the compute dtype shard with the rest.
        bnb_4bit_quant_storage=compute if fsdp_requested() else torch.uint8,
    )


def trainable_on_cpu(model) -> None:
    """Keep a 4-bit model trainable on the CPU. On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit
    layer's weights for a faster kernel at its first forward in eval mode without gradients (an
    evaluation before training is one), and that kernel has no backward: afterwards no adapter before
    the last 4-bit layer gets a gradient, and the loss stays exactly where it is. The repacking is
    switched off for the layers of a model that is going to train."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes' Linear4bit
            module.support_avx512bf16_for_cpu = False


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
