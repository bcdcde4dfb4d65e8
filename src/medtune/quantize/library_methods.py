"""GPTQ (CUDA) and bitsandbytes (CUDA, or the CPU with its own kernels) through transformers'
quantization configs, saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GPTQConfig

from medtune.models import ResolvedModel
from medtune.quantize.methods import Method

GROUP_SIZE = 128  # GPTQ's usual group size, the one its fast kernels are tuned for


def quantize_with_library(method: Method, resolved: ResolvedModel, tokenizer, calibration: list[str] | None, out: Path) -> dict:
    """Load `resolved` quantized by `method` (on the GPU when there is one) and save it to `out`; what was
    done, for the card."""
    if method.name == "gptq":
        dtype = torch.float16  # the GPTQ kernels compute in fp16
        config = GPTQConfig(bits=method.bits, dataset=calibration, tokenizer=tokenizer, group_size=GROUP_SIZE)
        details = {"group_size": GROUP_SIZE, "calibration_texts": len(calibration)}
    else:
        if torch.cuda.is_available():
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32  # bitsandbytes' CPU kernels; these CPUs have no fast bf16
        if method.name == "bnb4":
            config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=dtype)
            details = {"quant_type": "nf4", "double_quant": True}
        else:
            config = BitsAndBytesConfig(load_in_8bit=True)
            details = {"quant_type": "llm.int8"}
    model = AutoModelForCausalLM.from_pretrained(resolved.location, revision=resolved.revision, dtype=dtype,
                                                 quantization_config=config, device_map="auto")
    model.save_pretrained(out)
    # transformers leaves embeddings and the output head in `dtype` for both libraries.
    return details | {"dtype": str(dtype).removeprefix("torch."), "embeddings_quantized": False, "lm_head_quantized": False}
