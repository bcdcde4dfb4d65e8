"""Run reports: ``report.json`` (machine readable) + ``report.md`` (human readable).

Report dict layout (every section and key is optional; the Markdown renderer
skips what is missing):

    {
      "name": str,                  # run name, used in the title
      "model": str,                 # base model id or path
      "recipe": str,                # recipe name or path
      "data": {str: scalar | list | dict},   # free-form summary, e.g.
                                    # {"train": 1200, "validation": 150, "languages": ["en", "es"]}
      "train": {
        "global_step": int,
        "train_loss": float,
        "runtime_s": float,
        "train_tokens_per_s": float,
        "log_history": [dict, ...], # transformers Trainer.state.log_history, as is
      },
      "eval": {
        "split": str,
        "n": int,                   # number of examples scored
        "metrics": {str: float},    # e.g. text_metrics() output, plus "eval_loss"
        "samples": [{"question": str, "reference": str, "prediction": str}, ...],
        "perplexity": {"perplexity", "nll", "tokens"},  # held-out answers, when measured
        "before": {"metrics": {...}, "perplexity": {...}},  # the starting model, when measured
        "answers": [{"question": str, "before": str, "after": str}, ...],  # the recipe's questions
      },
      "plots": {"loss_curve": "loss_curve.png"},  # paths relative to the run dir
    }

The eval loss shown in the training summary is ``eval.metrics["eval_loss"]``
when present, otherwise the last ``eval_loss`` in ``train.log_history``.
All files are written atomically (medtune.io).
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

from medtune.io import write_atomic, write_json

DEFAULT_MAX_SAMPLES = 5
SAMPLE_MAX_CHARS = 300


def plot_loss_curve(log_history: list[dict], path: str | os.PathLike) -> Path | None:
    """Plot training loss (and eval loss when logged) against step as a PNG.

    Returns the written path, or None when the history holds no loss to plot.
    """
    train = _series(log_history, "loss")
    evals = _series(log_history, "eval_loss")
    if not train and not evals:
        return None

    # Object-oriented API on an Agg canvas: no pyplot global state, no GUI
    # backend, and no matplotlib.use() call that would affect the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())


def _series(log_history: list[dict], key: str) -> list[tuple[float, float]]:
    # Trainer logs "loss" per logging step and "eval_loss" per evaluation; the
    # final summary entry uses "train_loss", so it is not picked up here.
    points = []
    for entry in log_history or []:
        value, step = entry.get(key), entry.get("step")
        if _is_number(value) and _is_number(step) and math.isfinite(value):
            points.append((step, value))
    return points


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def write_report(
    run_dir: str | os.PathLike, report: dict, *, max_samples: int = DEFAULT_MAX_SAMPLES
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``run_dir``; return both paths."""
    run_dir = Path(run_dir)
    json_path = write_json(run_dir / "report.json", report)
    md_path = write_atomic(run_dir / "report.md", render_markdown(report, max_samples=max_samples))
    return json_path, md_path


def render_markdown(report: dict, *, max_samples: int = DEFAULT_MAX_SAMPLES) -> str:
    """Render a report dict (layout in the module docstring) as Markdown."""
    name = report.get("name") or "unnamed run"
    lines = [f"# Run report: {name}", ""]

    header = [("Model", report.get("model")), ("Recipe", report.get("recipe"))]
    lines += [f"- **{k}:** {_cell(v)}" for k, v in header if v is not None]
    if any(v is not None for _, v in header):
        lines.append("")

    data = report.get("data") or {}
    if data:
        lines += ["## Data", ""]
        lines += [f"- **{k}:** {_cell(v)}" for k, v in data.items()]
        lines.append("")

    ev = report.get("eval") or {}
    metrics = ev.get("metrics") or {}
    if metrics:
        lines += ["## Metrics", ""]
        scope = [f"split `{ev['split']}`" if ev.get("split") else None,
                 f"{ev['n']} examples" if ev.get("n") is not None else None]
        scope = [s for s in scope if s]
        if scope:
            lines += ["Evaluated on " + ", ".join(scope) + ".", ""]
        before = (ev.get("before") or {}).get("metrics")
        if before:  # the starting model's results beside the trained model's
            lines += ["| Metric | Before training | After training |", "|---|---:|---:|"]
            lines += [f"| {_cell(k)} | {_fmt(before.get(k), digits=2) or 'n/a'} | {_fmt(v, digits=2) or 'n/a'} |" for k, v in metrics.items()]
        else:
            lines += ["| Metric | Value |", "|---|---:|"]
            lines += [f"| {_cell(k)} | {_fmt(v, digits=2) or 'n/a'} |" for k, v in metrics.items()]
        lines.append("")

    train = report.get("train") or {}
    summary = _training_summary(train, metrics)
    if summary:
        lines += ["## Training", ""]
        lines += [f"- **{k}:** {v}" for k, v in summary]
        lines.append("")

    plot = (report.get("plots") or {}).get("loss_curve")
    if plot:
        lines += ["## Loss curve", "", f"![loss curve]({Path(plot).as_posix()})", ""]

    samples = (ev.get("samples") or [])[:max_samples]
    if samples:
        lines += [f"## Sample predictions ({len(samples)} of {len(ev['samples'])})", ""]
        lines += ["| # | Question | Reference | Prediction |", "|---:|---|---|---|"]
        for i, s in enumerate(samples, 1):
            q, r, p = (_cell(_truncate(s.get(k, ""))) for k in ("question", "reference", "prediction"))
            lines.append(f"| {i} | {q} | {r} | {p} |")
        lines.append("")

    answers = ev.get("answers") or []
    if answers:
        lines += ["## Answers to the recipe's questions", ""]
        for a in answers:
            lines += [f"**{_cell(a['question'])}**", ""]
            if "before" in a:
                lines += [f"- before: {_cell(_truncate(a['before']))}"]
            lines += [f"- after: {_cell(_truncate(a['after']))}", ""]

    return "\n".join(lines).rstrip("\n") + "\n"


def _training_summary(train: dict, metrics: dict) -> list[tuple[str, str]]:
    eval_loss = metrics.get("eval_loss")
    if eval_loss is None:
        evals = _series(train.get("log_history") or [], "eval_loss")
        eval_loss = evals[-1][1] if evals else None
    runtime = train.get("runtime_s")
    rows = [
        ("Steps", train.get("global_step")),
        ("Train loss", _fmt(train.get("train_loss"))),
        ("Eval loss", _fmt(eval_loss)),
        ("Runtime", f"{runtime:.1f} s" if _is_number(runtime) else runtime),
        ("Tokens/s", _fmt(train.get("train_tokens_per_s"), digits=1)),
    ]
    return [(k, str(v)) for k, v in rows if v is not None]


def _fmt(value: Any, digits: int = 4) -> str | None:
    if value is None:
        return None
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _cell(value)


def _truncate(text: Any, limit: int = SAMPLE_MAX_CHARS) -> str:
    text = " ".join(str(text).split())  # newlines would break the table row
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(value: Any) -> str:
    # Keep arbitrary model output from breaking the Markdown table layout.
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return " ".join(text.split()).replace("|", "\\|")
