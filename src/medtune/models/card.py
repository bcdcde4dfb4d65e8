"""The model card, `medtune.json`: written beside every model medtune saves (a run's model/ or adapter/, a
merge-adapter output, a quantized folder) and read here alone.

It holds what loading and generation need and the weights do not say: the prompt template and system
message, generation defaults, the base model and architecture kind, whether the folder is a LoRA adapter,
and, for `medtune quantize` output, how it was quantized.
"""

from __future__ import annotations

import json
from pathlib import Path

from medtune.io import write_json
from medtune.models.resolve import ResolvedModel

MODEL_CARD = "medtune.json"


def find_model_dir(path: Path) -> Path:
    """A run directory holds model/ (full fine-tuning) or adapter/ (LoRA); other paths are model dirs."""
    for sub in ("model", "adapter"):
        if (path / sub / MODEL_CARD).is_file():
            return path / sub
    return path


def read_card(ref: str | Path) -> tuple[Path | None, dict]:
    """(model folder, its card) for a run or model directory; (None, {}) for a hub id. A folder with no card
    (any Hugging Face checkpoint) has the empty card."""
    path = Path(ref).expanduser()
    if not path.is_dir():
        return None, {}
    folder = find_model_dir(path)
    card = folder / MODEL_CARD
    return folder, json.loads(card.read_text()) if card.is_file() else {}


def write_card(model_dir: Path, card: dict) -> None:
    write_json(model_dir / MODEL_CARD, card)


def run_card(*, template: str, system: str | None, generation: dict, base: ResolvedModel, adapter: bool) -> dict:
    """The card of a run's final model or adapter."""
    return {
        "template": template,
        "system": system,
        "generation": generation,
        # A local base is recorded by absolute path so the run loads from any working directory.
        "base_model": str(Path(base.location).resolve()) if base.origin == "local" else base.ref,
        "kind": base.kind,
        "adapter": adapter,
    }
