"""Weight-only int8/int4 on CPU with optimum-quanto, saved as safetensors plus quanto's quantization map.

quanto packs int4 two to a byte on CPU (torchao 0.18's int4 layouts need CUDA, and its CPU int4 keeps
one value per byte), and its per-module map lets a folder be rebuilt without re-quantizing. Only
Linear layers are quantized; embeddings stay in full precision, and a head tied to the embedding
stays tied (quantizing it would store a second, separate copy of the vocabulary matrix).
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

WEIGHTS = "quanto_model.safetensors"  # not model.safetensors: from_pretrained must not read it as a plain checkpoint
QMAP = "quanto_qmap.json"


def _tied_head(model) -> str | None:
    """The output head's parameter name when it shares the input embedding's storage."""
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        return next(n for n, m in model.named_modules() if m is head) + ".weight"
    return None


# int4 keeps the layers most sensitive to it in int8, as llama.cpp's Q4_K_M keeps attention values and
# feed-forward outputs at higher precision: on a fine-tuned SmolLM2 all-int4 cost +12.1% perplexity, this +3.6%.
KEEP_INT8 = ("v_proj", "o_proj", "down_proj")


def quantize_weights(model, bits: int, group_size: int | None = None, keep_int8: tuple[str, ...] = KEEP_INT8) -> dict:
    """Quantize `model`'s Linear weights in place to `bits` and freeze them; what was done, for the card.

    int4 scales are per group of `group_size` inputs where a layer's width allows it (else quanto's own
    choice: up to 128, or one scale per row); int8 always has one scale per output row. With int4, Linear
    layers whose names end in one of `keep_int8` get int8 instead.
    """
    from optimum.quanto import freeze, qint4, qint8, quantize

    tied = _tied_head(model)
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
    if tied := _tied_head(model):
        del state[tied]  # restored by tie_weights() on load
    save_file(state, out / WEIGHTS, metadata={"format": "pt"})
    qmap = quantization_map(model)
    for name, module in _quantized_modules(model).items():  # quanto's map leaves the group size out
        qmap[name]["group_size"] = module.weight_group_size
    (out / QMAP).write_text(json.dumps(qmap, indent=1))
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)


def load_quantized_weights(model_dir: Path, dtype: torch.dtype):
    """Rebuild the model from its config with empty weights, swap in quanto modules, and fill them.

    quanto's own `requantize` does the same but cannot restore a group size other than its default.
    """
    from optimum.quanto import quantize

    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights():  # parameters only: buffers such as rotary frequencies are computed, not stored
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    qmap = json.loads((model_dir / QMAP).read_text())
    for weights in {q["weights"] for q in qmap.values()}:
        quantize(model, weights=weights, include=[name for name, q in qmap.items() if q["weights"] == weights])
    for name, q in qmap.items():
        model.get_submodule(name).weight_group_size = q["group_size"]
    for module in model.modules():  # meta tensors (weights, quanto's scale buffers) become empty CPU ones to load into
        for name, param in module.named_parameters(recurse=False):
            if param.device.type == "meta":
                setattr(module, name, torch.nn.Parameter(torch.empty_like(param, device="cpu"), requires_grad=False))
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.device.type == "meta":
                setattr(module, name, torch.empty_like(buffer, device="cpu"))
    # quanto's modules keep the loaded tensors as they are, and safetensors packs int8 tensors at any byte offset:
    # an unaligned int8 weight crashes torch's int8 x bf16 CPU kernel (_weight_int8pack_mm), so each gets its own copy.
    state = {name: tensor.clone() for name, tensor in load_file(model_dir / WEIGHTS).items()}
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    _dequantize_generic_int4(model)
    expected = set(model.state_dict())
    if tied := _tied_head(model):
        expected.discard(tied)
    if missing := sorted(expected - set(state)):  # loaded non-strictly for the tied head; a gap would be random weights
        raise ValueError(f"{model_dir / WEIGHTS}: missing {len(missing)} tensors, e.g. {missing[:3]}")
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.eval()


def _dequantize_generic_int4(model) -> None:
    """Let quanto's generic int4 layers run under torch.inference_mode, which medtune's generation and
    perplexity use: their linear transposes a dequantized view, which inference mode refuses
    (optimum-quanto issue #304, closed unfixed). They dequantize explicitly instead, the same
    arithmetic quanto's fallback does; int8 and quanto's packed CPU kernel (bf16, groups of 128) have
    their own transposes and keep them."""
    from optimum.quanto import QLinear
    from optimum.quanto.tensor.weights.qbits import WeightQBitsTensor

    for module in model.modules():
        if isinstance(module, QLinear) and type(module.weight) is WeightQBitsTensor and module.activation_qtype is None:
            module.forward = types.MethodType(_dequantized_linear, module)


def _dequantized_linear(self, input: torch.Tensor) -> torch.Tensor:
    return F.linear(input, self.weight.dequantize(), self.bias)
