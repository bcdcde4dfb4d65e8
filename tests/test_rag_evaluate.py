"""Retrieval metrics on hand-computed examples, query/qrels parsing, and the MedQuAD self-test builder."""

from __future__ import annotations

import json
import math

import pytest

from medtune.data.report import DataError
from medtune.rag.evaluate import build_medquad_selftest, read_qrels, read_queries, score
from medtune.records import QARecord


def test_metrics_hand_computed():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}  # q3 gets no results: counts as 0
    ranked = {"q1": ["x", "a", "y", "b"], "q2": ["c", "d"]}
    m = score(qrels, ranked, ks=(1, 2, 5))
    assert m["mrr@10"] == round((1 / 2 + 1 + 0) / 3, 4)
    assert m["recall@1"] == round((0 + 1 + 0) / 3, 4)
    assert m["recall@2"] == round((0.5 + 1 + 0) / 3, 4)
    assert m["recall@5"] == round((1 + 1 + 0) / 3, 4)
    assert m["map@10"] == round(((1 / 2 + 2 / 4) / 2 + 1 + 0) / 3, 4)
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == round((ndcg_q1 + 1 + 0) / 3, 4)


def test_bad_query_and_qrels_lines(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "1", "query": "gout"}\n{"id": "2"}\n')
    with pytest.raises(DataError, match="q.jsonl, line 2"):
        read_queries(q)
    r = tmp_path / "qrels.txt"
    r.write_text("1 0 a 1\n1 0 b\n")
    with pytest.raises(DataError, match="qrels.txt, line 2"):
        read_qrels(r)
    r.write_text("1 0 a 1\n1 0 b 2\n")
    assert read_qrels(r) == {"1": {"a": 1, "b": 2}}


def test_selftest_paraphrases_split_by_focus(tmp_path):
    recs = [QARecord(question=f"What are the symptoms of {d} ?", answer=" ".join(["pain"] * 30), id=f"{d}-1", focus=d.title(), qtype="symptoms")
            for d in ("gout", "asthma", "lupus", "rickets")]
    recs.append(QARecord(question="What causes gout ?", answer="uric acid", id="gout-2", focus="Gout", qtype="causes"))
    paths = build_medquad_selftest(recs, tmp_path, chunk_words=20, overlap=5, seed=1)
    queries = [json.loads(line) for line in paths["all"]["queries"].read_text().splitlines()]
    assert len(queries) == 5 and all(q["query"] not in [r.question for r in recs] for q in queries)
    gout_symptoms = next(q for q in queries if q["focus"] == "Gout" and q["qtype"] == "symptoms")
    assert "gout" in gout_symptoms["query"]
    assert read_qrels(paths["all"]["qrels"])[gout_symptoms["id"]] == {"gout-1#1": 1, "gout-1#2": 1}
    dev = {q["focus"] for q in map(json.loads, paths["dev"]["queries"].read_text().splitlines())}
    test = {q["focus"] for q in map(json.loads, paths["test"]["queries"].read_text().splitlines())}
    assert len(dev) == len(test) == 2 and not dev & test
    again = build_medquad_selftest(recs, tmp_path / "again", chunk_words=20, overlap=5, seed=1)
    assert again["all"]["queries"].read_text() == paths["all"]["queries"].read_text()


def test_queries_with_unreadable_json_name_the_line(tmp_path):
    from medtune.data.report import DataError
    from medtune.rag.evaluate import read_queries

    path = tmp_path / "queries.jsonl"
    path.write_text('{"id": "q1", "query": "gout"}\n{"id": "q2", "query": ' + "9" * 5000 + "}\n")
    with pytest.raises(DataError, match="line 2: unreadable JSON"):
        read_queries(path)
