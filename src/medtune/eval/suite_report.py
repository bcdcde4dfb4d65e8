"""Evaluation reports (report.json, report.md, bar charts with 95% intervals) and `medtune compare`."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medtune.data.tabular import json_lines  # noqa: E402
from medtune.eval.choice_metrics import accuracy_interval  # noqa: E402
from medtune.eval.tasks import TaskError  # noqa: E402
from medtune.io import write_atomic, write_json  # noqa: E402

CHOICE_METRICS = ("accuracy", "accuracy_norm", "macro_f1")


def write_suite_report(out_dir: Path, report: dict) -> None:
    report["plots"] = _plots(out_dir, report["tasks"])
    write_json(out_dir / "report.json", report)
    write_atomic(out_dir / "report.md", render_suite_markdown(report))


def _pct(m: dict) -> str:
    low, high = m["ci95"]
    return f"{100 * m['value']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def render_suite_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Evaluation of `{report['model']}`", "",
             f"{s['num_fewshot']}-shot; values in % with bootstrap 95% intervals." + (f" First {s['limit']} items per task." if s["limit"] else "")
             + (f" Scored on {s['device']} in {s['dtype']}." if "device" in s else ""), ""]
    choice = {n: t for n, t in report["tasks"].items() if t["kind"] == "choice"}
    if choice:
        lines += ["| task | n | accuracy | accuracy (length-normalised) | macro-F1 | skipped |", "|---|---|---|---|---|---|"]
        for name, t in choice.items():
            m = t["metrics"]
            skipped = ", ".join(f"{v} {k}" for k, v in t["skipped"].items()) or "0"
            lines.append(f"| {name} | {m['n']} | " + " | ".join(_pct(m[k]) for k in CHOICE_METRICS) + f" | {skipped} |")
        lines.append("")
    generation = {n: t for n, t in report["tasks"].items() if t["kind"] == "generation"}
    if generation:
        keys = sorted({k for t in generation.values() for k in t["metrics"]})
        lines += ["| task | n | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        lines += [f"| {n} | {t['n']} | " + " | ".join(f"{t['metrics'].get(k, float('nan')):.2f}" for k in keys) + " |" for n, t in generation.items()]
        lines.append("")
    if "accuracy" in report["plots"]:
        lines += [f"![accuracy per task]({report['plots']['accuracy']})", ""]
    for name, t in report["tasks"].items():
        lines += [f"## {name}", "", t["about"], ""]
        if t.get("note"):
            lines += [f"Note: {t['note']}.", ""]
        if t["kind"] == "choice" and "by_category" in t["metrics"]:
            lines += ["| category | n | accuracy |", "|---|---|---|"]
            lines += [f"| {c} | {v['n']} | {_pct(v['accuracy'])} |" for c, v in t["metrics"]["by_category"].items()]
            lines += ["", f"![{name} by category]({report['plots'][name]})", ""]
        if t["kind"] == "choice":
            lines += ["One prompt as scored (the right option appended):", "", "```", t["example_prompt"], "```", ""]
        for sample in t.get("samples", [])[:3]:
            lines += [f"- **Q:** {sample['question']}", f"  - reference: {sample['reference'][:300]}", f"  - model: {sample['prediction'][:300]}"]
    return "\n".join(lines).rstrip() + "\n"


def _bars(path: Path, labels: list[str], values: list[float], cis: list[list[float]], title: str) -> None:
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(labels) + 2), 3.5))
    v = 100 * np.array(values)
    err = np.abs(100 * np.array(cis).T - v)
    ax.bar(labels, v, yerr=err, capsize=4, color="#4c72b0")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plots(out_dir: Path, tasks: dict) -> dict:
    choice = {n: t["metrics"] for n, t in tasks.items() if t["kind"] == "choice"}
    plots = {}
    if choice:
        _bars(out_dir / "accuracy.png", list(choice), [m["accuracy"]["value"] for m in choice.values()],
              [m["accuracy"]["ci95"] for m in choice.values()], "accuracy per task (95% CI)")
        plots["accuracy"] = "accuracy.png"
    for name, m in choice.items():
        if "by_category" in m:
            cats = m["by_category"]
            _bars(out_dir / f"{name}.png", list(cats), [c["accuracy"]["value"] for c in cats.values()],
                  [c["accuracy"]["ci95"] for c in cats.values()], f"{name}: accuracy per category (95% CI)")
            plots[name] = f"{name}.png"
    return plots


# ---- compare ----------------------------------------------------------------------------

def load_suite_report(path: str | Path) -> tuple[dict, Path]:
    path = Path(path)
    file = path if path.is_file() else path / "report.json"
    if not file.is_file():
        raise TaskError(f"{path}: no evaluation report (report.json from `medtune eval`) there")
    report = json.loads(file.read_text())
    if "tasks" not in report:
        raise TaskError(f"{file}: not a `medtune eval` report (no tasks section)")
    return report, file.parent


def _correct(directory: Path, task: str) -> dict[str, bool]:
    file = directory / "items" / f"{task}.jsonl"
    if not file.is_file():
        return {}
    rows = [json.loads(text) for _, text in json_lines(file)]  # written with ensure_ascii=False: U+2028 may be in them
    return {r["id"]: r["pred"] == r["gold"] for r in rows if "gold" in r}


def compare(a: str | Path, b: str | Path) -> list[dict]:
    """Per task and metric: A, B, B - A and whether the difference is beyond chance.

    For accuracy on the same items the interval is a paired bootstrap of the per-item
    difference (significant when it excludes 0); otherwise B is checked against A's interval.
    """
    (ra, da), (rb, db) = load_suite_report(a), load_suite_report(b)
    rows = []
    for task in [t for t in ra["tasks"] if t in rb["tasks"]]:
        ma, mb = ra["tasks"][task]["metrics"], rb["tasks"][task]["metrics"]
        for metric in [k for k in ma if k in mb and k not in ("n", "by_category")]:
            va, vb = _value(ma[metric]), _value(mb[metric])
            row = {"task": task, "metric": metric, "a": va, "b": vb, "delta": vb - va, "significant": None, "test": ""}
            ca, cb = _correct(da, task), _correct(db, task)
            shared = sorted(set(ca) & set(cb))
            if metric == "accuracy" and shared:
                diff = np.array([cb[i] for i in shared], float) - np.array([ca[i] for i in shared], float)
                low, high = accuracy_interval(diff)
                row |= {"ci95": [low, high], "significant": bool(low > 0 or high < 0), "test": f"paired bootstrap, {len(shared)} items"}
            elif isinstance(ma[metric], dict) and "ci95" in ma[metric]:
                low, high = ma[metric]["ci95"]
                row |= {"significant": bool(vb < low or vb > high), "test": "B outside A's 95% interval"}
            rows.append(row)
    if not rows:
        raise TaskError(f"{a} and {b} share no task")
    return rows


def _value(m) -> float:
    return m["value"] if isinstance(m, dict) else float(m)
