"""Any model medtune wrote, or any checkpoint, loaded for inference or as the start of a new run.

A reference is a hub id, a model folder, or a medtune output: a run directory (its model/ or adapter/),
a merge-adapter output, or a `medtune quantize` folder (quanto int8/int4, GGUF, bitsandbytes, GPTQ).
The folder's model card (medtune.models.card) says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtune.models.card import MODEL_CARD, read_card
from medtune.models.quanto import load_quantized_weights
from medtune.models.resolve import ModelNotAvailable, ResolvedModel, load_gguf, load_model, load_tokenizer, resolve_model
from medtune.models.vocab import align_token_ids, grow_embeddings


@dataclass(frozen=True)
class Start:
    """Where a run starts: full weights, and an earlier run's LoRA adapter to go on training on top of them."""

    base: ResolvedModel
    adapter: Path | None = None

    def describe(self) -> str:
        return self.base.describe() + (f" + adapter {self.adapter}" if self.adapter else "")


def resolve_start(ref: str, kind: str = "auto", revision: str | None = None) -> Start:
    """A base model reference, a model directory, or a run directory (its model/ or adapter/); no weights read."""
    folder, card = read_card(ref)
    if card.get("adapter"):
        return Start(resolve_model(card["base_model"]), adapter=folder)
    if "quantization" in card:
        raise ModelNotAvailable(f"{ref}: a quantized model is for inference; start from its full-precision source, "
                                f"{card['quantization'].get('source_model', 'the model it was made from')}")
    return Start(resolve_model(str(folder or ref), kind, revision))


def load_start(start: Start, quantization_config=None):
    """The starting model and its tokenizer; an adapter start comes back as a trainable PEFT model."""
    model = load_model(start.base, quantization_config=quantization_config)
    if start.adapter is None:
        return model, load_tokenizer(start.base)
    return _with_adapter(model, start.adapter, is_trainable=True)


def load_adapter_model(adapter_dir: Path, card: dict, dtype: torch.dtype | str = torch.float32, *, on_gpus: bool = False):
    """The base model in full precision with the run's LoRA adapter on top, and the run's tokenizer."""
    base = load_model(resolve_model(card["base_model"]), dtype=dtype, on_gpus=on_gpus)
    try:
        return _with_adapter(base, adapter_dir, is_trainable=False)
    except ValueError as exc:
        raise ModelNotAvailable(f"{adapter_dir}: adapter does not fit base model {card['base_model']}: {exc}") from None


def _with_adapter(base, adapter_dir: Path, *, is_trainable: bool):
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if len(tokenizer) != base.get_input_embeddings().num_embeddings:
        grow_embeddings(base, tokenizer)  # the run added tokens (chat markers, pad)
    align_token_ids(base, tokenizer)
    return PeftModel.from_pretrained(base, adapter_dir, is_trainable=is_trainable), tokenizer


def load_quantized(model_dir: str | Path):
    """(model, tokenizer) of a `medtune quantize` folder; GPTQ needs the GPU and library it was made with."""
    model_dir, card = read_card(model_dir)
    if "quantization" not in card:
        raise ModelNotAvailable(f"{model_dir}: not a model written by `medtune quantize` (no quantization in {MODEL_CARD})")
    q = card["quantization"]
    if q["format"] == "quanto":
        model = load_quantized_weights(model_dir, getattr(torch, q["dtype"]))
    elif q["format"] == "gguf":  # dequantized: the exact stored weights, on any machine (llama.cpp reads the file itself)
        model = load_gguf(model_dir, q["file"]).eval()
    elif q["method"] == "gptq" and not torch.cuda.is_available():
        raise ModelNotAvailable(f"{model_dir}: quantized with --method gptq, which loads on a CUDA GPU only; "
                                "on a CPU quantize the source with --method int4, int8, bnb4, bnb8 or gguf")
    else:  # bitsandbytes loads on a GPU or, with its CPU kernels, here
        model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto").eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def inference_placement() -> tuple[bool, torch.dtype | str]:
    """(on the GPUs?, dtype) for full-precision models at inference: on CUDA, placed over the GPUs as they load,
    in the dtype they were saved in (bf16 for most hub models); else on the CPU in fp32 (CPUs without native
    bf16 emulate it, many times slower)."""
    return (True, "auto") if torch.cuda.is_available() else (False, torch.float32)


def load_for_inference(ref: str | Path):
    """(model, tokenizer, model card) for any reference; a hub id or a plain checkpoint has an empty card.
    Quantized folders place themselves (bitsandbytes on the GPU, quanto and GGUF on the CPU)."""
    folder, card = read_card(ref)
    on_gpus, dtype = inference_placement()
    if card.get("adapter"):
        model, tokenizer = load_adapter_model(folder, card, dtype=dtype, on_gpus=on_gpus)
    elif "quantization" in card:
        model, tokenizer = load_quantized(folder)
    else:
        resolved = resolve_model(str(folder or ref))
        model, tokenizer = load_model(resolved, dtype=dtype, on_gpus=on_gpus), load_tokenizer(resolved)
    return model, tokenizer, card
