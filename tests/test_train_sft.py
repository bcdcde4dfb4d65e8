"""Causal-LM SFT: label masking, pad != EOS, chat template saving, LoRA adapters and their merge."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

import medtune
from medtune.data import prepare_data
from medtune.models import load_model, load_tokenizer, resolve_model
from medtune.pipeline import run
from medtune.recipe import RecipeError, recipe_from_dict
from medtune.train.sft import CHATML_TEMPLATE, build_sft_trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sft_trainer(causal_recipe_dict, tmp_path):
    recipe = recipe_from_dict(causal_recipe_dict)
    resolved = resolve_model(recipe.model.name_or_path)
    tokenizer, model = load_tokenizer(resolved), load_model(resolved)
    assert tokenizer.pad_token is None and tokenizer.chat_template is None  # a bare base model
    return build_sft_trainer(recipe, model, tokenizer, prepare_data(recipe.data).splits, tmp_path), tokenizer


def test_loss_falls_on_the_answer_and_end_of_turn_only(sft_trainer):
    trainer, tok = sft_trainer
    example = trainer.train_dataset[0]
    batch = trainer.data_collator([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nYou answer medical questions.<|im_end|>")
    first = next(i for i, l in enumerate(labels) if l != -100)
    # Everything up to and including the assistant header is prompt: masked.
    assert tok.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert all(l == -100 for l in labels[:first])
    # The answer, its <|im_end|> and what follows are learned.
    assert labels[first:] == ids[first:]
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in labels[first:]
    assert tok.decode([l for l in labels if l != -100]).strip().endswith("<|im_end|>")


def test_pad_token_is_distinct_from_eos_and_chatml_is_set(sft_trainer):
    _, tok = sft_trainer
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template == CHATML_TEMPLATE


def test_lora_run_saves_a_small_adapter_with_template_and_merges_to_the_same_outputs(causal_recipe_dict, tmp_path):
    causal_recipe_dict["eval"]["metrics"] = ["perplexity", "rouge"]
    run_dir = run(recipe_from_dict(causal_recipe_dict), run_dir=tmp_path / "run")
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (run_dir / "model").exists()
    base_bytes = (Path(causal_recipe_dict["model"]) / "model.safetensors").stat().st_size
    assert (adapter / "adapter_model.safetensors").stat().st_size < base_bytes
    saved = json.loads((adapter / "tokenizer_config.json").read_text())
    template = (adapter / "chat_template.jinja").read_text() if (adapter / "chat_template.jinja").exists() else saved["chat_template"]
    assert template == CHATML_TEMPLATE and saved["pad_token"] != saved["eos_token"]

    report = json.loads((run_dir / "report.json").read_text())
    before, after = report["eval"]["before"]["perplexity"], report["eval"]["perplexity"]
    assert after["perplexity"] < before["perplexity"]  # lr 5e-3 on memorisable answers
    assert before["tokens"] == after["tokens"] > 0
    assert report["eval"]["metrics"]["perplexity"] == after["perplexity"]
    assert report["train"]["method"] == "lora"

    questions = ["What causes gout ?", "How to treat lupus ?"]
    adapted = medtune.load(run_dir).predict(questions, max_new_tokens=12)
    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "notes.txt").write_text("not medtune's")
    merge = [sys.executable, "-m", "medtune.cli", "merge-adapter", str(run_dir), "--out", str(tmp_path / "merged")]
    proc = subprocess.run(merge, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "did not write there (no medtune.json)" in proc.stderr  # nothing of theirs deleted
    assert [p.name for p in (tmp_path / "merged").iterdir()] == ["notes.txt"]
    proc = subprocess.run(merge + ["--force"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    merged_dir = tmp_path / "merged"
    assert not list(merged_dir.glob("adapter_*"))  # a standalone model
    merged = medtune.load(merged_dir)
    assert merged.template == "{question}" and merged.system == "You answer medical questions."
    assert merged.predict(questions, max_new_tokens=12) == adapted  # greedy: identical text


def test_qlora_trains_on_the_cpu_and_merges(causal_recipe_dict, tmp_path):
    """The seed-004 path for real, without CUDA: an NF4 base (bitsandbytes' CPU kernels, fp32 compute),
    LoRA trained on it, the adapter merged into the full-precision base."""
    from bitsandbytes.nn import Linear4bit

    from conftest import qa_rows
    from medtune.testing import make_llama

    # 64 wide: bitsandbytes' CPU inference kernels pack NF4 weights in blocks of 64 inputs.
    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])]
    causal_recipe_dict["model"] = str(make_llama(tmp_path / "llama64", texts * 5, vocab_size=300, hidden=64))
    seen = []
    causal_recipe_dict["train"]["method"] = "qlora"
    causal_recipe_dict["train"]["max_steps"] = 8
    causal_recipe_dict["eval"]["metrics"] = ["perplexity"]
    recipe = recipe_from_dict(causal_recipe_dict)
    run_dir = run(recipe, run_dir=tmp_path / "run", callbacks=[_Spy(seen)])
    (model,) = seen
    assert any(isinstance(m, Linear4bit) for m in model.modules())  # trained on a 4-bit base
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train"]["method"] == "qlora"
    assert report["eval"]["perplexity"]["perplexity"] < report["eval"]["before"]["perplexity"]["perplexity"]
    losses = [h["loss"] for h in report["train"]["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    merge = [sys.executable, "-m", "medtune.cli", "merge-adapter", str(run_dir), "--out", str(tmp_path / "merged")]
    proc = subprocess.run(merge, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert medtune.load(tmp_path / "merged").predict(["What causes gout ?"], max_new_tokens=4)[0] is not None


class _Spy(TrainerCallback):
    def __init__(self, seen: list):
        self.seen = seen

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append(model)


def test_qlora_without_bitsandbytes_fails_before_loading_anything(causal_recipe_dict, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))
    causal_recipe_dict["train"]["method"] = "qlora"
    causal_recipe_dict["model"] = str(tmp_path / "weights-that-do-not-exist")
    from medtune.train.lora import check_method

    with pytest.raises(RecipeError, match="bitsandbytes, which is not installed.*medtune\\[qlora\\]"):
        check_method(recipe_from_dict(causal_recipe_dict))


def test_a_run_whose_adapter_gets_no_gradient_fails_loudly(causal_recipe_dict, tmp_path, monkeypatch):
    """A loss that cannot reach the trainable parameters would stay flat for the whole run."""
    from medtune.train import sft

    build = sft.build_sft_trainer

    def detached(*args, **kwargs):
        trainer = build(*args, **kwargs)
        compute_loss = trainer.compute_loss
        trainer.compute_loss = lambda model, inputs, **kw: compute_loss(model, inputs, **kw).detach().requires_grad_()
        return trainer

    monkeypatch.setattr("medtune.pipeline.build_sft_trainer", detached)
    with pytest.raises(RecipeError, match="no trainable parameter received a gradient at step 1"):
        run(recipe_from_dict(causal_recipe_dict), run_dir=tmp_path / "run")


def test_packed_row_scores_each_document_as_if_alone(causal_recipe_dict, tmp_path):
    causal_recipe_dict["train"] |= {"packing": True, "max_length": 128, "batch_size": 4, "gradient_accumulation_steps": 2}
    recipe = recipe_from_dict(causal_recipe_dict)
    resolved = resolve_model(recipe.model.name_or_path)
    tokenizer, model = load_tokenizer(resolved), load_model(resolved)
    trainer = build_sft_trainer(recipe, model, tokenizer, prepare_data(recipe.data).splits, tmp_path)
    # SDPA has no varlen kernel: one packed row per forward pass, the batch of 4 rows by accumulation.
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == (1, 8)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    starts = (pos[0] == 0).nonzero().flatten().tolist() + [ids.shape[1]]
    assert ids.shape[0] == 1 and ids.shape[1] <= 128 and len(starts) > 2  # several documents in one row
    model = trainer.model.eval()
    with torch.no_grad():
        packed = torch.log_softmax(model(input_ids=ids, position_ids=pos).logits.float(), -1)
        for a, b in zip(starts, starts[1:]):
            alone = torch.log_softmax(model(input_ids=ids[:, a:b]).logits.float(), -1)
            # Same next-token distribution at every position: no attention across document boundaries.
            torch.testing.assert_close(packed[:, a:b], alone, atol=1e-4, rtol=1e-4)
            assert labels[0, a] == -100  # nothing is predicted across a boundary


def test_held_out_perplexity_is_the_same_with_packing(causal_recipe_dict, tmp_path):
    """A packing run's eval collator joins a batch's answers in one row: scored with their position ids, each
    answer still sees only itself (without them the quickstart's before-perplexity read 9.16 instead of 11.53)."""
    from medtune.train.perplexity import answer_perplexity

    scores = []
    for packing in (False, True):
        causal_recipe_dict["train"] |= {"packing": packing, "max_length": 128}
        recipe = recipe_from_dict(causal_recipe_dict)
        resolved = resolve_model(recipe.model.name_or_path)
        trainer = build_sft_trainer(recipe, load_model(resolved), load_tokenizer(resolved), prepare_data(recipe.data).splits,
                                    tmp_path / str(packing))
        if packing:  # the case this guards: several answers in one collated row
            batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(4)])
            assert batch["input_ids"].shape[0] == 1 and int((batch["position_ids"][0] == 0).sum()) == 4
        scores.append(answer_perplexity(trainer.model, trainer.eval_dataset, trainer.data_collator, batch_size=4))
    assert scores[0]["tokens"] == scores[1]["tokens"] > 0
    assert scores[1]["nll"] == pytest.approx(scores[0]["nll"], abs=1e-4)


