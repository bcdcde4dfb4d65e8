"""`medtune quantize`: quantize a run or model, save it, reload the saved folder, and compare it with its source."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from medtune.io import build_dir_atomic
from medtune.merge.adapter import merge_adapter
from medtune.logs import log
from medtune.models import (MODEL_CARD, ResolvedModel, cache_dir, load_model, load_quantized, load_tokenizer, read_card,
                            resolve_model, write_card)
from medtune.quantize.gguf import check_gguf, gguf_note, gguf_sizes, write_gguf
from medtune.quantize.library_methods import quantize_with_library
from medtune.quantize.methods import QuantizeError, check_method
from medtune.quantize.quanto_weights import KEEP_INT8, quantize_weights, save_quantized_weights
from medtune.quantize.report import (
    compare,
    parameter_bytes,
    text_perplexity,
    weight_file_bytes,
    write_report,
)
from medtune.quantize.texts import load_texts, run_recipe

DTYPES = ("float32", "bfloat16")  # what the unquantized parts (embeddings, norms, scales) are kept in on CPU
GROUP_SIZE = 32  # int4 on CPU: llama.cpp's block size; SmolLM2-135M lost 57% perplexity with quanto's 128


def quantize(
    ref: str | Path,
    method: str,
    out_dir: str | Path,
    *,
    calibration: str | Path | list[str] | None = None,
    eval_texts: str | Path | list[str] | None = None,
    calibration_samples: int = 128,
    eval_samples: int = 50,
    dtype: str = "float32",
    group_size: int | None = GROUP_SIZE,
    max_length: int = 512,
    keep_int8: tuple[str, ...] = KEEP_INT8,
    gguf_type: str = "q8_0",
    llama_cpp: str | Path | None = None,
) -> Path:
    """Quantize `ref` (a run directory, a model directory or a hub id) with `method` into `out_dir`.

    `calibration` / `eval_texts` are texts or a place to draw them from (a recipe, a run directory, a data
    file: see `load_texts`); for a run directory they default to its recipe's train / validation split.
    `dtype` and `group_size` (int4: inputs per scale) apply to int8/int4; GPTQ uses groups of 128. int4
    keeps the Linear layers whose names end in `keep_int8` in int8 (empty: all int4).
    `gguf_type` and `llama_cpp` (the folder holding llama.cpp's converter) apply to method gguf.
    A LoRA run is merged into its full-precision base first (medtune.merge.adapter), since adapters
    cannot be folded into quantized weights. Returns `out_dir`, which holds the model, its tokenizer,
    medtune.json (the run's prompt format plus `quantization`) and quantize_report.json / .md.
    """
    m = check_method(method)  # unknown, GPU-less or library-less requests stop here, before any data or weights
    gguf = check_gguf(gguf_type, llama_cpp) if m.name == "gguf" else None  # so does a missing converter
    if dtype not in DTYPES or (dtype != "float32" and m.format != "quanto"):
        raise QuantizeError(f"dtype {dtype!r}: choose {' or '.join(DTYPES)} (int8/int4 only; the other methods pick their own)")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise QuantizeError(f"{out}: already exists and is not empty; choose another --out or remove it")
    held_out = _texts(eval_texts, ref, eval_samples, "validation")
    calib = _texts(calibration, ref, calibration_samples, "train") if m.calibration else None
    if m.calibration and not calib:
        raise QuantizeError(f"--method {method} needs calibration texts: --calibration DATA (a recipe, a run directory or a data file)")

    with _source_folder(ref, out.parent) as (location, card):
        resolved = resolve_model(location)
        if resolved.kind != "causal":
            raise QuantizeError(f"{ref}: a {resolved.kind} model; medtune quantize handles causal LMs only")
        tokenizer = load_tokenizer(resolved)
        model = _load_source(resolved, on_gpu=m.format == "transformers" and torch.cuda.is_available())
        source = {"model": card.get("merged_from") or _name(resolved), "dtype": str(model.dtype).removeprefix("torch."),
                  "weight_file_bytes": weight_file_bytes(_folder(resolved)), "parameter_bytes": parameter_bytes(model)}
        source_parameters = sum(p.numel() for p in model.parameters())
        if held_out:
            source |= text_perplexity(model, tokenizer, held_out, max_length=max_length)

        def build(staging: Path) -> None:
            nonlocal model
            if gguf:
                del model  # the converter reads the source folder; the memory goes to the GGUF loaded back
                details = write_gguf(gguf, _folder(resolved), staging, card.get("system"))
            elif m.format == "transformers":
                del model  # transformers loads the model again, quantized (onto the GPU when there is one)
                torch.cuda.empty_cache()
                details = quantize_with_library(m, resolved, tokenizer, calib, staging)
            else:
                details = quantize_weights(model.to(getattr(torch, dtype)), m.bits, group_size, tuple(keep_int8)) | {"dtype": dtype}
                save_quantized_weights(model, staging)
            tokenizer.save_pretrained(staging)
            quantization = {"method": m.name, "bits": m.bits, "library": m.library,
                            "library_version": gguf.version if gguf else version(m.library),
                            "format": m.format, "source_model": source["model"]} | details
            write_card(staging, card | {"adapter": False, "quantization": quantization})
            reloaded, _ = load_quantized(staging)  # what is measured is what was saved
            if gguf:  # reloaded is dequantized: the sizes that count are the file's and what llama.cpp maps of it
                quantized = {"dtype": gguf.outtype} | gguf_sizes(staging / gguf.file)
            else:
                quantized = {"dtype": details["dtype"], "weight_file_bytes": weight_file_bytes(staging), "parameter_bytes": parameter_bytes(reloaded)}
            if held_out:
                quantized |= text_perplexity(reloaded, tokenizer, held_out, max_length=max_length)
            note = gguf_note(gguf) if gguf else _note(reloaded, details, source_parameters)
            write_report(staging, {"method": m.name, "bits": quantization["bits"], "library": m.library, "quantization": quantization,
                                   "note": note, "source": source, "quantized": quantized, "comparison": compare(source, quantized)})

        return build_dir_atomic(out, build, MODEL_CARD)


def _texts(given, ref, n: int, split: str) -> list[str] | None:
    """Texts as given, drawn from a given place, or from `ref`'s own recipe; None when there is none."""
    if isinstance(given, list):
        return given[:n]
    if given is not None:
        return load_texts(given, n, split=split)
    recipe = run_recipe(ref) if Path(ref).is_dir() else None
    return load_texts(recipe, n, split=split) if recipe else None


@contextmanager
def _source_folder(ref: str | Path, scratch: Path) -> Iterator[tuple[str, dict]]:
    """(what resolve_model takes, the run's model card). An adapter run is merged into a scratch folder."""
    model_dir, card = read_card(ref)
    if "quantization" in card:
        q = card["quantization"]
        raise QuantizeError(f"{ref}: already quantized (--method {q['method']}); quantize its full-precision source, "
                            f"{q.get('source_model', 'the model it was made from')}, instead")
    if not card.get("adapter"):
        yield (str(model_dir) if model_dir else str(ref)), card
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".merge-") as tmp:
        merged = merge_adapter(ref, Path(tmp) / "merged")
        yield str(merged), read_card(merged)[1]


def _load_source(resolved: ResolvedModel, *, on_gpu: bool):
    """fp32 on CPU; on a GPU in bf16, the precision the quantized GPU model computes in, so that the
    perplexity change measures the quantization alone."""
    if not on_gpu:
        return load_model(resolved).eval()
    return AutoModelForCausalLM.from_pretrained(resolved.location, revision=resolved.revision, dtype=torch.bfloat16,
                                                device_map="auto").eval()


def _name(resolved: ResolvedModel) -> str:
    return str(Path(resolved.location).resolve()) if resolved.origin == "local" else resolved.ref


def _folder(resolved: ResolvedModel) -> Path:
    """The folder holding the model's files (a hub id's snapshot, cached when its weights were loaded)."""
    if resolved.origin != "hub":
        return Path(resolved.location)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved.location, revision=resolved.revision, local_files_only=True))


