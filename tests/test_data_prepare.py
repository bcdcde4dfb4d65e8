"""prepare_data: sources -> dedup -> grouped split -> weighted mix -> caps, with its report."""

import json
from pathlib import Path

import pytest

from medtune.data import prepare_data
from medtune.recipe import DataConfig
from medtune.records import QA_COLUMNS


def write_jsonl(path: Path, prefix: str, n_focus: int, per_focus: int) -> str:
    rows = [
        {"q": f"{prefix} question {i} on {f}?", "a": f"{prefix} answer {i}.", "topic": f"{prefix} topic {f}"}
        for f in range(n_focus)
        for i in range(per_focus)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def source(path: str, **kw) -> dict:
    return {"loader": "jsonl", "path": path, "fields": {"question": "q", "answer": "a", "focus": "topic"}, **kw}


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[str, str]:
    return write_jsonl(tmp_path / "big.jsonl", "big", 100, 3), write_jsonl(tmp_path / "small.jsonl", "small", 50, 3)


def test_splits_report_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "qa.csv"
    path.write_text(
        "question,answer,focus\n"
        + "".join(f"Q{i}?,A{i}.,F{i % 20}\n" for i in range(100))
        + "Q0?,A0.,F0\nq0 ?,,F0\nUnanswered?,,F1\n"  # one duplicate, two empty answers
    )
    data = prepare_data(DataConfig.model_validate({"sources": [{"loader": "csv", "path": str(path)}]}))
    assert set(data.splits) == {"train", "validation", "test"}
    assert all(tuple(ds.column_names) == QA_COLUMNS for ds in data.splits.values())
    assert sum(len(ds) for ds in data.splits.values()) == 100
    assert all(a for ds in data.splits.values() for a in ds["answer"])
    r = data.report
    assert r["sources"]["qa.csv"]["records"] == 103 and r["sources"]["qa.csv"]["empty_answers"] == 2
    assert (r["duplicates_removed"], r["unanswered_excluded"], r["focus_overlap"]) == (1, 2, 0)
    assert r["sizes"] == r["split"]["sizes"] and sum(r["sizes"].values()) == 100
    assert r["mix"]["strategy"] == "concatenate" and r["mix"]["train"] == {"qa.csv": r["sizes"]["train"]}
    json.dumps(r)  # serializable for run reports
    focus = {name: set(ds["focus"]) for name, ds in data.splits.items()}
    assert not (focus["train"] & focus["test"]) and not (focus["train"] & focus["validation"])


def test_same_seed_same_splits(two_sources: tuple[str, str]) -> None:
    cfg = {"sources": [source(p) for p in two_sources], "split": {"seed": 3}}
    a, b = prepare_data(DataConfig.model_validate(cfg)), prepare_data(DataConfig.model_validate(cfg))
    assert all(a.splits[k]["id"] == b.splits[k]["id"] for k in a.splits)
    c = prepare_data(DataConfig.model_validate(cfg | {"split": {"seed": 4}}))
    assert set(a.splits["test"]["id"]) != set(c.splits["test"]["id"])


def test_caps_after_split(two_sources: tuple[str, str]) -> None:
    cfg = {"sources": [source(two_sources[0])], "max_examples": 50, "max_eval_examples": 5}
    data = prepare_data(DataConfig.model_validate(cfg))
    assert data.report["sizes"] == {"train": 50, "validation": 5, "test": 5}
    sizes = data.report["split"]["sizes"]
    assert data.report["capped"] == {
        "train": sizes["train"] - 50,
        "validation": sizes["validation"] - 5,
        "test": sizes["test"] - 5,
    }


def test_weighted_sources_are_interleaved_by_probability(two_sources: tuple[str, str]) -> None:
    big, small = two_sources
    cfg = {"sources": [source(big, weight=3), source(small, weight=1)]}
    data = prepare_data(DataConfig.model_validate(cfg))
    mix = data.report["mix"]
    assert mix["strategy"] == "interleave" and mix["weights"] == {"big.jsonl": 3, "small.jsonl": 1}
    share = mix["train"]["big.jsonl"] / sum(mix["train"].values())
    assert 0.68 < share < 0.82  # 3:1 realized roughly
    assert sum(mix["train"].values()) == len(data.splits["train"])
    assert mix["unused"] == data.report["split"]["sizes"]["train"] - len(data.splits["train"]) > 0
    # Validation and test keep every source whole.
    assert {i.split(":")[0] for i in data.splits["test"]["id"]} == {"big", "small"}


def test_equal_weights_concatenate_everything(two_sources: tuple[str, str]) -> None:
    cfg = {"sources": [source(p, weight=2) for p in two_sources]}
    data = prepare_data(DataConfig.model_validate(cfg))
    assert data.report["mix"]["strategy"] == "concatenate" and data.report["mix"]["unused"] == 0
    assert sum(data.report["mix"]["train"].values()) == data.report["split"]["sizes"]["train"]


def test_repeated_source_names_are_numbered(two_sources: tuple[str, str]) -> None:
    cfg = {"sources": [source(two_sources[0]), source(two_sources[0])], "split": {"validation": 0, "test": 0.1}}
    data = prepare_data(DataConfig.model_validate(cfg))
    assert list(data.report["sources"]) == ["big.jsonl#1", "big.jsonl#2"]
    assert data.report["duplicates_removed"] == 300  # the second copy, across sources
    assert len(data.splits["validation"]) == 0 and tuple(data.splits["validation"].column_names) == QA_COLUMNS


def test_sources_without_any_answer_are_a_clear_error(tmp_path):
    from medtune.data import DataError, prepare_data
    from medtune.recipe import DataConfig

    path = tmp_path / "unanswered.jsonl"
    path.write_text('{"question": "What is gout?", "answer": ""}\n')
    with pytest.raises(DataError, match="no answered records to train or evaluate on"):
        prepare_data(DataConfig(sources=[{"loader": "jsonl", "path": str(path)}]))
