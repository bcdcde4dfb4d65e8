"""`medtune train RECIPE --dry-run`: what a run would do, without loading any weights.

Parameter counts come from the model's config instantiated on the meta device (no memory);
for popular bases whose config cannot be fetched here, a copy of their published shape is
used. Memory figures are estimates for one GPU: weights + trainable state + activations; with
`shards` (FSDP over that many GPUs) also per GPU: a 1/N share of the weights and trainable state,
the activations of its own rows, and one decoder layer gathered whole while it computes.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from medtune.data import prepare_data
from medtune.models import ModelNotAvailable, detect_kind, resolve_model
from medtune.recipe import Recipe, RecipeError

# Published shapes (config.json) of common bases, for planning with no hub access.
_LLAMA3_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
_MISTRAL_7B = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False)
_LLAMA2_7B = dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)
_LLAMA3_70B = dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                   num_attention_heads=64, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False)
KNOWN_SHAPES = {
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA3_70B,
    "meta-llama/Llama-3.1-70B": _LLAMA3_70B,
    "meta-llama/Llama-2-7b-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-7b-chat-hf": _LLAMA2_7B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA3_8B,
    "mistralai/Mistral-7B-Instruct-v0.2": _MISTRAL_7B,
    "BioMistral/BioMistral-7B": _MISTRAL_7B,
    "Qwen/Qwen2.5-7B-Instruct": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}
GiB = 2**30


def _config(ref: str, revision: str | None):
    try:
        resolved = resolve_model(ref, revision=revision)
        return AutoConfig.from_pretrained(resolved.location, revision=revision), resolved.describe()
    except ModelNotAvailable as exc:
        if ref not in KNOWN_SHAPES:
            raise ModelNotAvailable(f"{exc}\n(--dry-run knows the shapes of: {', '.join(KNOWN_SHAPES)})") from None
        shape = dict(KNOWN_SHAPES[ref])
        return AutoConfig.for_model(shape.pop("model_type"), **shape), f"{ref} (not reachable here; planned from its published shape)"


def _lora_params(model, recipe: Recipe) -> int:
    lora, targets = recipe.train.lora, recipe.train.lora.target_modules
    output = model.get_output_embeddings()
    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        if targets == "all-linear" or name.split(".")[-1] in targets:
            total += lora.r * (module.in_features + module.out_features)
    return total


def plan(recipe: Recipe, shards: int = 1) -> dict:
    t = recipe.train
    if t.objective in ("embedding", "reranker"):
        raise RecipeError(f"--dry-run plans language-model training; a {t.objective} run (a small sentence-transformers "
                          "model) has nothing to plan: run it")
    config, described = _config(recipe.model.name_or_path, recipe.model.revision)
    kind = detect_kind(config)
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings())
    trainable = total if t.method == "full" else _lora_params(model, recipe)

    gpu_16bit = 2  # bf16/fp16 bytes per weight on a GPU
    if t.method == "qlora":  # NF4 with double quantization: ~4.13 bits per linear weight; the rest stays 16-bit
        weights = linear * 4.13 / 8 + (total - linear) * gpu_16bit
    else:
        weights = total * gpu_16bit
    optimizer_state = trainable * (4 + 4 + 8)  # fp32 master weight, gradient, two Adam moments
    hidden = config.get_text_config().hidden_size
    layers = config.get_text_config().num_hidden_layers
    rows = 1 if t.packing and kind == "causal" else t.batch_size  # packed rows go one per forward (train.sft)
    tokens = rows * (t.max_length if kind == "causal" else t.max_source_length + t.max_target_length)
    if recipe.align:
        tokens *= 2  # DPO runs the chosen and the rejected row of every pair
    # Per token and layer: ~34*hidden bytes of 16-bit activations (Korthikanti et al. 2022), or only
    # the layer input (2*hidden) with gradient checkpointing; logits are upcast to fp32.
    per_layer = (2 if t.gradient_checkpointing else 34) * hidden
    activations = tokens * layers * per_layer + tokens * config.get_text_config().vocab_size * 4 * 2

    memory = {"weights": weights, "trainable_state": optimizer_state, "activations": activations}
    memory["total"] = sum(memory.values())
    if shards > 1:
        # Two layers gathered at once: the one computing and the next one, prefetched.
        gathered = 2 * weights / layers
        per_gpu = {"weights": weights / shards, "trainable_state": optimizer_state / shards, "activations": activations,
                   "gathered_layers": gathered}
        per_gpu["total"] = sum(per_gpu.values())

    data = prepare_data(recipe.data)
    return {
        "model": described,
        "kind": kind,
        "objective": t.objective,
        "method": t.method,
        "needs_cuda": False,  # QLoRA too: bitsandbytes runs NF4 on the CPU (slowly; a GPU is what it is for)
        "data": {"splits": data.report["sizes"], "sources": {k: v["records"] for k, v in data.report["sources"].items()},
                 "skipped": sum(len(v["skipped"]) for v in data.report["sources"].values())},
        "parameters": {"total": total, "trainable": trainable, "trainable_pct": round(100 * trainable / total, 3)},
        "memory_estimate_gib": _gib(memory),
        **({"fsdp": {"gpus": shards, "memory_per_gpu_gib": _gib(per_gpu)}} if shards > 1 else {}),
        "steps_per_epoch": -(-data.report["sizes"]["train"] // (t.batch_size * t.gradient_accumulation_steps)),
        "tracking": recipe.tracking.backend,
    }


def _gib(sizes: dict) -> dict:
    return {k: round(v / GiB, 2) for k, v in sizes.items()}
