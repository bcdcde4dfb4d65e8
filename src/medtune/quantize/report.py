"""Size and perplexity of a quantized model next to its source: quantize_report.json and .md."""

from __future__ import annotations

from pathlib import Path

import datasets
import torch

from medtune.train.perplexity import answer_perplexity
from medtune.io import write_atomic, write_json

REPORT = "quantize_report"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_file_bytes(model_dir: Path) -> int:
    """Bytes of the weight files in a model folder (configs, tokenizer and card not counted); where a hub
    snapshot holds both safetensors and .bin copies, the safetensors ones."""
    files = [f for f in Path(model_dir).iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    if any(f.suffix == ".safetensors" for f in files):
        files = [f for f in files if f.suffix == ".safetensors"]
    return sum(f.stat().st_size for f in files)


def parameter_bytes(model) -> int:
    """Bytes the model's stored tensors occupy in memory; tied tensors count once.

    The state dict is what is measured because quantized layers keep their weights as several packed
    tensors (int data, scales, shifts) that it lists and `parameters()` does not.
    """
    seen: dict[tuple, int] = {}
    for t in model.state_dict().values():
        seen[(t.device, t.data_ptr(), t.dtype, t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


def _pad(features: list[dict]) -> dict[str, torch.Tensor]:
    longest = max(len(f["input_ids"]) for f in features)

    def column(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([f[key] + [fill] * (longest - len(f[key])) for f in features])

    return {"input_ids": column("input_ids", 0), "attention_mask": column("attention_mask", 0), "labels": column("labels", -100)}


def text_perplexity(model, tokenizer, texts: list[str], *, max_length: int = 512, batch_size: int = 4) -> dict:
    """Token-weighted perplexity of whole texts (every token after the first is predicted and counted),
    through medtune.train.perplexity so the arithmetic is the one training evaluation uses."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    keep = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) > 1]
    ids = [enc["input_ids"][i] for i in keep]
    ds = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": ids})
    result = answer_perplexity(model, ds, _pad, batch_size=batch_size, desc="perplexity")
    return result | {"texts": len(ids)}


def compare(source: dict, quantized: dict) -> dict:
    """Ratios and the perplexity change (in %) of `quantized` relative to `source`."""
    out = {
        "size_ratio": source["weight_file_bytes"] / quantized["weight_file_bytes"],
        "parameter_bytes_ratio": source["parameter_bytes"] / quantized["parameter_bytes"],
    }
    if source.get("perplexity") and quantized.get("perplexity"):
        out["perplexity_change_pct"] = 100 * (quantized["perplexity"] / source["perplexity"] - 1)
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def render_markdown(report: dict) -> str:
    src, q, c = report["source"], report["quantized"], report["comparison"]
    ppl = "perplexity" in src
    lines = [
        f"# Quantization: {report['method']} ({report['bits']}-bit, {report['library']})",
        "",
        f"Source: `{src['model']}`. {report['note']}",
        "",
        "| | source | quantized | ratio / change |",
        "|---|---:|---:|---:|",
        f"| weight files on disk | {_mb(src['weight_file_bytes'])} | {_mb(q['weight_file_bytes'])} | {c['size_ratio']:.2f}× smaller |",
        f"| parameter bytes in memory | {_mb(src['parameter_bytes'])} | {_mb(q['parameter_bytes'])} | {c['parameter_bytes_ratio']:.2f}× smaller |",
    ]
    if ppl:
        lines.append(
            f"| held-out perplexity ({src['texts']} texts, {src['tokens']:,} tokens) | {src['perplexity']:.3f} | "
            f"{q['perplexity']:.3f} | {c['perplexity_change_pct']:+.2f}% |"
        )
    else:
        lines += ["", "Perplexity not measured: no evaluation texts (give --eval-data, or quantize a run directory)."]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict) -> str:
    """Both files, each written atomically; returns the Markdown."""
    md = render_markdown(report)
    write_json(out_dir / f"{REPORT}.json", report)
    write_atomic(out_dir / f"{REPORT}.md", md)
    return md
