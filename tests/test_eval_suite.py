"""`medtune eval` end to end on a tiny model and HEAD-QA-format files, and `medtune compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medtune.cli import main
from medtune.eval.suite import evaluate
from medtune.eval.suite_report import compare

QUESTIONS = [
    ("What causes gout ?", ["Uric acid crystals", "A virus", "Cold weather", "Too much sleep"], 1),
    ("How to treat asthma ?", ["Inhalers", "Surgery", "Antibiotics", "Nothing"], 1),
    ("What are the symptoms of measles ?", ["Fever and rash", "Hair loss", "Tooth pain", "Itchy ears"], 1),
    ("What is anemia ?", ["Few red blood cells", "A bone disease", "A skin rash", "High blood sugar"], 1),
    ("Who gets lupus ?", ["Mostly women", "Only children", "Only men", "Nobody"], 1),
    ("What causes rickets ?", ["Lack of vitamin D", "Too much sun", "A bacterium", "Stress"], 1),
]


def headqa_file(path: Path, language: str, exams: dict[str, list[int]], image_qid: int | None = None) -> Path:
    """A HEAD-QA JSON file (the original layout) whose exams hold the given question numbers."""
    data = {"version": "1.0", "language": language, "exams": {}}
    for name, qids in exams.items():
        items = []
        for qid in qids:
            text, options, ra = QUESTIONS[qid % len(QUESTIONS)]
            items.append({"qid": qid, "qtext": text, "ra": ra, "image": "img.png" if qid == image_qid else "",
                          "answers": [{"aid": i + 1, "atext": o} for i, o in enumerate(options)]})
        data["exams"][name] = {"name": name, "category": name.split("_")[1], "year": "2016", "data": items}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    headqa_file(root / "head_qa" / "en" / "test_HEAD_EN.json", "EN", {"cuaderno_medicine_1": [0, 1, 2, 3], "cuaderno_nursing_1": [4, 5, 6]}, image_qid=6)
    headqa_file(root / "head_qa" / "en" / "dev_HEAD_EN.json", "EN", {"cuaderno_biology_1": [10, 11, 12]})
    return root


def option_logliks(model, tokenizer, context: str, options: list[str]) -> list[float]:
    """Each option's summed log-probability after `context`, one plain forward pass per option (no shared cache,
    no batching): the option's tokens are those tokenize(context + " " + option) adds to tokenize(context)."""
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    out = []
    for option in options:
        ids = tokenizer(f"{context} {option}", add_special_tokens=False).input_ids
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        out.append(sum(logprobs[t - 1, ids[t]].item() for t in range(len(ctx), len(ids))))
    return out


