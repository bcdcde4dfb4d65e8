"""`train.objective: embedding`: all-MiniLM-L6-v2 fine-tuned on question -> passage pairs with consumer-style
rewrites and other-focus hard negatives; the run directory is an embedder that `index build` takes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import qa_rows
from medtune.data.rewrites import consumer_rewrites
from medtune.records import QARecord

ROOT = Path(__file__).resolve().parents[1]
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def _records() -> list[QARecord]:
    return [QARecord(question=r["question"], answer=r["answer"], id=r["id"], focus=r["focus"], qtype=r["qtype"]) for r in qa_rows()]


def test_consumer_rewrites_are_seeded_distinct_and_keep_the_question():
    records = _records()
    first, again = consumer_rewrites(records, 3, seed=5), consumer_rewrites(records, 3, seed=5)
    assert first == again and first != consumer_rewrites(records, 3, seed=6)
    for record, made in zip(records, first):
        assert len(made) == 3 and len(set(made)) == 3 and record.question not in made
        for text in made:
            # At most two words are misspelled: most of the stored question's words are still there.
            words = record.question.lower().replace("?", "").split()
            assert sum(w in text.lower().split() for w in words) >= len(words) - 2
    texts = [t for made in first for t in made]
    assert any(t.startswith(("my ", "i have had", "so my", "im ", "a friend")) for t in texts)  # narrative openings occur
    assert any(" also " in t or " and " in t for t in texts)  # a second question joins some


def test_hard_negatives_come_from_another_focus_then_from_other_questions_of_the_same_focus():
    from medtune.rag.embedder import resolve_folder
    from medtune.rag.finetune import _first_passages, _hard_negatives

    records = _records() + [QARecord(question="What are hiccups?", answer="Hiccups are sudden contractions of the diaphragm.",
                                     id="h1", focus="hiccups", qtype="information")]  # a focus with one question
    texts = _first_passages(records)
    record_of = {t: r for r, t in zip(records, texts)}
    negatives, report = _hard_negatives(records, texts, resolve_folder(EMBEDDER)[1], 128, focus_negatives=1)
    assert len(negatives) == len(records) and report["hard_negative_fallbacks"] == 0
    assert all(len(n) == 2 for n in negatives)
    assert all(record_of[n[0]].focus != r.focus for r, n in zip(records, negatives))
    questions_per_focus = {f: len({r.question.lower() for r in records if r.focus == f}) for f in {r.focus for r in records}}
    for r, (_, same) in zip(records, negatives):
        if questions_per_focus[r.focus] > 1:  # another question of the disease: its answer is the second negative
            assert record_of[same].focus == r.focus and record_of[same].question.lower() != r.question.lower()
        else:  # none: a passage of another focus fills in, and is counted
            assert record_of[same].focus != r.focus
    assert report["focus_negative_fallbacks"] == sum(questions_per_focus[r.focus] == 1 for r in records) == 1


def _train(qa_jsonl: Path, tmp: Path, objective: str, steps: int, rewrites: int, save_steps: int,
           **retriever) -> tuple[Path, subprocess.CompletedProcess]:
    """`medtune train` of a tiny retrieval recipe on the fixture QA file; (run directory, the finished process)."""
    recipe = {
        "name": objective, "model": EMBEDDER,  # a re-ranker starts from the bi-encoder's encoder, with a new head
        "data": {"sources": [{"loader": "jsonl", "path": str(qa_jsonl)}], "split": {"validation": 0.2, "test": 0.2, "group_by": "focus", "seed": 0}},
        "train": {"objective": objective, "retriever": {"rewrites": rewrites, **retriever}, "max_steps": steps, "batch_size": 8, "learning_rate": 5e-5,
                  "logging_steps": 1, "save_steps": save_steps},
        "tracking": {"backend": "none"}, "output_dir": str(tmp / "runs"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp / "run"
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "train", str(path), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


@pytest.fixture(scope="module")
def embedder_run(qa_jsonl, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    return _train(qa_jsonl, tmp_path_factory.mktemp("embedding"), "embedding", steps=3, rewrites=1, save_steps=2)


def test_embedding_run_trains_reports_and_prints_its_directory(embedder_run):
    run_dir, proc = embedder_run
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train"]["global_step"] == 3 and report["train"]["objective"] == "embedding"
    assert report["data"]["pairs"] == {"questions": 24, "rewrites": 24, "hard_negative_fallbacks": 0}
    before, after = report["eval"]["before"]["metrics"]["mrr@10"], report["eval"]["metrics"]["mrr@10"]
    assert 0 < before <= 1 and 0 < after <= 1
    assert "validation MRR@10 (consumer rewrites)" in proc.stderr and "trained 3 steps" in proc.stderr
    assert (run_dir / "checkpoints" / "checkpoint-2").is_dir() and (run_dir / "loss_curve.png").is_file()


def test_the_run_directory_is_an_embedder_for_index_build(embedder_run, tmp_path):
    from sentence_transformers import SentenceTransformer

    from medtune.rag.embedder import resolve_folder

    run_dir, _ = embedder_run
    model = SentenceTransformer(str(run_dir / "model"), device="cpu")
    stock = SentenceTransformer(str(resolve_folder(EMBEDDER)[1]), device="cpu")
    text = ["What causes gout ?"]
    assert model.encode(text).shape == stock.encode(text).shape and not (model.encode(text) == stock.encode(text)).all()  # trained
    passages = tmp_path / "passages.jsonl"
    passages.write_text("".join(json.dumps({"id": r["id"], "text": f"{r['question']}\n{r['answer']}", "title": r["focus"]}) + "\n"
                                for r in qa_rows()))
    out = tmp_path / "index"
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "index", "build", str(passages), "--out", str(out), "--embedder", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["embedding"]["model"] == str((run_dir / "model").resolve()) and manifest["counts"]["passages"] == 40


def test_reranker_run_trains_a_cross_encoder_that_retrieval_uses(qa_jsonl, tmp_path):
    from sentence_transformers import CrossEncoder

    # Cut to 2 of the encoder's 6 layers (a faster re-ranker), with a same-focus negative per question.
    run_dir, _ = _train(qa_jsonl, tmp_path, "reranker", steps=2, rewrites=0, save_steps=100, layers=2, focus_negatives=1)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["train"]["objective"] == "reranker" and report["train"]["global_step"] == 2 and report["train"]["loss"] == "mnrl"
    assert report["data"]["pairs"] == {"questions": 24, "rewrites": 0, "hard_negative_fallbacks": 0, "focus_negative_fallbacks": 0}
    assert "re-ranked" in report["eval"]["about"] and 0 < report["eval"]["metrics"]["mrr@10"] <= 1
    model = CrossEncoder(str(run_dir / "model"), device="cpu")
    assert model.model.config.num_hidden_layers == len(model.model.base_model.encoder.layer) == 2
    scores = model.predict([("What causes gout ?", "gout is caused by uric acid"), ("What causes gout ?", "asthma narrows airways")])
    assert scores.shape == (2,)

    # `ask --retrieve-only --reranker RUN_DIR`: the hits come back in the cross-encoder's order.
    from medtune.rag.index import build_index, load_index
    from medtune.rag.passages import load_passages
    from medtune.rag.retrieve import Retriever

    passages, report_ = load_passages(qa_jsonl)
    index_dir = build_index(passages, tmp_path / "index", report=report_, progress=False)
    out = subprocess.run([sys.executable, "-m", "medtune.cli", "ask", "how would i know if i have gout", "--index", str(index_dir),
                          "--retrieve-only", "--k", "3", "--reranker", str(run_dir)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    hits = Retriever(load_index(index_dir), reranker=str(run_dir)).search("how would i know if i have gout", k=3)
    assert [h["id"] for h in json.loads(out.stdout)] == [h.id for h in hits]
    assert [h.rerank_score for h in hits] == sorted((h.rerank_score for h in hits), reverse=True)
    # Query time runs an int8 ONNX export: it scores as the torch model does, within quantization error.
    from medtune.rag.reranker import Reranker

    pairs = [("how would i know if i have gout", h.text) for h in hits] + [("What causes gout ?", "asthma narrows airways")]
    exact, onnx, int8 = (Reranker(str(run_dir), backend).predict(pairs) for backend in ("torch", "onnx", "onnx-int8"))
    assert exact.shape == (4,) and ((exact > 0) & (exact < 1)).all()
    assert abs(onnx - exact).max() < 1e-5 and abs(int8 - exact).max() < 0.02
    with pytest.raises(ValueError, match="not a cross-encoder"):  # a bi-encoder would score with an untrained head
        Retriever(load_index(index_dir), reranker=EMBEDDER)
    refused = subprocess.run([sys.executable, "-m", "medtune.cli", "ask", "gout?", "--reranker", str(run_dir)],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert refused.returncode != 0 and "--reranker re-ranks what the index finds" in refused.stderr


def test_retriever_runs_take_the_shared_training_settings(tmp_path):
    """Gradient accumulation, checkpointing and tracking come from the recipe as for every medtune trainer;
    batches come from sentence-transformers' no-duplicates sampler, not length grouping."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    from medtune.rag.finetune import _arguments
    from medtune.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "retriever-medquad.yaml",
                         ["train.gradient_accumulation_steps=4", "tracking.backend=tensorboard", "train.save_total_limit=3"])
    args, callbacks = _arguments(recipe, tmp_path, SentenceTransformerTrainingArguments)
    assert args.gradient_accumulation_steps == 4 and args.save_total_limit == 3 and args.run_name == "retriever-medquad"
    assert args.batch_sampler == BatchSamplers.NO_DUPLICATES and args.train_sampling_strategy == "random"
    assert [type(c).__name__ for c in callbacks] == ["TensorBoardCallback"] and args.output_dir == str(tmp_path / "checkpoints")


def test_layers_keeps_the_first_layers_and_refuses_as_many_as_the_model_has():
    from sentence_transformers import SentenceTransformer

    from medtune.rag.embedder import resolve_folder
    from medtune.rag.finetune import _check_layers, _keep_layers
    from medtune.recipe import RecipeError

    folder = resolve_folder(EMBEDDER)[1]
    with pytest.raises(RecipeError, match=r"train.retriever.layers: 6, but .* has 6 layers"):
        _check_layers(folder, 6, EMBEDDER)  # before any data is read
    _check_layers(folder, 5, EMBEDDER)
    model = SentenceTransformer(str(folder), device="cpu")
    bert = model[0].auto_model
    third = bert.encoder.layer[2]
    _keep_layers(bert, 3, EMBEDDER)
    assert len(bert.encoder.layer) == bert.config.num_hidden_layers == 3 and bert.encoder.layer[2] is third
    assert model.encode(["What causes gout?"]).shape == (1, 384)
