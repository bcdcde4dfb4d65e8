"""Read a folder of optimum-quanto weights written by `medtune quantize --method int8|int4` (written by
medtune.quantize.quanto_weights): safetensors plus quanto's per-module quantization map."""

from __future__ import annotations

import json
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

WEIGHTS = "quanto_model.safetensors"  # not model.safetensors: from_pretrained must not read it as a plain checkpoint
QMAP = "quanto_qmap.json"


def tied_head(model) -> str | None:
    """The output head's parameter name when it shares the input embedding's storage."""
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        return next(n for n, m in model.named_modules() if m is head) + ".weight"
    return None


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
    if tied := tied_head(model):
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
