"""Weight-only int8/int4 on CPU with optimum-quanto, saved as safetensors plus quanto's quantization map.

quanto packs int4 two to a byte on CPU (torchao 0.18's int4 layouts need CUDA, and its CPU int4 keeps
one value per byte), and its per-module map lets a folder be rebuilt without re-quantizing. Only
Linear layers are quantized; embeddings stay in full precision, and a head tied to the embedding
stays tied (quantizing it would store a second, separate copy of the vocabulary matrix).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from medtune.models.quanto import QMAP, WEIGHTS, tied_head

# int4 keeps the layers most sensitive to it in int8, as llama.cpp's Q4_K_M keeps attention values and
# feed-forward outputs at higher precision: on a fine-tuned SmolLM2 all-int4 cost +9.6% perplexity, this +2.6%
# (benchmarks/quantize_size_ppl.py --finetune 6 --study).
KEEP_INT8 = ("v_proj", "o_proj", "down_proj")


def quantize_weights(model, bits: int, group_size: int | None = None, keep_int8: tuple[str, ...] = KEEP_INT8) -> dict:
    """Quantize `model`'s Linear weights in place to `bits` and freeze them; what was done, for the card.

    int4 scales are per group of `group_size` inputs where a layer's width allows it (else quanto's own
    choice: up to 128, or one scale per row); int8 always has one scale per output row. With int4, Linear
    layers whose names end in one of `keep_int8` get int8 instead.
    """
    from optimum.quanto import freeze, qint4, qint8, quantize

    tied = tied_head(model)
    exclude = [tied.removesuffix(".weight")] if tied else []
    int8 = [f"*{name}" for name in keep_int8] if bits == 4 else []
    if int8:
        quantize(model, weights=qint8, include=int8, exclude=exclude or None)
    quantize(model, weights={8: qint8, 4: qint4}[bits], exclude=exclude + int8 or None)
    modules = _quantized_modules(model).values()
    if bits == 4 and group_size:
        for module in modules:
            if module.weight_qtype == qint4 and module.weight.shape[1] % group_size == 0:
                module.weight_group_size = group_size
    freeze(model)
    groups = sorted({m.weight_group_size for m in modules if m.weight_group_size})
    return {"group_size": groups or None, "embeddings_quantized": False, "lm_head_quantized": not tied,
            "not_quantized": exclude + ["embeddings", "norms"],
            "int8_layers": sum(m.weight_qtype == qint8 for m in modules) if bits == 4 else None,
            "kept_in_int8": list(keep_int8) if bits == 4 else None}


def _quantized_modules(model) -> dict:
    from optimum.quanto import QModuleMixin

    return {name: m for name, m in model.named_modules() if isinstance(m, QModuleMixin)}


def save_quantized_weights(model, out: Path) -> None:
    from optimum.quanto import quantization_map

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tied := tied_head(model):
        del state[tied]  # restored by tie_weights() on load
    save_file(state, out / WEIGHTS, metadata={"format": "pt"})
    qmap = quantization_map(model)
    for name, module in _quantized_modules(model).items():  # quanto's map leaves the group size out
        qmap[name]["group_size"] = module.weight_group_size
    (out / QMAP).write_text(json.dumps(qmap, indent=1))
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