def test_eval_writes_report_items_and_charts(tiny_llama, data_dir, tmp_path):
    out = evaluate(tiny_llama, "headqa_en", data_dir=data_dir, out_dir=tmp_path / "ev", num_fewshot=1)
    report = json.loads((out / "report.json").read_text())
    task = report["tasks"]["headqa_en"]
    m = task["metrics"]
    assert m["n"] == 6 and task["skipped"] == {"needs an image": 1}
    assert set(m["by_category"]) == {"medicine", "nursing"}
    rows = [json.loads(line) for line in (out / "items" / "headqa_en.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"cuaderno_medicine_1:{i}" for i in range(4)] + [f"cuaderno_nursing_1:{i}" for i in (4, 5)]

    # Every item scored again by hand: the one worked example (the same for all: no dev question shares their
    # categories), the question, then each option as a continuation.
    prompt = task["example_prompt"]
    shot = prompt[: prompt.rindex("Question: ")]
    assert shot in {f"Question: {q}\nAnswer: {o[a - 1]}\n\n" for q, o, a in (QUESTIONS[i % 6] for i in (10, 11, 12))}
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    right = right_norm = 0
    for row in rows:
        question, options, answer = QUESTIONS[int(row["id"].split(":")[1])]
        loglik = option_logliks(model, tokenizer, f"{shot}Question: {question}\nAnswer:", options)
        assert row["loglik"] == pytest.approx(loglik, abs=1e-3)
        best = max(range(4), key=lambda i: loglik[i])  # the prediction is the arg-max option ...
        best_norm = max(range(4), key=lambda i: loglik[i] / len(options[i]))  # ... per character for accuracy_norm
        assert (row["gold"], row["pred"], row["pred_norm"]) == ("ABCD"[answer - 1], "ABCD"[best], "ABCD"[best_norm])
        right, right_norm = right + (best == answer - 1), right_norm + (best_norm == answer - 1)
    assert m["accuracy"]["value"] == pytest.approx(right / 6) and m["accuracy_norm"]["value"] == pytest.approx(right_norm / 6)
    medicine = sum(r["pred"] == "A" for r in rows[:4])
    assert m["by_category"]["medicine"]["accuracy"]["value"] == pytest.approx(medicine / 4)
    assert m["accuracy"]["ci95"][0] <= m["accuracy"]["value"] <= m["accuracy"]["ci95"][1]
    assert task["example_prompt"].startswith("Question: ") and task["example_prompt"].count("Question: ") == 2  # one shot + the item
    assert (report["settings"]["device"], report["settings"]["dtype"]) == ("cpu", "float32")  # no GPU here: fp32 on the CPU
    md = (out / "report.md").read_text()
    assert "| headqa_en | 6 |" in md and "![accuracy per task](accuracy.png)" in md and "Scored on cpu in float32." in md
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "headqa_en.png").is_file()


def test_compare_pairs_items_and_flags_significance(tiny_llama, data_dir, tmp_path):
    a = evaluate(tiny_llama, "headqa_en", data_dir=data_dir, out_dir=tmp_path / "a")
    b = evaluate(tiny_llama, "headqa_en", data_dir=data_dir, out_dir=tmp_path / "b")
    same = {r["metric"]: r for r in compare(a, b)}
    assert same["accuracy"]["delta"] == 0 and same["accuracy"]["significant"] is False
    assert same["accuracy"]["test"] == "paired bootstrap, 6 items"
    # A wrong on every item, B right on every item: a difference no resample can erase.
    for run, right in ((a, False), (b, True)):
        items = run / "items" / "headqa_en.jsonl"
        rows = [json.loads(line) for line in items.read_text().splitlines()]
        # as `medtune eval` writes them (ensure_ascii=False), with text holding U+2028, which splitlines() would cut
        items.write_text("".join(json.dumps(r | {"pred": r["gold"] if right else "Z", "note": "a\u2028b"}, ensure_ascii=False) + "\n"
                                 for r in rows), encoding="utf-8")
        report = json.loads((run / "report.json").read_text())
        report["tasks"]["headqa_en"]["metrics"]["accuracy"]["value"] = float(right)
        (run / "report.json").write_text(json.dumps(report))
    changed = {r["metric"]: r for r in compare(a, b)}["accuracy"]
    assert changed["delta"] == 1.0 and changed["ci95"] == [1.0, 1.0] and changed["significant"] is True


def test_eval_cli_errors_name_the_problem(tiny_llama, data_dir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tiny_llama), "--tasks", "headqa_xx"])
    assert exc.value.code == 2 and "unknown task 'headqa_xx'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_llama), "--tasks", "medqa", "--data-dir", str(data_dir)])
    assert "medqa_usmle does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_llama), "--tasks", "exam_pt"])
    assert "exam_pt=PATH" in capsys.readouterr().err


def test_generation_task_on_a_medtext_file(tiny_llama, tmp_path):
    import csv

    path = tmp_path / "medtext.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Prompt", "Completion"])
        for i in range(60):
            w.writerow([f"A {20 + i}-year-old has gout in the knee {i} . What next ?", f"Treatment of gout includes rest and medicines {i} ."])
    out = evaluate(tiny_llama, [f"medtext={path}"], out_dir=tmp_path / "ev", limit=2)
    task = json.loads((out / "report.json").read_text())["tasks"]["medtext"]
    assert task["kind"] == "generation" and task["n"] == 2
    assert set(task["metrics"]) >= {"rouge1", "rougeL", "bleu", "chrf", "perplexity"}
    assert 1 < task["metrics"]["perplexity"] < 2 * 300  # a random model over a 300-token vocabulary
    assert task["perplexity_tokens"] > 2 * 10  # two answers of 10+ tokens each, plus end of turn
    rows = [json.loads(line) for line in (out / "items" / "medtext.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["reference"].startswith("Treatment of gout") for r in rows)
    assert "| medtext | 2 |" in (out / "report.md").read_text()
