"""Benchmark tasks' data (`medtune eval --tasks`): bad items are skipped and counted, never fatal,
and each task says which files it read and which split their names say they hold."""

import csv
import json
from pathlib import Path

import pytest

from medtune.eval.suite import run_choice_task
from medtune.eval.tasks import get_task, split_of, task_path

FIXTURES = Path(__file__).parent / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def casimedicos_row(correct: str) -> dict:
    return {"type": "CARDIOLOGY", "full_question": "Varón de 67 años con dolor torácico... ¿Cuál es el tratamiento?",
            "question": "¿Cuál es el tratamiento?", "options": {"1": "a", "2": "b", "3": "c", "4": "d", "5": "nan"},
            "correct_option": correct, "explanation": "..."}


@pytest.mark.parametrize(
    ("name", "split"),
    [("test_HEAD_EN.json", "test"), ("dev.jsonl", "dev"), ("train-00000-of-00001.parquet", "train"),
     ("validation.parquet", "validation"), ("test", "test"), ("teste_progresso.csv", None), ("ori_pqal.json", None)],
)
def test_split_of(name: str, split: str | None) -> None:
    assert split_of(Path("data") / name) == split


def test_casimedicos_pointed_at_a_test_file_says_test_and_skips_bad_items(tmp_path: Path) -> None:
    path = tmp_path / "casimedicos" / "es" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in [casimedicos_row("2"), casimedicos_row("5"),
                                                          casimedicos_row("1")]) + '{"type": "broken\n')
    task = get_task("casimedicos_es")
    data = task.load(task_path(task, None, str(path)))
    assert [r.id for r in data.items] == ["test:1", "test:3"] and data.fewshot == data.items
    assert [(s["row"], s["reason"].split(":")[0]) for s in data.skipped] == [
        (2, "correct_option '5' is not one of the options ['1', '2', '3', '4']"), (4, "malformed JSON")]
    assert data.note.startswith(f"items from {path} (test split); few-shot examples from the same file")
    assert "dev split" not in task.about and "dev split" not in data.note
    assert data.files == {"items": str(path), "fewshot": str(path)}


def test_exam_pt_task_on_a_release() -> None:
    path = FIXTURES / "exam_pt" / "teste_progresso.csv"
    task = get_task("exam_pt")
    data = task.load(task_path(task, None, str(path)))
    assert len(data.items) == 25 and len(data.skipped) == 9
    assert data.note.startswith(f"items from {path} (split not named in the file name)")


def test_default_layout_reports_both_files() -> None:
    root = SHARED_DATA / "casimedicos" / "en"
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    task = get_task("casimedicos_en")
    data = task.load(task_path(task, SHARED_DATA, None))
    assert (len(data.items), len(data.fewshot), data.skipped, data.fewshot_skipped) == (55, 381, [], [])
    assert data.note == f"items from {root / 'dev.jsonl'} (dev split); few-shot examples from {root / 'train.jsonl'} (train split)"


class _UniformScorer:
    """Stands in for a model: every option equally likely, so the first is always picked."""

    def score(self, requests, desc=""):
        return [[0.0] * len(r.options) for r in requests]


def test_choice_result_reports_files_and_skips() -> None:
    path = FIXTURES / "exam_pt" / "teste_progresso.csv"
    task = get_task("exam_pt")
    result, rows = run_choice_task(task, task.load(path), _UniformScorer())
    assert result["metrics"]["n"] == 25 and len(rows) == 25
    assert result["files"] == {"items": str(path), "fewshot": str(path)}
    assert sum(result["skipped"].values()) == 9 and result["skipped"]["repeated header row"] == 1
    assert result["fewshot_skipped"] == {}
    # Always option A: right exactly where the answer is A (lines 6, 12, 13, 26 and 30: 5 of 25).
    assert result["metrics"]["accuracy"]["value"] == pytest.approx(5 / 25)


def test_generation_task_skips_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "medtext.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Prompt", "Completion"])
        w.writerows([f"A {20 + i}-year-old has gout in the knee {i}. What next?", f"Rest and medicines {i}."] for i in range(60))
        w.writerow(["", "An answer without its question."])
        w.writerow(["Three", "fields", "here"])
    data = get_task("medtext").load(path)
    assert [(s["row"], s["reason"]) for s in data.skipped] == [
        (62, "empty question"), (63, "row does not have the header's 2 fields")]
    assert data.items and data.files == {"items": str(path)}
