"""Resolve a model reference (local directory or hub id) and load it.

Offline, a hub id that is not in the local cache fails within seconds with a message that
says how to point the recipe at a local copy, instead of retrying the network for minutes.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PretrainedConfig

Kind = Literal["seq2seq", "causal"]


class ModelNotAvailable(RuntimeError):
    """The model reference names nothing that can be loaded here."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the recipe said
    location: str  # what from_pretrained receives
    origin: Literal["local", "hub-cache", "hub"]
    kind: Kind
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.ref} ({self.origin}: {self.location}, {self.kind})"


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_message(ref: str) -> str:
    local = f"./models/{ref.split('/')[-1]}"
    return (
        f"model {ref!r} is not a local directory, is not in the Hugging Face cache, and the hub cannot be "
        f"reached from this machine. Download it where there is internet, e.g.\n"
        f"    hf download {ref} --local-dir {local}\n"
        f"copy that folder here, and point the recipe at it: `model: {local}` "
        f"(or on the command line: --set model={local})."
    )


def detect_kind(config: PretrainedConfig) -> Kind:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def resolve_model(ref: str, kind: Literal["auto", "seq2seq", "causal"] = "auto", revision: str | None = None) -> ResolvedModel:
    """Find where `ref` lives (local path, hub cache, hub) and its architecture kind, loading only its config."""
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"{path}: not a model directory (no config.json)")
        config, location, origin = AutoConfig.from_pretrained(path), str(path), "local"
    elif ref.startswith((".", "/", "~")):
        raise ModelNotAvailable(f"{ref}: no such model directory")
    else:
        try:
            config = AutoConfig.from_pretrained(ref, revision=revision, local_files_only=True)
            origin = "hub-cache"
        except OSError:
            if not _hub_reachable():
                raise ModelNotAvailable(_offline_message(ref)) from None
            config, origin = AutoConfig.from_pretrained(ref, revision=revision), "hub"
        location = ref
    detected = detect_kind(config)
    if kind != "auto" and kind != detected:
        raise ModelNotAvailable(f"{ref}: the recipe says kind={kind} but the model is {detected}")
    return ResolvedModel(ref=ref, location=location, origin=origin, kind=detected, revision=revision)


def load_tokenizer(resolved: ResolvedModel):
    tok = AutoTokenizer.from_pretrained(resolved.location, revision=resolved.revision)
    if tok.pad_token is None:
        raise ModelNotAvailable(f"{resolved.ref}: tokenizer has no pad token")
    return tok


def load_model(resolved: ResolvedModel, dtype: torch.dtype = torch.float32):
    auto = AutoModelForSeq2SeqLM if resolved.kind == "seq2seq" else AutoModelForCausalLM
    return auto.from_pretrained(resolved.location, revision=resolved.revision, dtype=dtype)
