"""HEAD-QA parity with lm-evaluation-harness: the same model scored by lm-eval's own `headqa_en` /
`headqa_es` tasks and by medtune, on the same items.

lm-eval's tasks read the hub dataset EleutherAI/headqa; here, with no hub, they read the original
HEAD-QA files (`head_qa/{es,en}/test_HEAD*.json` under the data directory) instead. Only the data
source changes: prompt, choices, target and metrics stay those of lm-eval's installed task config,
which we override as a group member (lm-eval merges the overrides into the registered task).
Items with an image are skipped, as medtune skips them (lm-eval's official task keeps them: its
questions are scored from the text alone); `--keep-images` scores lm-eval's full item set.

    HF_HUB_OFFLINE=1 python benchmarks/lmeval_parity.py [--model DIR] [--languages es,en] [--limit 50] [--data-dir DIR]

Prints a table on stderr and the numbers as JSON on stdout. Needs `pip install lm-eval`.
"""

from __future__ import annotations

import os

# Before lm_eval / transformers / datasets are imported: everything comes from local files.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    return Path(os.environ.get("MEDTUNE_DATA_DIR") or REPO.parent / "shared" / "data")


def headqa_rows(data_dir: str | Path, language: str, keep_images: bool = False) -> list[dict]:
    """The test split in the row schema of EleutherAI/headqa (what lm-eval's templates read).
    Exams and questions keep file order, as the hub dataset does, so `limit` takes the same items."""
    folder = Path(data_dir) / "head_qa" / language
    files = sorted(folder.glob("test_HEAD*.json"))  # test_HEAD.json (es), test_HEAD_EN.json (en)
    if not files:
        raise FileNotFoundError(f"no test_HEAD*.json in {folder}")
    exams = json.loads(files[0].read_text(encoding="utf-8"))["exams"]
    rows = []
    for exam in exams.values():
        for q in exam["data"]:
            if q["image"] and not keep_images:
                continue
            rows.append({
                "name": exam["name"], "year": exam["year"], "category": exam["category"],
                "qid": int(q["qid"]), "qtext": q["qtext"].strip(),
                "ra": int(q["ra"]),  # the template's target is `ra - 1`: needs an int (the file has a string)
                "image": q["image"] or None,
                "answers": [{"aid": int(a["aid"]), "atext": a["atext"].strip()} for a in q["answers"]],
            })
    return rows


def lmeval_headqa(model_dir: str | Path, language: str, data_dir: str | Path | None = None,
                  limit: int | None = None, keep_images: bool = False, batch_size: int = 16) -> dict:
    """lm-eval's zero-shot `headqa_{language}` on the local files: acc and acc_norm with stderr."""
    import datasets
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    rows = headqa_rows(data_dir or default_data_dir(), language, keep_images)
    task = f"headqa_{language}"
    override = {
        "task": task,
        # lm-eval calls custom_dataset(**metadata, **dataset_kwargs) instead of load_dataset(hub id)
        "custom_dataset": lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}),
        "dataset_kwargs": None,
        "training_split": None,  # zero-shot: only the test split exists here
        "validation_split": None,
        "num_fewshot": 0,
    }
    tasks = TaskManager().load([{"group": f"medtune_{task}", "task": [override]}])
    model = HFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=batch_size)
    start = time.perf_counter()
    # evaluate() rather than simple_evaluate(): the latter also shells out to `git describe` and
    # torch's collect_env for its run metadata, which we do not need.
    # stderr of a mean is closed-form (sample std / sqrt(n)); bootstrap_iters only has to be > 0 for it
    out = evaluator.evaluate(model, tasks, limit=limit, log_samples=False)
    seconds = time.perf_counter() - start
    res = out["results"][task]
    return {
        "acc": res["acc,none"], "acc_stderr": res["acc_stderr,none"],
        "acc_norm": res["acc_norm,none"], "acc_norm_stderr": res["acc_norm_stderr,none"],
        "items": out["n-samples"][task]["effective"], "seconds": round(seconds, 1),
    }


def medtune_headqa(model_dir: str | Path, language: str, data_dir: str | Path | None = None,
                   limit: int | None = None) -> dict:
    """medtune's own `headqa_{language}` on the same items, zero-shot, with lm-eval's English prompt words."""
    import math

    from medtune.eval.loglik import OptionScorer
    from medtune.eval.suite import run_choice_task
    from medtune.eval.tasks import get_task, task_path
    from medtune.predict import Predictor

    task = get_task(f"headqa_{language}")
    data = task.load(task_path(task, data_dir or default_data_dir(), None))
    predictor = Predictor.from_pretrained(model_dir)
    start = time.perf_counter()
    result, _ = run_choice_task(task, data, OptionScorer(predictor.model, predictor.tokenizer), limit=limit, prompt_language="en")
    seconds = time.perf_counter() - start
    m = result["metrics"]

    def stderr(p: float) -> float:  # lm-eval's: sample standard deviation of 0/1 outcomes over sqrt(n)
        return math.sqrt(p * (1 - p) * m["n"] / (m["n"] - 1)) / math.sqrt(m["n"])

    acc, norm = m["accuracy"]["value"], m["accuracy_norm"]["value"]
    return {"acc": acc, "acc_stderr": stderr(acc), "acc_norm": norm, "acc_norm_stderr": stderr(norm),
            "items": m["n"], "seconds": round(seconds, 1)}


def table(results: dict) -> str:
    lines = [f"{'task':<10} {'scorer':<8} {'items':>5} {'acc':>14} {'acc_norm':>14} {'seconds':>8}"]
    for lang, by_scorer in results.items():
        for scorer, r in by_scorer.items():
            acc = f"{100 * r['acc']:.2f}±{100 * r['acc_stderr']:.2f}"
            norm = f"{100 * r['acc_norm']:.2f}±{100 * r['acc_norm_stderr']:.2f}"
            lines.append(f"headqa_{lang:<3} {scorer:<8} {r['items']:>5} {acc:>14} {norm:>14} {r['seconds']:>8}")
        a, b = by_scorer["lm_eval"], by_scorer["medtune"]
        lines.append(f"headqa_{lang:<3} {'diff':<8} {'':>5} {100 * (b['acc'] - a['acc']):>+14.2f} {100 * (b['acc_norm'] - a['acc_norm']):>+14.2f}"
                     f"   (points; target within 0.5)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model directory (default: SmolLM2-135M-Instruct via medtune's offline resolver)")
    p.add_argument("--languages", default="es,en")
    p.add_argument("--limit", type=int, help="first N items per language (quick runs)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="holds head_qa/ (default: $MEDTUNE_DATA_DIR or ../shared/data)")
    p.add_argument("--keep-images", action="store_true", help="also score the items with images (lm-eval's official item set)")
    args = p.parse_args(argv)

    model = args.model
    if model is None:
        from medtune import DEFAULT_MODEL
        from medtune.models import resolve_model
        model = resolve_model(DEFAULT_MODEL).location

    results = {}
    for lang in args.languages.split(","):
        results[lang] = {
            "lm_eval": lmeval_headqa(model, lang, args.data_dir, args.limit, args.keep_images),
            "medtune": medtune_headqa(model, lang, args.data_dir, args.limit),
        }
    print(table(results), file=sys.stderr)
    report = {"model": str(model), "lm_eval_version": version("lm_eval"), "limit": args.limit,
              "images_skipped": not args.keep_images, "results": results}
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
