"""`medtune quickstart`: fine-tune the default small model on MedQuAD and show before/after.

MedQuAD comes from --data-dir / $MEDTUNE_DATA_DIR when given (a folder holding `medquad/`, or
the XML tree itself); otherwise from its public GitHub archive, downloaded once and cached.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medtune.data import DataError
from medtune.models import cache_dir
from medtune.pipeline import run
from medtune.recipe import load_recipe

MEDQUAD_ARCHIVE = "https://github.com/abachaa/MedQuAD/archive/refs/heads/master.zip"


def find_medquad(data_dir: str | None) -> Path:
    given = data_dir or os.environ.get("MEDTUNE_DATA_DIR")
    if given:
        for candidate in (Path(given) / "medquad", Path(given)):
            if candidate.is_dir() and next(candidate.glob("*/*.xml"), None):
                return candidate
        raise DataError(given, "no MedQuAD XML tree here (expected DIR/medquad/<collection>/*.xml or DIR/<collection>/*.xml)")
    cached = cache_dir() / "data" / "medquad"
    if cached.is_dir():
        return cached
    return _download_medquad(cached)


def _download_medquad(target: Path) -> Path:
    try:
        with urllib.request.urlopen(MEDQUAD_ARCHIVE, timeout=30) as response:
            archive = zipfile.ZipFile(io.BytesIO(response.read()))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DataError(
            MEDQUAD_ARCHIVE,
            f"cannot download MedQuAD ({exc}); offline, pass --data-dir DIR (or set MEDTUNE_DATA_DIR) "
            "to a folder that holds the MedQuAD XML tree",
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".medquad-"))
    try:
        archive.extractall(staging)
        (root,) = [p for p in staging.iterdir() if p.is_dir()]  # MedQuAD-master/
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def quickstart(data_dir: str | None = None, overrides: list[str] | None = None, console: Console | None = None) -> Path:
    console = console or Console()
    medquad = find_medquad(data_dir)
    recipe_path = resources.files("medtune") / "quickstart.yaml"
    recipe = load_recipe(Path(str(recipe_path)), [f"data.sources.0.path={medquad}", *(overrides or [])])
    console.print(f"MedQuAD: {medquad}")
    run_dir = run(recipe)
    console.print(summary_table(json.loads((run_dir / "report.json").read_text())))
    console.print(f"run directory: {run_dir}")
    return run_dir


def summary_table(report: dict) -> Table:
    ev = report["eval"]
    before = ev.get("before", {}).get("metrics", {})
    table = Table(
        title=f"{report['model']}: before vs after fine-tuning ({report['train']['global_step']} steps)",
        caption="Answers come from a 135M-parameter model tuned for minutes, without sources: "
        "often wrong, never medical advice.",
    )
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key, label in [("perplexity", "held-out answer perplexity (lower is better)"), ("rougeL", "ROUGE-L on test answers"),
                       ("rouge1", "ROUGE-1 on test answers")]:
        if key in ev["metrics"]:
            table.add_row(label, f"{before.get(key, float('nan')):.2f}", f"{ev['metrics'][key]:.2f}")
    for a in ev.get("answers", []):
        table.add_row(f"[bold]{a['question']}[/bold]", _short(a.get("before", "")), _short(a["after"]))
    return table


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
