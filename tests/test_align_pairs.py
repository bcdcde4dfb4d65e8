"""Preference pairs: the builders on hand-made records, degenerate pairs refused and counted, pair files, `medtune pairs`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import qa_rows
from medtune.align import make_pairs
from medtune.align.pairs import Pair, build_pairs, corrupted_pairs, same_focus_pairs, sampled_pairs, truncate
from medtune.data import DataError, load_source
from medtune.recipe import PairsConfig, RecipeError, SourceConfig, recipe_from_dict
from medtune.records import QARecord

ROOT = Path(__file__).resolve().parents[1]

G1 = QARecord("What causes gout?", "Uric acid crystals.", id="g1", focus="gout")
G2 = QARecord("How is gout treated?", "With colchicine.", id="g2", focus="Gout")  # same focus, other case
G3 = QARecord("What is gout?", "uric  acid crystals.", id="g3", focus="gout")  # G1's answer, spaced and lower-cased
FLU = QARecord("Is flu viral?", "Yes, influenza viruses cause it.", id="f1", focus="flu")
BARE = QARecord("Is rest good?", "Often.", id="b1")


def rejected(pairs: list[Pair]) -> dict[str, str]:
    return {p.record.id: p.record.rejected for p in pairs}


def test_same_focus_takes_another_answer_about_the_same_focus():
    pairs, skipped = same_focus_pairs([G1, G2, G3, FLU, BARE], seed=0)
    got = rejected(pairs)
    # G1 and G3 share an answer, so each has G2 as its only partner; G2 may get either of theirs.
    assert got["g1"] == got["g3"] == "With colchicine."
    assert got["g2"] in {G1.answer, G3.answer}
    assert {p.strategy for p in pairs} == {"same_focus"}
    assert all(p.record.answer == r.answer for p, r in zip(pairs, [G1, G2, G3]))  # chosen = the reference
    assert skipped == {"no same-focus partner": 1, "no focus": 1}


def test_builders_are_deterministic_and_seeded():
    records = [QARecord(**{k: r[k] for k in ("id", "question", "answer", "focus")}) for r in qa_rows()]
    cfg = PairsConfig()
    assert build_pairs(records, cfg) == build_pairs(records, cfg)
    other = build_pairs(records, cfg.model_copy(update={"seed": 1}))
    assert rejected(build_pairs(records, cfg)[0]) != rejected(other[0])


def test_wrong_entity_swaps_the_focus_for_another_of_the_same_language():
    gout = QARecord("What is gout?", "Gout is arthritis; gouty joints swell. Treat gout early.", id="g", focus="gout")
    flu = QARecord("What is flu?", "An infection.", id="f", focus="flu")
    gota = QARecord("¿Qué es la gota?", "La gota es artritis.", id="es", focus="gota", language="es")
    pairs, skipped = corrupted_pairs([gout, flu, gota], corruptions=["wrong_entity"])
    # Whole words only ("gouty" stays), capitalised where the focus was; never the Spanish focus.
    assert rejected(pairs) == {"g": "Flu is arthritis; gouty joints swell. Treat flu early."}
    assert pairs[0].strategy == "corrupted:wrong_entity"
    assert skipped == {"wrong_entity: focus not in answer": 1, "wrong_entity: no other focus": 1}


def test_truncate_keeps_the_first_sentences_or_words():
    assert truncate("One. Two! Three? Four.", 0.5) == ("One. Two!", "")
    assert truncate("One. Two. Three.", 0.5) == ("One.", "")
    assert truncate("pain fever and a rash", 0.4) == ("pain fever", "")
    assert truncate("Yes.", 0.5) == (None, "single word")


def test_corruptions_are_tried_in_order():
    one_word = QARecord("Is it bad?", "No.", id="w")
    pairs, skipped = corrupted_pairs([G1, FLU, BARE, one_word], corruptions=["wrong_entity", "truncate"], keep_fraction=0.5)
    by_id = {p.record.id: p for p in pairs}
    # G1's answer does not name gout and FLU's does not name flu: both fall back to truncation.
    assert (by_id["g1"].record.rejected, by_id["g1"].strategy) == ("Uric", "corrupted:truncate")
    assert (by_id["f1"].record.rejected, by_id["f1"].strategy) == ("Yes, influenza", "corrupted:truncate")
    assert "b1" not in by_id and "w" not in by_id
    assert skipped == {"wrong_entity: no focus; truncate: single word": 2}


def test_sampled_uses_the_generations_in_order():
    pairs = sampled_pairs([G1, FLU], lambda questions: [q.upper() for q in questions])
    assert rejected(pairs) == {"g1": "WHAT CAUSES GOUT?", "f1": "IS FLU VIRAL?"}
    assert {p.strategy for p in pairs} == {"sampled"}


def test_degenerate_pairs_are_dropped_and_counted_by_reason():
    generations = {"What causes gout?": "  URIC acid   crystals. ", "Is flu viral?": " \n ", "Is rest good?": "Never."}
    ready = [
        QARecord("Q1", "A good answer.", id="r1", rejected="A bad answer."),
        QARecord("Q2", None, id="r2", rejected="Anything."),
        QARecord("Q3", "Same.", id="r3", rejected="same."),
        QARecord("Q4", "Fine.", id="r4", rejected=""),
    ]
    unanswered = QARecord("Q5", None, id="u")
    cfg = PairsConfig(rejected=["sampled"])
    pairs, report = build_pairs([G1, FLU, BARE, *ready, unanswered], cfg, lambda qs: [generations[q] for q in qs])
    assert rejected(pairs) == {"r1": "A bad answer.", "b1": "Never."}
    assert report.to_dict() == {
        "records": 8,
        "pairs": 2,
        "by_strategy": {"file": 1, "sampled": 1},
        "not_applicable": {},
        "degenerate": {"blank_chosen": 2, "blank_rejected": 2, "identical": 2},
    }


def test_sampled_needs_a_generator():
    with pytest.raises(ValueError, match="sampled strategy needs"):
        build_pairs([G1], PairsConfig(rejected=["sampled"]))


def test_pairs_config_refuses_unknown_and_repeated_strategies(recipe_dict):
    recipe_dict["align"] = {"pairs": {"rejected": ["same_focus", "blank"]}}
    with pytest.raises(RecipeError, match=r"align\.pairs\.rejected\.1: Input should be 'sampled', 'same_focus' or 'corrupted'"):
        recipe_from_dict(recipe_dict)
    recipe_dict["align"] = {"pairs": {"rejected": ["corrupted", "corrupted"]}}
    with pytest.raises(RecipeError, match="each entry once"):
        recipe_from_dict(recipe_dict)


# -- pair files ---------------------------------------------------------------------------------

def _load(path: Path, **cfg) -> tuple[list[QARecord], dict]:
    records, report = load_source(SourceConfig(loader="pairs", path=str(path), **cfg))
    return records, report.to_dict()


def _messages(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def test_pair_files_standard_and_conversational(tmp_path):
    lines = [
        {"prompt": "What causes gout?", "chosen": "Uric acid.", "rejected": "Cold.", "focus": "gout"},
        {"chosen": _messages(("system", "Be brief."), ("user", "Is flu viral?"), ("assistant", "Yes.")),
         "rejected": _messages(("system", "Be brief."), ("user", "Is flu viral?"), ("assistant", "No."))},
        {"prompt": _messages(("user", "Is rest good?")), "chosen": _messages(("assistant", "Often.")),
         "rejected": _messages(("assistant", " "))},
        {"id": "x", "prompt": "Blank chosen?", "chosen": "", "rejected": "Something."},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + "\n")
    records, report = _load(path)
    assert records == [
        QARecord("What causes gout?", "Uric acid.", id="prefs:1", source="prefs", focus="gout", rejected="Cold."),
        QARecord("Is flu viral?", "Yes.", id="prefs:2", source="prefs", rejected="No."),
        QARecord("Is rest good?", "Often.", id="prefs:3", source="prefs", rejected=""),  # blank: kept for counting
        QARecord("Blank chosen?", None, id="x", source="prefs", rejected="Something."),
    ]
    assert (report["rows_seen"], report["records"], report["empty_answers"]) == (4, 4, 1)
    pairs, built = build_pairs(records, PairsConfig())
    assert [p.record.id for p in pairs] == ["prefs:1", "prefs:2"]
    assert built.degenerate == {"blank_rejected": 1, "blank_chosen": 1}


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "Q", "chosen": "A"', "line 2: malformed JSON"),
        ('["Q", "A", "B"]', "line 2: expected an object, got a JSON list"),
        ('{"prompt": "Q", "chosen": [{"role": "assistant", "content": "A"}], "rejected": "B"}',
         "line 2, column 'rejected': expected a list of {role, content} messages"),
        ('{"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "more?"}, '
         '{"role": "assistant", "content": "B"}], "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, '
         '{"role": "user", "content": "more?"}, {"role": "assistant", "content": "C"}]}',
         "line 2, column 'prompt': the prompt must be one user turn"),
        ('{"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "A"}, '
         '{"role": "user", "content": "ok"}], "rejected": [{"role": "assistant", "content": "B"}]}',
         "line 2, column 'chosen': expected one assistant turn after the prompt"),
        ('{"prompt": "", "chosen": "A", "rejected": "B"}', "line 2, column 'prompt': empty question"),
    ],
)
def test_bad_pair_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "Fine?", "chosen": "Yes.", "rejected": "No."}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=re.escape(f"bad.jsonl, {message}")):
        _load(path)
    records, report = _load(path, on_bad_row="skip")
    assert len(records) == 1 and [s["row"] for s in report["skipped"]] == [2]


def test_pair_file_needs_rejected_and_jsonl(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "chosen": "A"}) + "\n")
    with pytest.raises(DataError, match=r"column 'rejected' \(for record field 'rejected'\) not found"):
        _load(path)
    (tmp_path / "p.json").write_text("[]")
    with pytest.raises(DataError, match="reads one .jsonl file"):
        _load(tmp_path / "p.json")


def test_align_recipe_with_pair_files_must_not_dedup(recipe_dict, tmp_path):
    recipe_dict["data"]["sources"] = [{"loader": "pairs", "path": str(tmp_path / "p.jsonl")}]
    recipe_dict["model"] = {"name_or_path": recipe_dict["model"], "kind": "causal"}
    recipe_dict["align"] = {}
    with pytest.raises(RecipeError, match="set data.dedup: false"):
        recipe_from_dict(recipe_dict)
    recipe_dict["data"]["dedup"] = False
    recipe_dict["train"]["packing"] = True
    with pytest.raises(RecipeError, match="set train.packing: false"):
        recipe_from_dict(recipe_dict)
    recipe_dict["train"]["packing"] = False
    recipe_dict["align"] = {"loss_type": "exo_pair"}
    with pytest.raises(RecipeError, match="exo_pair needs label_smoothing > 0"):
        recipe_from_dict(recipe_dict)
    recipe_dict["align"] = {"loss_type": "exo_pair", "label_smoothing": 1e-3, "beta": 0.2}
    assert recipe_from_dict(recipe_dict).align.beta == 0.2


# -- medtune pairs ------------------------------------------------------------------------------

def test_make_pairs_writes_pairs_the_pairs_loader_reads_back(qa_jsonl, tmp_path):
    out = tmp_path / "pairs.jsonl"
    report = make_pairs(qa_jsonl, out, strategies=["same_focus", "corrupted"], seed=3)
    n = len(qa_rows())
    assert report["pairs"] == 2 * n
    assert report["splits"]["all"]["by_strategy"] == {"same_focus": n, "corrupted:wrong_entity": n}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"id", "prompt", "chosen", "rejected", "strategy", "focus"} <= set(rows[0])
    records, _ = load_source(SourceConfig(loader="pairs", path=str(out)))
    assert [(r.question, r.answer, r.rejected, r.focus) for r in records] == [
        (row["prompt"], row["chosen"], row["rejected"], row["focus"]) for row in rows
    ]
    assert not list(tmp_path.glob(".pairs.jsonl.*"))  # written atomically: no temporary file left


def test_make_pairs_sampled_needs_a_recipe(qa_jsonl, tmp_path):
    with pytest.raises(RecipeError, match="give a recipe, not a data file"):
        make_pairs(qa_jsonl, tmp_path / "p.jsonl", strategies=["sampled"])


def test_cli_pairs_from_a_recipe(causal_recipe_dict, tmp_path):
    causal_recipe_dict["align"] = {"pairs": {"rejected": ["corrupted"], "corruptions": ["truncate"], "keep_fraction": 0.25}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(causal_recipe_dict))  # JSON is YAML
    proc = subprocess.run([sys.executable, "-m", "medtune.cli", "pairs", str(recipe), "--out", str(tmp_path / "p.jsonl"),
                           "--set", "data.split.test=0.0"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["pairs"] == len(qa_rows()) and set(report["splits"]) == {"train", "validation", "test"}
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["id"] == "asthma-symptoms")
    assert first["rejected"] == "The symptoms" and first["strategy"] == "corrupted:truncate"
    assert {r["split"] for r in rows} == {"train", "validation"}


def test_make_pairs_samples_from_the_recipes_model_reproducibly(causal_recipe_dict, tmp_path):
    causal_recipe_dict["align"] = {"pairs": {"rejected": ["sampled"], "seed": 7, "generation": {"max_new_tokens": 6}}}
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(causal_recipe_dict))
    first = make_pairs(recipe, tmp_path / "a.jsonl")
    second = make_pairs(recipe, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()  # seeded sampling
    assert first["splits"] == second["splits"]
    for split in first["splits"].values():  # every record gives a sampled pair or a counted degenerate one
        assert split["by_strategy"].get("sampled", 0) + sum(split["degenerate"].values()) == split["records"]
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rows and all(r["strategy"] == "sampled" and r["rejected"].strip() for r in rows)
