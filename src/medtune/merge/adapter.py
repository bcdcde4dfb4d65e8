"""Fold a run's LoRA adapter into a full-precision copy of its base model.

The base is loaded in fp32 even when training used a 4-bit base (QLoRA): merging into
quantized weights would round the adapter's small updates away.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medtune.io import replace_dir_atomic, write_json
from medtune.models import ModelNotAvailable
from medtune.predict import MODEL_CARD, find_model_dir, load_adapter_model


def merge_adapter(run_dir: str | Path, out: str | Path) -> Path:
    adapter_dir = find_model_dir(Path(run_dir))
    card_path = adapter_dir / MODEL_CARD
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if not card.get("adapter"):
        raise ModelNotAvailable(f"{run_dir}: no LoRA adapter here (merge-adapter takes the run directory of a lora/qlora run)")
    model, tokenizer = load_adapter_model(adapter_dir, card, dtype=torch.float32)
    merged = model.merge_and_unload()

    def save(staging: Path) -> None:  # written aside and swapped in, so `out` is never a half-saved model
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / MODEL_CARD, card | {"adapter": False, "merged_from": str(adapter_dir.resolve())})

    return replace_dir_atomic(Path(out), save)
