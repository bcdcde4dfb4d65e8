"""Continued pre-training on plain text, mixed by weight with QA sources (replay), and the text loader."""

from __future__ import annotations

import copy
import json

import pytest

from medtune.data import load_source, prepare_data
from medtune.data.report import DataError
from medtune.models import load_model, load_tokenizer, resolve_model
from medtune.pipeline import run
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
    run_dir = run(recipe_from_dict(pretrain_dict), run_dir=tmp_path / "run")
    report = json.loads((run_dir / "report.json").read_text())
    mix = report["data"]["mix"]
    assert mix["strategy"] == "interleave" and mix["weights"] == {"cases_es.jsonl": 3.0, "qa.jsonl": 1.0}
    assert sum(mix["train"].values()) == report["data"]["sizes"]["train"]
    # Drawn 3:1 until the first source runs out, so no example repeats and the mix follows the weights.
    share = mix["train"]["cases_es.jsonl"] / sum(mix["train"].values())
    assert 0.6 <= share <= 0.9 and mix["train"]["qa.jsonl"] > 0
    assert report["eval"]["metrics"]["perplexity"] > 1 and "rougeL" not in report["eval"]["metrics"]
