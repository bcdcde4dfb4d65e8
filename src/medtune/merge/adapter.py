"""Fold a run's LoRA adapter into a full-precision copy of its base model.

The base is loaded in fp32 even when training used a 4-bit base (QLoRA): merging into
quantized weights would round the adapter's small updates away.
"""

from __future__ import annotations

from pathlib import Path

import torch

from medtune.io import check_replaceable, replace_dir_atomic
from medtune.models import MODEL_CARD, ModelNotAvailable, load_adapter_model, read_card, write_card


def merge_adapter(run_dir: str | Path, out: str | Path, *, force: bool = False) -> Path:
    check_replaceable(Path(out), MODEL_CARD, force)
    adapter_dir, card = read_card(run_dir)
    if not card.get("adapter"):
        raise ModelNotAvailable(f"{run_dir}: no LoRA adapter here (merge-adapter takes the run directory of a lora/qlora run)")
    model, tokenizer = load_adapter_model(adapter_dir, card, dtype=torch.float32)
    merged = model.merge_and_unload()

    def save(staging: Path) -> None:  # written aside and swapped in, so `out` is never a half-saved model
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_card(staging, card | {"adapter": False, "merged_from": str(adapter_dir.resolve())})

    return replace_dir_atomic(Path(out), save, marker=MODEL_CARD, force=force)
