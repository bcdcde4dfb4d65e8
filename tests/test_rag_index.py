"""Build, reload and search a small index with the real default embedder (offline from its wheel)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import qa_rows
from medtune.data.report import DataError
from medtune.models import ModelNotAvailable
from medtune.rag.embedder import Embedder
from medtune.rag.evaluate import batch_retrieve, evaluate_retrieval
from medtune.rag.index import IndexMismatch, build_index, load_index
from medtune.rag.passages import load_passages
from medtune.rag.retrieve import Candidates, Fusion, Retriever, fuse


@pytest.fixture(scope="module")
def index(qa_jsonl, tmp_path_factory):
    passages, report = load_passages(qa_jsonl)
    out = tmp_path_factory.mktemp("rag") / "index"
    build_index(passages, out, report=report, progress=False)
    return load_index(out)


def test_manifest_records_model_counts_and_threshold(index):
    m = index.manifest
    assert m["embedding"] == {"model": "sentence-transformers/all-MiniLM-L6-v2", "backend": "onnx-int8", "dim": 384, "max_seq_length": 128}
    assert m["counts"]["passages"] == len(index) == len(qa_rows())
    assert m["chunking"] == {"chunk_words": 250, "overlap": 50}
    wr = m["weak_retrieval"]
    assert wr["off_topic"]["p95"] < wr["threshold"] < wr["in_domain"]["p5"] and wr["balanced_accuracy"] == 1.0


@pytest.mark.parametrize("mode", ["hybrid", "dense"])
def test_paraphrase_finds_the_right_passage(index, mode):
    hits = Retriever(index, mode).search("how would i know if i have gout", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert hits[0].id == "gout-symptoms" and hits[0].title == "gout" and hits[0].url == "https://example.org/gout"
    assert hits[0].dense_score > 0.5 and hits[0].bm25_score > 0  # both scores, whatever the mode
    assert hits[0].score >= hits[1].score


def test_bm25_mode_ranks_by_bm25(index):
    hits = Retriever(index, "bm25").search("psoriasis treatment medicines", k=4)
    assert hits[0].id == "psoriasis-treatment"
    assert [h.score for h in hits] == sorted((h.bm25_score for h in hits), reverse=True)
    assert all(h.bm25_rank == h.rank for h in hits)
    assert Retriever(index, "bm25").search("zzzz qqqq", k=3) == []  # no shared word: no BM25 result


def test_search_batch_matches_search(index):
    r = Retriever(index)
    batch = r.search_batch(["what leads to rickets", "can lupus be cured"], k=2)
    assert [[h.id for h in hits] for hits in batch] == [[h.id for h in r.search(q, 2)] for q in ("what leads to rickets", "can lupus be cured")]
    assert batch[0][0].id == "rickets-causes" and batch[1][0].id == "lupus-treatment"


def test_off_topic_query_is_not_confident(index):
    r = Retriever(index)
    assert not r.confident(r.search("What is the capital of France?"))
    assert not r.confident(r.search("Best pizza recipe"))
    assert r.confident(r.search("what are the signs of measles"))
    assert not r.confident([])


def test_other_embedder_is_refused(index):
    with pytest.raises(IndexMismatch, match=r"all-MiniLM-L6-v2 \(onnx-int8.*all-MiniLM-L6-v2 \(torch"):
        Retriever(index, embedder=Embedder(backend="torch"))


def test_missing_models_fail_clearly(index):
    with pytest.raises(ModelNotAvailable, match="no such model directory"):
        Retriever(index, reranker="./no-such-reranker")
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        Retriever(index, "sparse")


def test_evaluate_and_batch_retrieve(index, tmp_path):
    diseases = [r["focus"] for r in qa_rows() if r["qtype"] == "symptoms"]
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"id": d, "query": f"how would i know if i have {d}"}) + "\n" for d in diseases))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("".join(f"{d} 0 {d}-symptoms 1\n" for d in diseases))
    report = evaluate_retrieval(index, queries, qrels, tmp_path / "report", modes=("bm25", "dense", "hybrid"), progress=False)
    assert report["judged_queries"] == 10
    assert report["modes"]["dense"]["recall@10"] == report["modes"]["hybrid"]["recall@10"] == 1.0
    assert report["modes"]["hybrid"]["mrr@10"] >= 0.9
    assert report["modes"]["hybrid"]["latency_ms"]["p95"] > 0
    assert json.loads((tmp_path / "report" / "report.json").read_text())["modes"] == report["modes"]
    assert "| hybrid |" in (tmp_path / "report" / "report.md").read_text()

    out = batch_retrieve(index, queries, tmp_path / "ranked.jsonl", k=3, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == diseases and all(len(r["ranked"]) == 3 for r in rows)
    assert sum(r["ranked"][0] == f"{r['id']}-symptoms" for r in rows) >= 9

    queries.write_text('{"id": "a", "query": "gout"}\nnot json\n')
    with pytest.raises(DataError, match="queries.jsonl, line 2: malformed JSON"):
        batch_retrieve(index, queries, tmp_path / "bad.jsonl")
    queries.write_text('{"id": "a", "query": "gout"}\n')
    qrels.write_text("a 0 unknown-passage 1\n")
    with pytest.raises(DataError, match="none of its 1 relevant passage ids are in the index"):
        evaluate_retrieval(index, queries, qrels)


def test_rebuild_replaces_atomically(index, tmp_path):
    passages = index.passages[:5]
    out = build_index(passages, tmp_path / "ix", progress=False)
    build_index(passages[:3], out, progress=False)
    assert len(load_index(out)) == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["ix"]  # no staging or old copies left
    with pytest.raises(FileNotFoundError, match="not a medtune retrieval index"):
        load_index(tmp_path)


def test_fusion_on_a_hand_computed_example():
    # BM25 ranks passages 2, 0 (scores 8, 4); dense ranks 0, 1; passage 1 has no BM25 score.
    c = Candidates(bm25=np.array([2, 0]), dense=np.array([0, 1]), bm25_scores=np.array([4.0, 0.0, 8.0]), query_vector=np.zeros(3))
    cosine = {0: 0.8, 1: 0.7, 2: 0.5}
    # convex, alpha 0.5: BM25 min-max over the pool {0, 1, 2} -> 0.5, 0, 1
    convex = fuse(c, Fusion("convex", alpha=0.5, depth=2), cosine)
    assert [i for i, _ in convex] == [2, 0, 1]
    assert [s for _, s in convex] == pytest.approx([0.5 * 1 + 0.5 * 0.5, 0.5 * 0.5 + 0.5 * 0.8, 0.5 * 0.7])
    # rrf, k=1: passage 0 is 2nd in BM25 and 1st in dense
    rrf = fuse(c, Fusion("rrf", rrf_k=1, depth=2), cosine)
    assert [i for i, _ in rrf] == [0, 2, 1]
    assert [s for _, s in rrf] == pytest.approx([1 / 3 + 1 / 2, 1 / 2, 1 / 3])
    # Passage 1's stored question matches best: its mixed dense score puts it first in rrf's dense list too.
    asked = Candidates(bm25=np.array([2, 0]), dense=np.array([0, 1]), bm25_scores=np.array([4.0, 0.0, 8.0]),
                       query_vector=np.zeros(3), questions=np.array([1]))
    rrf = fuse(asked, Fusion("rrf", rrf_k=1, depth=2), {0: 0.8, 1: 0.9, 2: 0.5})
    # 0: 2nd in both lists; 1: 1st in dense (ahead of 2 on the tie by its dense score); 2: 1st in BM25
    assert [i for i, _ in rrf] == [0, 1, 2] and [s for _, s in rrf] == pytest.approx([1 / 3 + 1 / 3, 1 / 2, 1 / 2])
    # depth 1 keeps only each list's first: passage 1 is not a candidate
    assert [i for i, _ in fuse(c, Fusion("convex", alpha=0.5, depth=1), cosine)] == [2, 0]


def test_stored_questions_are_indexed_and_matched(index):
    assert index.manifest["questions"] == {"passages": len(qa_rows()), "distinct": len(qa_rows())}
    query = "my dad has gout, what signs should he look for"
    hits = Retriever(index, "dense", fusion=Fusion(question_weight=1.0)).search(query, k=5)
    # Ranked by the cosine with the stored questions alone, the best of which is found by brute force too.
    embedder = index.embedder()
    questions = [p.question for p in index.passages]
    cosines = embedder.encode(questions) @ embedder.encode_queries([query])[0]
    assert hits[0].id == index.passages[int(np.argmax(cosines))].id
    assert [h.question_score for h in hits] == sorted((h.question_score for h in hits), reverse=True)
    assert hits[0].question_score == pytest.approx(float(cosines.max()), abs=0.02)  # f16 vectors in the graph
    # The default blend: a quarter passage, three quarters question cosine.
    blended = Retriever(index, "dense").search(query, k=1)[0]
    assert blended.score == pytest.approx(0.25 * blended.dense_score + 0.75 * blended.question_score, abs=1e-6)


def test_passages_without_questions_search_as_before(tmp_path):
    from conftest import passages

    idx = load_index(build_index(passages(), tmp_path / "plain", progress=False))
    assert idx.manifest["questions"] is None and idx.questions is None
    hit = Retriever(idx, "dense").search("what inflames the airways", k=1)[0]
    assert hit.id == "asthma-1" and hit.question_score is None and hit.score == pytest.approx(hit.dense_score)


def test_a_passage_jsonl_may_name_its_question(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "g1", "text": "Gout is arthritis caused by uric acid crystals.", "question": "What is gout?"}) + "\n")
    passages, _ = load_passages(path)
    assert passages[0].question == "What is gout?" and passages[0].text.startswith("Gout is")


def test_a_long_query_counts_past_the_token_limit(qa_jsonl, tmp_path):
    passages, report = load_passages(qa_jsonl)
    idx = load_index(build_index(passages, tmp_path / "short", max_seq_length=32, report=report, progress=False))
    story = ("Last week I went to the market with my sister and we bought apples, bread and cheese for the weekend. "
             "The weather was sunny and we walked along the river for an hour before lunch at a small cafe. ")
    query = story + "What are the symptoms of gout?"
    embedder = idx.embedder()
    assert len(embedder.tokenizer(query).input_ids) > 32
    windows = embedder._windows(query)
    assert len(windows) > 1 and windows[-1].endswith("What are the symptoms of gout?")
    typed = embedder._windows(story.replace(". ", "\n") + "what are the symptoms of gout")  # line breaks, no full stops
    assert len(typed) > 1 and typed[-1].endswith("what are the symptoms of gout") and not any("\n" in w for w in typed)
    mean = embedder.encode(windows).mean(axis=0)
    assert embedder.encode_queries([query])[0] == pytest.approx(mean / np.linalg.norm(mean), abs=1e-5)
    assert embedder.encode_queries(["What causes gout?"])[0] == pytest.approx(embedder.encode(["What causes gout?"])[0], abs=1e-6)
    hit = Retriever(idx, "dense").search(query, k=1)[0]
    assert hit.title == "gout"  # truncated to its first 32 tokens, the query is only about apples and the weather