def _note(model, details: dict, source_parameters: int) -> str:
    """What was quantized and what was not: the embedding's share of the parameters caps the size ratio."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    head_state = ("quantized" if details["lm_head_quantized"] else
                  "tied to the embedding" if head.data_ptr() == embedding.data_ptr() else f"kept in {details['dtype']}")
    kept = (f" ({details['int8_layers']} ending in {', '.join(details['kept_in_int8'])} in int8)"
            if details.get("int8_layers") else "")
    return (f"Linear layers quantized{kept}; the input embedding ({embedding.numel() / 1e6:.1f}M of "
            f"{source_parameters / 1e6:.1f}M parameters) stays in {details['dtype']}, output head {head_state}.")


def cached_gguf(ref: str | Path, gguf_type: str = "q8_0") -> Path:
    """`ref` (a run, a model folder or a hub id) as a GGUF file for llama.cpp: a GGUF export is used as
    it is; anything else is converted once by `quantize(method="gguf")` into medtune's cache, under a
    hash of the model's files (a retrained run gets a new file, an unchanged one its old file)."""
    model_dir, card = read_card(ref)
    if card.get("quantization", {}).get("format") == "gguf":
        return next(Path(model_dir).glob("*.gguf"))
    folder = Path(model_dir) if model_dir else _folder(resolve_model(str(ref)))
    out = cache_dir() / "gguf" / f"{_content_hash(folder)[:16]}-{gguf_type}"
    if not (out / MODEL_CARD).is_file():
        log.info("converting %s to GGUF %s for llama.cpp (once; cached in %s)", ref, gguf_type, out)
        quantize(ref, "gguf", out, gguf_type=gguf_type, eval_texts=[])
    return next(out.glob("*.gguf"))


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