def test_packing_and_gradient_checkpointing_train(causal_recipe_dict, tmp_path):
    causal_recipe_dict["train"] |= {"packing": True, "gradient_checkpointing": True, "max_steps": 2, "max_length": 128}
    causal_recipe_dict["eval"] |= {"metrics": ["perplexity"], "max_samples": 2}
    run_dir = run(recipe_from_dict(causal_recipe_dict), run_dir=tmp_path / "packed")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train"]["global_step"] == 2
    # Packed rows carry no padding: every token in a row is real, so rows hold several examples.
    assert report["train"]["train_tokens"] > 2 * 4 * 40
    assert report["eval"]["perplexity"]["tokens"] == report["eval"]["before"]["perplexity"]["tokens"] > 0


def test_an_evaluation_before_qlora_training_leaves_its_gradients(tmp_path):
    """bitsandbytes repacks 4-bit weights for a kernel with no backward at the first no-grad forward in eval
    mode (on AVX512-BF16 CPUs): then no LoRA layer got a gradient — the issue's exactly constant loss."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from conftest import qa_rows
    from medtune.testing import make_llama
    from medtune.train.lora import trainable_on_cpu

    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])]
    folder = make_llama(tmp_path / "llama64", texts * 5, vocab_size=300, hidden=64)
    ids = torch.randint(5, 290, (2, 12), generator=torch.Generator().manual_seed(0))

    def lora_gradients(protect: bool) -> int:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, device_map="cpu")
        if protect:
            trainable_on_cpu(model)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"))
        model.eval()
        with torch.no_grad():
            model(input_ids=ids[:, :4])  # the evaluation before training
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        # B starts at zero, so at the first step only the B matrices get a gradient (A's is B's transpose times …).
        return sum(p.grad is not None and bool(p.grad.any()) for n, p in model.named_parameters() if "lora_B" in n)

    assert lora_gradients(protect=True) == 4  # q and v of both layers
    if bnb.functional.has_avx512bf16():  # the machine where the bug shows: it must still be there to be fixed
        assert lora_gradients(protect=False) == 0
