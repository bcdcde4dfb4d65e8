"""DPO: tiny runs end to end (LoRA, full, from an SFT adapter), the reference model of each start, rewards in the report."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import qa_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

import medtune
from medtune.align import make_pairs
from medtune.align.dpo import build_dpo_trainer, check_start, reward_history
from medtune.align.pairs import pair_splits
from medtune.data import prepare_data
from medtune.models import MODEL_CARD, load_model, load_start, resolve_model, resolve_start
from medtune.pipeline import run
from medtune.predict import Predictor
from medtune.recipe import RecipeError, recipe_from_dict
from medtune.train.sft import prepare_tokenizer


def dpo_recipe(causal: dict, method: str = "lora", rejected: tuple[str, ...] = ("same_focus", "corrupted")) -> dict:
    """The conftest causal recipe as a 4-step DPO run with an evaluation every 2 steps."""
    causal["train"] |= {"method": method, "max_steps": 4, "eval_steps": 2, "save_steps": 50}
    causal["eval"] |= {"metrics": ["perplexity", "rouge"], "max_samples": 4}
    causal["align"] = {"beta": 0.1, "pairs": {"rejected": list(rejected), "generation": {"max_new_tokens": 8}}}
    return causal


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, qa_jsonl, tiny_llama) -> Path:
    """A finished LoRA SFT run on the tiny Llama: the adapter start of DPO."""
    out = tmp_path_factory.mktemp("sft")
    recipe = {
        "name": "tiny-sft",
        "model": str(tiny_llama),
        "data": {"sources": [{"loader": "jsonl", "path": str(qa_jsonl)}], "split": {"validation": 0.2, "test": 0.2, "seed": 0}},
        "prompt": {"template": "{question}", "system": "You answer medical questions."},
        "train": {"method": "lora", "max_steps": 6, "learning_rate": 5e-3, "batch_size": 4, "logging_steps": 1,
                  "max_length": 64, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "eval": {"metrics": ["perplexity"], "max_samples": 2, "generation": {"max_new_tokens": 4}},
        "tracking": {"backend": "none"},
    }
    return run(recipe_from_dict(recipe), run_dir=out / "run")


def dpo_trainer(recipe, run_dir: Path):
    """The pipeline's steps up to the trainer, and an untouched copy of the starting model."""
    start = resolve_start(recipe.model.name_or_path)
    check_start(start, method=recipe.train.method)
    model, tokenizer = load_start(start)
    new_tokens = prepare_tokenizer(tokenizer, model)
    starting_model = copy.deepcopy(model).eval()
    pairs, _ = pair_splits(prepare_data(recipe.data).splits, recipe.align.pairs)
    return build_dpo_trainer(recipe, model, tokenizer, pairs, run_dir, new_token_ids=new_tokens), starting_model


def completion_logps(model, batch) -> torch.Tensor:
    """Summed log-probabilities of each row's completion tokens: what DPO calls logps."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels, mask = batch["input_ids"][:, 1:], batch["completion_mask"][:, 1:]
    return (logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask).sum(1)


def first_batch(trainer, n: int = 4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def implicit_rewards(policy: torch.Tensor, reference: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO's reward margin per pair, beta * ((policy - reference) on chosen - (policy - reference) on rejected);
    the collator stacks the chosen rows above the rejected ones."""
    n = len(policy) // 2
    gain = policy - reference
    return beta * (gain[:n] - gain[n:])


def train_on_first_pairs(trainer, n: int = 3):
    """Train on the first `n` pairs only, so the margins after training are measured on pairs DPO saw at every step.
    Three: the 4th pair mirrors the 3rd (its chosen answer is the 3rd's rejected one and vice versa), and a random
    model, which barely reads the prompt, cannot raise both."""
    trainer.train_dataset = trainer.train_dataset.select(range(n))
    # Chosen means the data's own answer to the question (swapped columns would pass a margin check on the rows).
    answers, tok = {r["question"]: r["answer"] for r in qa_rows()}, trainer.processing_class
    for row in trainer.train_dataset:
        question = next(q for q in answers if q in tok.decode(row["prompt_ids"]))
        assert tok.decode(row["chosen_ids"], skip_special_tokens=True).strip() == answers[question]
    trainer.train()
    return first_batch(trainer, n)


