"""Load a folder written by `medtune quantize` (its medtune.json says how it was quantized)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtune.models import ModelNotAvailable, load_gguf
from medtune.predict import MODEL_CARD
from medtune.quantize.methods import check_method
from medtune.quantize.quanto_weights import load_quantized_weights


def quantization_card(model_dir: str | Path) -> dict:
    """The folder's model card; a folder that is not a quantized model is refused."""
    path = Path(model_dir) / MODEL_CARD
    card = json.loads(path.read_text()) if path.is_file() else {}
    if "quantization" not in card:
        raise ModelNotAvailable(f"{model_dir}: not a model written by `medtune quantize` (no quantization in {MODEL_CARD})")
    return card


def load_quantized(model_dir: str | Path) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) of a quantized folder; GPU formats need the GPU and library they were made with."""
    model_dir = Path(model_dir)
    q = quantization_card(model_dir)["quantization"]
    if q["format"] == "quanto":
        model = load_quantized_weights(model_dir, getattr(torch, q["dtype"]))
    elif q["format"] == "gguf":  # dequantized: the exact stored weights, on any machine (llama.cpp reads the file itself)
        model = load_gguf(model_dir, q["file"]).eval()
    else:
        check_method(q["method"])  # fails clearly on a machine without CUDA or the library
        model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="auto").eval()
    return model, AutoTokenizer.from_pretrained(model_dir)
