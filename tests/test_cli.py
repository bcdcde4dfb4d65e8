import json
import subprocess
import sys

from conftest import DISEASES, QTYPES


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