def test_lora_dpo_run_reports_reward_accuracy_and_pair_counts(causal_recipe_dict, tmp_path):
    recipe = dpo_recipe(causal_recipe_dict, "lora", ("same_focus", "corrupted", "sampled"))
    run_dir = run(recipe_from_dict(recipe), run_dir=tmp_path / "dpo")
    report = json.loads((run_dir / "report.json").read_text())

    rewards = report["train"]["rewards"]
    assert [e["step"] for e in rewards["eval"]][:2] == [2, 4]
    n_val = report["data"]["pairs"]["validation"]["pairs"]
    for e in rewards["eval"]:  # each after an update: the policy left the reference, so no reward is 0
        assert e["chosen"] != 0 and e["rejected"] != 0 and e["margin"] == pytest.approx(e["chosen"] - e["rejected"], abs=1e-6)
        assert e["accuracy"] * n_val == pytest.approx(round(e["accuracy"] * n_val))  # a share of whole validation pairs
    assert report["eval"]["metrics"]["reward_accuracy"] == rewards["eval"][-1]["accuracy"]
    assert report["eval"]["metrics"]["reward_margin"] == rewards["eval"][-1]["margin"]
    # The first step is measured before any update: policy and reference agree, so every reward is 0.
    assert rewards["train"][0] | {"step": 0} == {"step": 0, "accuracy": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0}
    assert report["train"]["align"] == {"method": "dpo", "beta": 0.1, "loss_type": "sigmoid"}
    assert "reward_accuracy" in (run_dir / "report.md").read_text()

    pairs = report["data"]["pairs"]
    n_train = report["data"]["sizes"]["train"]
    by_strategy = pairs["train"]["by_strategy"]
    assert by_strategy["same_focus"] == by_strategy["corrupted:wrong_entity"] == n_train
    assert by_strategy.get("sampled", 0) + sum(pairs["train"]["degenerate"].values()) == n_train
    assert pairs["validation"]["pairs"] > 0 and pairs["dropped_too_long"] == {"train": 0, "eval": 0}

    before, after = report["eval"]["before"]["perplexity"], report["eval"]["perplexity"]
    assert before["tokens"] == after["tokens"] > 0  # the validation pairs' chosen answers
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "ref").exists()
    assert json.loads((adapter / MODEL_CARD).read_text())["adapter"] is True


def test_full_dpo_precomputes_the_starting_models_log_probs(causal_recipe_dict, tmp_path):
    recipe = recipe_from_dict(dpo_recipe(causal_recipe_dict, "full"))
    trainer, starting_model = dpo_trainer(recipe, tmp_path)
    assert trainer.ref_model is None  # no second copy of the weights: the reference was computed up front
    batch = first_batch(trainer)
    expected = completion_logps(starting_model, batch)
    torch.testing.assert_close(torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]), expected, rtol=1e-4, atol=1e-4)
    trained = train_on_first_pairs(trainer)
    policy = completion_logps(trainer.model.eval(), batch)
    assert not torch.allclose(policy, expected, atol=1e-3)  # the policy moved; the stored reference did not
    # DPO raised every chosen answer against its rejected one, relative to the start (a wrong sign lowers them)
    rewards = implicit_rewards(completion_logps(trainer.model, trained), completion_logps(starting_model, trained))
    assert (rewards > 0.5).all(), rewards
    last = [e for e in trainer.state.log_history if "rewards/accuracies" in e][-1]
    assert last["step"] == 4 and last["rewards/accuracies"] == 1.0  # TRL's own count agrees at the last step


