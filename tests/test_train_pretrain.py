"""Continued pre-training on plain text, mixed by weight with QA sources (replay), and the text loader."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from medtune.data import load_source, prepare_data
from medtune.data.report import DataError
from medtune.models import load_model, load_tokenizer, resolve_model
from medtune.pipeline import run
from medtune.predict import Predictor
from medtune.recipe import RecipeError, SourceConfig, recipe_from_dict
from medtune.train.sft import build_sft_trainer

CASES = [
    {"raw_text": "Varón de 77 años sin antecedentes de interés.", "document_id": "1"},
    {"raw_text": "Consulta por dolor torácico de una hora de evolución.", "document_id": "1"},
    {"raw_text": "Mujer de 45 años con fiebre y tos productiva.", "document_id": "2"},
    {"raw_text": "   ", "document_id": "3"},
    {"raw_text": "Se pauta amoxicilina 500 mg cada 8 horas.", "document_id": "4"},
]


@pytest.fixture
def clinical_jsonl(tmp_path):
    path = tmp_path / "cases_es.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CASES), encoding="utf-8")
    return path


def test_text_loader_reads_documents_groups_them_and_counts_bad_lines(clinical_jsonl, tmp_path):
    cfg = SourceConfig(loader="text", path=str(clinical_jsonl), fields={"text": "raw_text", "focus": "document_id"},
                       language="es", on_bad_row="skip")
    records, report = load_source(cfg)
    assert [r.answer for r in records] == [c["raw_text"] for c in CASES if c["raw_text"].strip()]
    assert all(r.question == "" and r.language == "es" for r in records)
    assert [r.focus for r in records] == ["cases_es:1", "cases_es:1", "cases_es:2", "cases_es:4"]  # one case, one group
    assert [r.id for r in records] == ["cases_es:1", "cases_es:2", "cases_es:3", "cases_es:5"]  # file:line
    assert report.skipped == [{"file": str(clinical_jsonl), "row": 4, "reason": "empty or non-string text"}]
    with pytest.raises(DataError, match=r"cases_es.jsonl, line 4, column 'raw_text': empty or non-string text"):
        load_source(cfg.model_copy(update={"on_bad_row": "error"}))

    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("First note.\n")
    (folder / "b.txt").write_text("Second note.\n")
    records, _ = load_source(SourceConfig(loader="text", path=str(folder)))
    assert [(r.id, r.answer, r.focus) for r in records] == [("a", "First note.", "a"), ("b", "Second note.", "b")]


@pytest.fixture
def pretrain_dict(causal_recipe_dict, qa_jsonl, tmp_path) -> dict:
    """Spanish clinical text (weight 3) with English QA pairs as plain-text replay (weight 1)."""
    clinical = tmp_path / "cases_es.jsonl"
    clinical.write_text("".join(json.dumps({"raw_text": f"Paciente {i}: {CASES[i % 5]['raw_text']}"}, ensure_ascii=False) + "\n"
                                for i in range(60)), encoding="utf-8")
    causal_recipe_dict["data"]["sources"] = [
        {"loader": "text", "path": str(clinical), "fields": {"text": "raw_text"}, "language": "es",
         "on_bad_row": "skip", "weight": 3.0},
        {"loader": "jsonl", "path": str(qa_jsonl), "weight": 1.0},
    ]
    causal_recipe_dict["data"]["split"] |= {"validation": 0.1, "test": 0.1}
    causal_recipe_dict["train"]["objective"] = "pretrain"
    causal_recipe_dict["eval"]["metrics"] = ["perplexity"]
    return causal_recipe_dict


def test_pretrain_loss_falls_on_every_token_and_ends_with_eos(pretrain_dict, tmp_path):
    recipe = recipe_from_dict(pretrain_dict)
    resolved = resolve_model(recipe.model.name_or_path)
    tokenizer, model = load_tokenizer(resolved), load_model(resolved)
    splits = prepare_data(recipe.data).splits
    trainer = build_sft_trainer(recipe, model, tokenizer, splits, tmp_path)
    texts = {r["answer"] if not r["question"] else f"{r['question']}\n\n{r['answer']}" for r in splits["train"]}
    for example in [trainer.train_dataset[i] for i in range(3)]:
        batch = trainer.data_collator([example])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert labels == ids  # no prompt to mask: every token is learned
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[:-1]) in texts


def test_sft_refuses_plain_text_records(pretrain_dict, tmp_path):
    pretrain_dict["train"]["objective"] = "sft"
    recipe = recipe_from_dict(pretrain_dict)
    resolved = resolve_model(recipe.model.name_or_path)
    with pytest.raises(RecipeError, match=r"records have no question .* train.objective: pretrain"):
        build_sft_trainer(recipe, load_model(resolved), load_tokenizer(resolved), prepare_data(recipe.data).splits, tmp_path)


def test_pretrain_is_for_causal_models_and_not_for_dpo(pretrain_dict):
    seq2seq = copy.deepcopy(pretrain_dict) | {"model": {"name_or_path": pretrain_dict["model"], "kind": "seq2seq"}}
    with pytest.raises(RecipeError, match="pretrain is continued pre-training of causal LMs"):
        recipe_from_dict(seq2seq)
    pretrain_dict["align"] = {"method": "dpo"}
    with pytest.raises(RecipeError, match="DPO needs question-answer pairs"):
        recipe_from_dict(pretrain_dict)


def test_pretrain_run_reports_the_realized_mix_and_perplexity(pretrain_dict, tmp_path):
    pretrain_dict["train"] |= {"max_steps": 12, "learning_rate": 1e-2}  # enough for a clear fall in perplexity
    run_dir = run(recipe_from_dict(pretrain_dict), run_dir=tmp_path / "run")
    report = json.loads((run_dir / "report.json").read_text())
    mix = report["data"]["mix"]
    assert mix["strategy"] == "interleave" and mix["weights"] == {"cases_es.jsonl": 3.0, "qa.jsonl": 1.0}
    assert sum(mix["train"].values()) == report["data"]["sizes"]["train"]
    # Drawn 3:1 until the first source runs out, so no example repeats and the mix follows the weights.
    share = mix["train"]["cases_es.jsonl"] / sum(mix["train"].values())
    assert 0.6 <= share <= 0.9 and mix["train"]["qa.jsonl"] > 0
    assert "rougeL" not in report["eval"]["metrics"]

    # Perplexity by hand over the validation texts: every token predicted from the ones before it, the EOS appended
    # (<|im_end|>, which medtune gives a base model) included, as the loss sees them; with the adapter and without.
    predictor = Predictor.from_pretrained(run_dir)
    model, tokenizer = predictor.model.eval(), predictor.tokenizer
    texts = [f"{r['question']}\n\n{r['answer']}" if r["question"] else r["answer"]
             for r in prepare_data(recipe_from_dict(pretrain_dict).data).splits["validation"]]
    ids = [tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")] for t in texts]
    assert max(map(len, ids)) < pretrain_dict["train"]["max_length"]  # nothing truncated

    def hand_perplexity() -> tuple[float, int]:
        nll = 0.0
        with torch.no_grad():
            for row in ids:
                logits = model(torch.tensor([row])).logits[0, :-1]
                nll += torch.nn.functional.cross_entropy(logits, torch.tensor(row[1:]), reduction="sum").item()
        tokens = sum(len(row) - 1 for row in ids)
        return math.exp(nll / tokens), tokens

    before, after = report["eval"]["before"]["perplexity"], report["eval"]["perplexity"]
    trained, tokens = hand_perplexity()
    with model.disable_adapter():
        start, _ = hand_perplexity()
    assert before["tokens"] == after["tokens"] == tokens
    assert after["perplexity"] == pytest.approx(trained, rel=1e-4) and report["eval"]["metrics"]["perplexity"] == after["perplexity"]
    assert before["perplexity"] == pytest.approx(start, rel=1e-4)
    assert after["perplexity"] < 0.92 * before["perplexity"]  # 12 LoRA steps take it from 452 to 399
