import json
import subprocess
import sys

from conftest import DISEASES
from medtune.testing import QTYPES


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_data_stats_prints_counts_as_json(qa_jsonl, tmp_path):
    bad = tmp_path / "qa.jsonl"
    bad.write_text(qa_jsonl.read_text() + '{"question": "broken\n' + json.dumps({"question": "Q?", "answer": ""}) + "\n")
    proc = _run("-m", "medtune.cli", "data", "stats", str(bad))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    n = len(DISEASES) * len(QTYPES)
    assert stats["loader"] == "jsonl"
    assert (stats["questions"], stats["answered"], stats["empty_answers"]) == (n + 1, n, 1)
    assert stats["per_qtype"]["symptoms"]["questions"] == len(DISEASES)
    assert [s["row"] for s in stats["skipped"]] == [n + 1]  # the malformed line, counted and located
    assert sum(stats["split"]["sizes"].values()) == n and stats["split"]["focus_overlap"] == 0


def test_data_stats_unknown_loader_is_a_clear_error(qa_jsonl):
    proc = _run("-m", "medtune.cli", "data", "stats", str(qa_jsonl), "--loader", "xml")
    assert proc.returncode == 2
    assert "medtune data: error:" in proc.stderr and "medquad" in proc.stderr and "Traceback" not in proc.stderr


def test_testing_module_builds_a_loadable_t5(qa_jsonl, tmp_path):
    proc = _run("-m", "medtune.testing", str(qa_jsonl), str(tmp_path / "t5"), "--vocab-size", "300", "--d-model", "32")
    assert proc.returncode == 0, proc.stderr
    from medtune.models import resolve_model

    assert resolve_model(str(tmp_path / "t5")).kind == "seq2seq"


def test_index_build_retrieve_and_evaluate_from_the_command_line(tmp_path):
    passages = tmp_path / "passages.jsonl"
    rows = [{"id": f"p{d}", "text": f"{d.capitalize()} is a disease. Its symptoms include pain and fever.", "title": d,
             "url": f"https://example.org/{d}"} for d in DISEASES]
    passages.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = tmp_path / "index"
    proc = _run("-m", "medtune.cli", "index", "build", str(passages), "--out", str(index))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((index / "manifest.json").read_text())["counts"]["passages"] == len(DISEASES)

    proc = _run("-m", "medtune.cli", "ask", "what are the symptoms of gout", "--index", str(index), "--retrieve-only", "--k", "2")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert hits[0]["id"] == "pgout" and hits[0]["url"] == "https://example.org/gout" and len(hits) == 2

    queries, qrels, ranked = tmp_path / "q.jsonl", tmp_path / "qrels.txt", tmp_path / "ranked.jsonl"
    queries.write_text(json.dumps({"id": "q1", "query": "gout symptoms"}) + "\n" + json.dumps({"id": "q2", "query": "lupus"}) + "\n")
    qrels.write_text("q1 0 pgout 1\nq2 0 plupus 1\n")
    proc = _run("-m", "medtune.cli", "retrieve", "--index", str(index), "--queries", str(queries), "--out", str(ranked), "--k", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in ranked.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["q1", "q2"] and lines[0]["ranked"][0] == "pgout" and len(lines[0]["ranked"]) == 3

    proc = _run("-m", "medtune.cli", "eval-retrieval", "--index", str(index), "--queries", str(queries), "--qrels", str(qrels),
                "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["modes"]["hybrid"]["recall@1"] == 1.0 and set(report["modes"]) == {"bm25", "dense", "hybrid"}


def test_translate_from_the_command_line_marks_and_keeps_every_record(qa_jsonl, tiny_llama, tmp_path):
    out = tmp_path / "qa_es.jsonl"
    proc = _run("-m", "medtune.cli", "translate", str(qa_jsonl), "--to", "es", "--out", str(out), "--model", str(tiny_llama),
                "--kind", "llm", "--max-new-tokens", "4", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == report["records"] == len(DISEASES) * len(QTYPES)  # flagged ones are kept and counted, not dropped
    assert all(r["machine_translated"] and r["language"] == "es" and r["translated_from"] == "en" for r in rows)
    assert sorted(r["id"] for r in rows) == sorted(f"{d}-{q}" for d in DISEASES for q in QTYPES)