def test_full_dpo_run_over_a_pair_file(causal_recipe_dict, qa_jsonl, tmp_path):
    pair_file = tmp_path / "pairs.jsonl"
    make_pairs(qa_jsonl, pair_file, strategies=["corrupted"])
    blank = {"prompt": "What is scurvy ?", "chosen": "A lack of vitamin C .", "rejected": " ", "focus": "scurvy"}
    pair_file.write_text(pair_file.read_text() + json.dumps(blank) + "\n")
    recipe = dpo_recipe(causal_recipe_dict, "full")
    recipe["data"] |= {"sources": [{"loader": "pairs", "path": str(pair_file)}], "dedup": False}
    recipe["train"]["learning_rate"] = 1e-4
    run_dir = run(recipe_from_dict(recipe), run_dir=tmp_path / "full")
    report = json.loads((run_dir / "report.json").read_text())
    pairs = report["data"]["pairs"]
    degenerate = sum(pairs[s]["degenerate"].get("blank_rejected", 0) for s in ("train", "validation"))
    kept = sum(pairs[s]["by_strategy"]["file"] for s in ("train", "validation"))
    assert kept + degenerate == report["data"]["sizes"]["train"] + report["data"]["sizes"]["validation"]
    last = report["train"]["rewards"]["eval"][-1]
    assert report["eval"]["metrics"]["reward_accuracy"] == last["accuracy"] and 0 not in (last["chosen"], last["rejected"])
    assert (run_dir / "model" / "model.safetensors").is_file()

    # What was saved is the trained policy: every transformer weight moved from the start's.
    saved, start = AutoModelForCausalLM.from_pretrained(run_dir / "model"), AutoModelForCausalLM.from_pretrained(causal_recipe_dict["model"])
    start_weights = dict(start.model.layers.named_parameters())
    assert all(not torch.equal(w, start_weights[n]) for n, w in saved.model.layers.named_parameters() if "norm" not in n)
    # medtune.load answers in the run's chat format: the same greedy tokens as transformers given that prompt by hand.
    questions = ["What causes gout ?", "How to treat lupus ?"]
    predictor = medtune.load(run_dir)
    answers = predictor.predict(questions, max_new_tokens=4)
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    for question, answer, used in zip(questions, answers, predictor.prompts(questions)):
        prompt = f"<|im_start|>system\nYou answer medical questions.<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        assert used == prompt  # a random model's greedy tokens barely depend on the prompt, so the prompt is checked itself
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        new = saved.generate(ids, max_new_tokens=4, do_sample=False, num_beams=1, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert answer and answer == tok.decode(new, skip_special_tokens=True).strip()


def test_adapter_start_references_the_sft_model_with_one_copy_of_the_base(causal_recipe_dict, sft_run, tmp_path):
    recipe = recipe_from_dict(dpo_recipe(causal_recipe_dict, "lora") | {"model": str(sft_run)})
    trainer, _ = dpo_trainer(recipe, tmp_path)
    model = trainer.model
    assert trainer.ref_model is None and list(model.peft_config) == ["default", "ref"]
    card = json.loads((sft_run / "adapter" / MODEL_CARD).read_text())
    base = load_model(resolve_model(card["base_model"]))
    base.resize_token_embeddings(len(trainer.processing_class))
    adapter_params = ("lora_", "trainable_tokens_delta")
    base_params = sum(p.numel() for n, p in model.named_parameters() if not any(a in n for a in adapter_params))
    assert base_params == sum(p.numel() for p in base.parameters())  # the base weights exist once

    sft = Predictor.from_pretrained(sft_run).model  # the starting point, loaded on its own
    batch = first_batch(trainer)
    expected = completion_logps(sft, batch)
    reference = lambda: torch.cat(trainer.compute_ref_log_probs(model, batch))  # noqa: E731
    torch.testing.assert_close(reference(), expected, rtol=1e-4, atol=1e-4)
    with model.disable_adapter():
        bare_base = completion_logps(model, batch)
    assert not torch.allclose(bare_base, expected, atol=1e-2)  # so the reference is the SFT model, not the bare base

    trained = train_on_first_pairs(trainer)
    torch.testing.assert_close(reference(), expected, rtol=1e-4, atol=1e-4)  # still frozen
    assert not torch.allclose(completion_logps(model.eval(), batch), expected, atol=1e-3)  # the policy moved
    # ... towards the chosen answers, measured against the SFT model it started from
    rewards = implicit_rewards(completion_logps(model, trained), completion_logps(sft, trained))
    assert (rewards > 0.02).all(), rewards


def test_dpo_run_from_an_sft_run_saves_an_adapter_on_the_same_base(causal_recipe_dict, sft_run, tmp_path):
    recipe = dpo_recipe(causal_recipe_dict, "lora") | {"model": str(sft_run)}
    run_dir = run(recipe_from_dict(recipe), run_dir=tmp_path / "dpo")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["model"].endswith(f"+ adapter {sft_run / 'adapter'}")
    assert report["train"]["rewards"]["train"][0]["margin"] == 0.0  # the reference is where training starts
    card = json.loads((run_dir / "adapter" / MODEL_CARD).read_text())
    assert card["base_model"] == json.loads((sft_run / "adapter" / MODEL_CARD).read_text())["base_model"]
    assert not (run_dir / "adapter" / "ref").exists()
    assert len(medtune.load(run_dir).predict(["What causes gout ?", "How to treat lupus ?"], max_new_tokens=4)) == 2


def test_adapter_start_needs_an_adapter_method_and_seq2seq_is_refused(causal_recipe_dict, sft_run, tiny_t5):
    recipe = recipe_from_dict(dpo_recipe(causal_recipe_dict, "full") | {"model": str(sft_run)})
    with pytest.raises(RecipeError, match="is a LoRA adapter, and DPO goes on training it: set train.method=lora"):
        check_start(resolve_start(recipe.model.name_or_path), method="full")
    seq2seq = recipe_from_dict(dpo_recipe(causal_recipe_dict) | {"model": str(tiny_t5)})
    with pytest.raises(RecipeError, match="DPO trains causal LMs"):
        check_start(resolve_start(seq2seq.model.name_or_path))
    with pytest.raises(RecipeError, match="align: DPO trains causal LMs; model.kind is seq2seq"):
        recipe_from_dict(dpo_recipe(causal_recipe_dict) | {"model": {"name_or_path": str(tiny_t5), "kind": "seq2seq"}})
    sft = {k: v for k, v in causal_recipe_dict.items() if k != "align"}  # dpo_recipe() above added the align section
    sft_on_adapter = recipe_from_dict(sft | {"model": str(sft_run), "output_dir": str(sft_run / "none")})
    with pytest.raises(RecipeError, match="is a LoRA adapter; fold it into its base with `medtune merge-adapter`"):
        run(sft_on_adapter)  # SFT would wrap a second adapter around the first
    assert not (sft_run / "none").exists()  # refused before a run directory was made


def test_reward_history_reads_trls_metric_names():
    log = [
        {"loss": 0.69, "rewards/accuracies": 0.0, "rewards/margins": 0.0, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "step": 1},
        {"eval_loss": 0.6, "eval_rewards/accuracies": 0.75, "eval_rewards/margins": 0.2, "eval_rewards/chosen": 0.1,
         "eval_rewards/rejected": -0.1, "step": 2},
        {"train_loss": 0.65, "step": 2},
    ]
    assert reward_history(log) == {
        "train": [{"step": 1, "accuracy": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0}],
        "eval": [{"step": 2, "accuracy": 0.75, "margin": 0.2, "chosen": 0.1, "rejected": -0.1}],
    }
