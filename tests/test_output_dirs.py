"""Output folders: medtune replaces what it wrote there before, never what someone else put there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medtune.io import OutputInUse, replace_dir_atomic

ROOT = Path(__file__).resolve().parents[1]


def _write(text: str):
    return lambda staging: (staging / "marker.json").write_text(text)


def test_a_folder_medtune_did_not_write_is_refused_unless_forced(tmp_path):
    theirs = tmp_path / "out"
    theirs.mkdir()
    (theirs / "thesis.docx").write_text("months of work")
    with pytest.raises(OutputInUse, match="out: already holds files that medtune did not write there .no marker.json.*--force"):
        replace_dir_atomic(theirs, _write("new"), marker="marker.json")
    assert (theirs / "thesis.docx").read_text() == "months of work" and not (theirs / "marker.json").exists()
    replace_dir_atomic(theirs, _write("new"), marker="marker.json", force=True)
    assert [p.name for p in theirs.iterdir()] == ["marker.json"]


def test_its_own_output_an_empty_folder_or_nothing_is_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    replace_dir_atomic(tmp_path / "ours", _write("old"), marker="marker.json")
    replace_dir_atomic(tmp_path / "ours", _write("new"), marker="marker.json")  # medtune's own: replaced
    replace_dir_atomic(tmp_path / "empty", _write("new"), marker="marker.json")
    replace_dir_atomic(tmp_path / "absent", _write("new"), marker="marker.json")
    assert {p.name: (p / "marker.json").read_text() for p in tmp_path.iterdir()} == {"ours": "new", "empty": "new", "absent": "new"}
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OutputInUse):
        replace_dir_atomic(tmp_path / "a-file", _write("new"), marker="marker.json")


def test_index_build_cli_refuses_a_foreign_folder_before_embedding(tmp_path):
    passages = tmp_path / "p.jsonl"
    passages.write_text("".join(json.dumps({"id": f"p{i}", "text": f"Gout is arthritis number {i}."}) + "\n" for i in range(3)))
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cmd = [sys.executable, "-m", "medtune.cli", "-q", "index", "build", str(passages), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "already holds files that medtune did not write there (no manifest.json)" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    proc = subprocess.run(cmd + ["--force"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file() and not (out / "notes.txt").exists()
    assert subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300).returncode == 0  # its own index: rebuilt
