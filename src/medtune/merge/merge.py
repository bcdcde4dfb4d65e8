"""Merge two or more models of one architecture and vocabulary into one, streaming tensor by tensor.

Each model's safetensors shards are opened lazily; one tensor is read from every model, merged and
queued for the current output shard, which is written once it passes `shard_size_mb`. So memory holds
one tensor per model plus one output shard, never whole models. The output folder is built aside and
renamed into place, with the base's (or first model's) config and tokenizer and a `merge_report.json`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoTokenizer

from medtune.logs import log
from medtune.io import build_dir_atomic, write_json
from medtune.merge.methods import linear, merge_task_vectors, slerp, tensor_seed
from medtune.models import read_card, resolve_model
from medtune.recipe import MergeConfig, MergeRecipe, MergeSource

REPORT = "merge_report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Hub downloads: config, tokenizer and safetensors weights, not the .bin/.pt duplicates many repos carry.
SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
# config.json fields that must agree; the tensor shapes are checked as well, but these name the cause.
CONFIG_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                 "num_key_value_heads", "d_model", "d_ff", "num_layers", "num_decoder_layers", "vocab_size")


class MergeError(ValueError):
    """Models that cannot be merged (different architecture, vocabulary or tensors), or no usable weights."""


@dataclass
class Source:
    """One model's folder and a lazy view of its weights: tensor name -> shard file."""

    ref: str
    dir: Path
    weights: dict[str, Path]
    _open: dict[Path, object] = field(default_factory=dict, repr=False)

    def _file(self, path: Path):
        if path not in self._open:
            self._open[path] = safe_open(path, framework="pt", device="cpu")
        return self._open[path]

    def tensor(self, name: str) -> torch.Tensor:
        return self._file(self.weights[name]).get_tensor(name)

    def shape(self, name: str) -> list[int]:
        return list(self._file(self.weights[name]).get_slice(name).get_shape())


def open_source(src: MergeSource) -> Source:
    """Resolve a recipe's model reference (run dir, local dir, hub cache, hub) to its folder and weights."""
    path = Path(src.model).expanduser()
    if path.is_dir():
        path, card = read_card(path)  # a medtune run directory holds model/ or adapter/
        if card.get("adapter"):
            raise MergeError(f"{src.model}: a LoRA adapter, not a full model; run `medtune merge-adapter` on it first")
    resolved = resolve_model(str(path) if path.exists() else src.model, revision=src.revision)
    folder = Path(resolved.location)
    if resolved.origin == "hub":  # the weights themselves (resolving read only the config)
        folder = Path(snapshot_download(src.model, revision=src.revision, allow_patterns=SNAPSHOT_FILES))
    return Source(src.model, folder, _weight_map(src.model, folder))


def _weight_map(ref: str, folder: Path) -> dict[str, Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {name: folder / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {name: f for f in files for name in safe_open(f, framework="pt").keys()}
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise MergeError(
            f"{ref}: weights are PyTorch .bin files only; merging reads safetensors. Re-save it once, e.g. "
            f"AutoModelForCausalLM.from_pretrained({str(folder)!r}).save_pretrained('./models/NAME') "
            f"(safetensors is the default), and merge that folder"
        )
    raise MergeError(f"{ref}: no *.safetensors weights in {folder}")


def check_compatible(sources: list[Source]) -> None:
    """Refuse models that differ in architecture, sizes, vocabulary, or tensor names and shapes."""
    first, configs = sources[0], [json.loads((s.dir / "config.json").read_text()) for s in sources]
    for other, config in zip(sources[1:], configs[1:]):
        for key in ("model_type", "architectures", *CONFIG_FIELDS):
            a, b = configs[0].get(key), config.get(key)
            # A size field one config leaves out is its class default; only model_type/architectures must be spelled.
            if a != b and (key in ("model_type", "architectures") or (a is not None and b is not None)):
                raise MergeError(f"{first.ref} and {other.ref} differ in config.json {key}: {a!r} vs {b!r}")
        _check_vocab(first, other)
        _check_tensors(first, other)


def _check_vocab(a: Source, b: Source) -> None:
    va, vb = _vocab(a), _vocab(b)
    if va is None or vb is None or va == vb:
        return
    diff = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: kv[1])[:3]
    raise MergeError(f"{a.ref} and {b.ref} differ in tokenizer vocabulary: {len(va)} vs {len(vb)} tokens, "
                     f"e.g. {', '.join(f'{tok!r}={i}' for tok, i in diff)}; token ids must mean the same in every model")


def _vocab(s: Source) -> dict[str, int] | None:
    """The tokenizer's vocabulary; None for a folder that ships no tokenizer (config vocab_size still applies)."""
    if not any((s.dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(s.dir).get_vocab()


def _check_tensors(a: Source, b: Source) -> None:
    only = sorted(set(a.weights) ^ set(b.weights))
    if only:
        raise MergeError(f"{a.ref} and {b.ref} hold different tensors: {len(only)} in only one of them, e.g. {only[:3]}")
    for name in sorted(a.weights):
        if a.shape(name) != b.shape(name):
            raise MergeError(f"{a.ref} and {b.ref} differ in the shape of {name}: {a.shape(name)} vs {b.shape(name)}")


def merge_tensor(cfg: MergeConfig, name: str, tensors: list[torch.Tensor], base: torch.Tensor | None) -> torch.Tensor:
    """One output tensor, computed in fp32 and saved in `cfg.dtype`."""
    x = [t.float() for t in tensors]
    if cfg.method == "linear":
        out = linear(x, [m.weight for m in cfg.models])
    elif cfg.method == "slerp":
        out = slerp(x[0], x[1], cfg.t)
    else:
        task_models = [m for m in cfg.models if m.model != cfg.base_model.model]
        b = base.float()
        with torch.random.fork_rng(devices=[]):  # DARE's drops: reproducible, and the caller's RNG untouched
            torch.manual_seed(tensor_seed(cfg.seed, name))
            delta = merge_task_vectors(cfg.method, [t - b for t in x], [m.weight for m in task_models],
                                       [m.density for m in task_models], majority_sign_method=cfg.majority_sign)
        out = b + delta
    return out.to(DTYPES[cfg.dtype])


class ShardWriter:
    """Collects tensors and writes a safetensors shard whenever `max_bytes` have gathered; `close` names the
    shards as transformers expects (model.safetensors, or model-0000i-of-0000n.safetensors + index)."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.shards: list[list[str]] = []
        self.pending_bytes = self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += tensor.nbytes
        if self.pending_bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            save_file(self.pending, self.folder / f".part-{len(self.shards)}.safetensors", metadata={"format": "pt"})
            self.total += self.pending_bytes
            self.shards.append(list(self.pending))
            self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        self.flush()
        n = len(self.shards)
        names = ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        for i, name in enumerate(names):
            (self.folder / f".part-{i}.safetensors").rename(self.folder / name)
        if n > 1:
            weight_map = {t: name for name, tensors in zip(names, self.shards) for t in tensors}
            write_json(self.folder / "model.safetensors.index.json", {"metadata": {"total_size": self.total}, "weight_map": weight_map})
        return names


def _stream_merge(cfg: MergeConfig, models: list[Source], base: Source | None, folder: Path) -> dict:
    template = base or models[0]
    # Task-vector methods read the base once and skip it in `models` (its task vector is zero).
    others = [s for s, m in zip(models, cfg.models) if m.model != cfg.base_model.model] if base else models[1:]
    writer, copied = ShardWriter(folder, int(cfg.shard_size_mb * 1e6)), []
    for name in sorted(template.weights):
        first = template.tensor(name)
        if not first.is_floating_point():  # integer buffers (position ids and the like) are not averaged
            writer.add(name, first)
            copied.append(name)
            continue
        rest = [s.tensor(name) for s in others]
        writer.add(name, merge_tensor(cfg, name, rest, first) if base else merge_tensor(cfg, name, [first, *rest], None))
    shards = writer.close()
    return {"merged_tensors": len(template.weights) - len(copied), "copied_tensors": copied, "shards": shards}


def _mergekit(cfg: MergeConfig, models: list[Source], base: Source | None, folder: Path) -> dict:
    """The same recipe run by mergekit (its own TIES normalization and sign election differ slightly from PEFT's)."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError:
        raise MergeError("merge.backend: mergekit is not installed (pip install mergekit==0.1.5)") from None
    density = cfg.method in ("ties", "dare_ties", "dare_linear")
    spec = {"merge_method": cfg.method, "dtype": "float32", "out_dtype": cfg.dtype, "models": [
        {"model": str(s.dir), "parameters": {"weight": m.weight} | ({"density": m.density} if density else {})}
        for s, m in zip(models, cfg.models)]}
    if cfg.method == "slerp":  # mergekit's slerp runs from its base_model (t=0) to the other model
        spec |= {"base_model": str(models[0].dir), "parameters": {"t": cfg.t}}
    elif base:
        spec["base_model"] = str(base.dir)
    # mergekit seeds the global RNGs when given a seed: only DARE needs one.
    seed = cfg.seed if cfg.method.startswith("dare") else None
    options = MergeOptions(random_seed=seed, out_shard_size=int(cfg.shard_size_mb * 1e6), write_model_card=False, quiet=True)
    run_merge(MergeConfiguration.model_validate(spec), str(folder), options)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    count = sum(len(safe_open(folder / s, framework="pt").keys()) for s in shards)
    return {"merged_tensors": count, "copied_tensors": [], "shards": shards}


def merge_models(recipe: MergeRecipe | MergeConfig, out_dir: str | Path | None = None) -> Path:
    """Merge the models a recipe names into `out_dir` (default OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS) and return it."""
    cfg = recipe.merge if isinstance(recipe, MergeRecipe) else recipe
    if out_dir is None:
        if not isinstance(recipe, MergeRecipe):
            raise MergeError("merge_models: give out_dir (a bare MergeConfig has no name or output_dir)")
        out_dir = Path(recipe.output_dir) / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out_dir)
    if out.exists():
        raise MergeError(f"{out} already exists; remove it or choose another output directory")
    start = time.perf_counter()
    models = [open_source(m) for m in cfg.models]
    base = open_source(cfg.base_model) if cfg.base_model else None
    for s in [*([base] if base else []), *models]:
        where = "" if Path(s.ref) == s.dir else f" ({s.dir})"
        log.info("merge: %s%s, %d tensors", s.ref, where, len(s.weights))
    check_compatible([base, *models] if base else models)
    template = base or models[0]

    def build(staging: Path) -> None:
        run = _mergekit if cfg.backend == "mergekit" else _stream_merge
        result = run(cfg, models, base, staging)
        _copy_side_files(template.dir, staging, cfg.dtype)
        write_json(staging / REPORT, {
            "method": cfg.method,
            "backend": cfg.backend,
            "models": [{"model": m.model, "revision": m.revision, "path": str(s.dir), "weight": m.weight, "density": m.density}
                       for m, s in zip(cfg.models, models)],
            "base_model": {"model": cfg.base_model.model, "revision": cfg.base_model.revision, "path": str(base.dir)} if base else None,
            "t": cfg.t,
            "majority_sign": cfg.majority_sign if cfg.method in ("ties", "dare_ties") else None,
            "seed": cfg.seed if cfg.method.startswith("dare") else None,
            "dtype": cfg.dtype,
            **result,
            "seconds": round(time.perf_counter() - start, 2),
        })

    return build_dir_atomic(out, build, REPORT)


def _copy_side_files(src: Path, dst: Path, dtype: str) -> None:
    """Config, generation config, tokenizer, chat template and model card from the template model, unless
    the merge already wrote them; config.json records the saved dtype."""
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES + (".index.json",)) and not (dst / f.name).exists():
            shutil.copy2(f, dst / f.name)
    config = json.loads((dst / "config.json").read_text())
    write_json(dst / "config.json", {k: v for k, v in config.items() if k != "torch_dtype"} | {"dtype": dtype})
