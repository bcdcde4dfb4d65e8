"""`medtune quickstart`: fine-tune the default small model on MedQuAD, show before/after, then answer the
same questions the way medtune is meant to be used: grounded in MedQuAD's NIH pages, with citations.

MedQuAD comes from --data-dir / $MEDTUNE_DATA_DIR when given (a folder holding `medquad/`, or
the XML tree itself; one that differs from the pinned release is used with a warning); otherwise from its
public GitHub archive at a pinned commit, downloaded once, checked and cached. Its retrieval index is built
once into medtune's cache and reused by later runs.
"""

from __future__ import annotations

import hashlib
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
from medtune.data.medquad import medquad_digest
from medtune.logs import log
from medtune.models import cache_dir
from medtune.pipeline import run
from medtune.predict import Predictor
from medtune.rag import Retriever, build_index, load_index, load_passages
from medtune.rag.answer import Answerer, GroundedAnswer
from medtune.rag.index import FORMAT
from medtune.recipe import load_recipe

# MedQuAD at a fixed commit: the repository's latest (2023-10-17, which added its LICENSE); its XML files
# are those of the first commit. GitHub builds archive zips on request and does not promise the same bytes
# twice, so what is checked is their content, the XML files the loader reads (medquad_digest: 11,274 files,
# computed from that commit's tree and equal to the copy in ../shared/data).
MEDQUAD_COMMIT = "577bd37b96c02d1833b2c9eed2de9f96964e96cb"
MEDQUAD_ARCHIVE = f"https://github.com/abachaa/MedQuAD/archive/{MEDQUAD_COMMIT}.zip"
MEDQUAD_DIGEST = "f435689408badb8552f156e749e9c2b830b37922179d47ea7e453bce59b02de7"


def find_medquad(data_dir: str | None) -> Path:
    given = data_dir or os.environ.get("MEDTUNE_DATA_DIR")
    if given:
        for candidate in (Path(given) / "medquad", Path(given)):
            if candidate.is_dir() and next(candidate.glob("*/*.xml"), None):
                if medquad_digest(candidate) != MEDQUAD_DIGEST:  # a warning only: it may be a fork, on purpose
                    log.warning("%s differs from MedQuAD at commit %s (edited, partial or a fork?): results will "
                                "not match those of the released data set", candidate, MEDQUAD_COMMIT[:12])
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
        roots = [p for p in staging.iterdir() if p.is_dir()]  # MedQuAD-<commit>/
        digest = medquad_digest(roots[0]) if len(roots) == 1 else "none (no single top folder)"
        if digest != MEDQUAD_DIGEST:  # nothing is cached: the next run downloads and checks again
            raise DataError(
                MEDQUAD_ARCHIVE,
                f"the download is not MedQuAD at commit {MEDQUAD_COMMIT[:12]} (XML digest {digest}, expected "
                f"{MEDQUAD_DIGEST}); nothing was cached. Pass --data-dir DIR to a MedQuAD XML tree instead",
            )
        roots[0].rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def quickstart(data_dir: str | None = None, overrides: list[str] | None = None, console: Console | None = None) -> Path:
    console = console or Console()
    medquad = find_medquad(data_dir)
    recipe_path = resources.files("medtune") / "quickstart.yaml"
    recipe = load_recipe(Path(str(recipe_path)), [f"data.sources.0.path={medquad}", *(overrides or [])])
    log.info("MedQuAD: %s", medquad)
    index = medquad_index(medquad)
    run_dir = run(recipe)
    console.print(summary_table(json.loads((run_dir / "report.json").read_text())))
    console.print("\n[bold]The same questions, answered from MedQuAD's sources by the fine-tuned model[/bold] "
                  "(retrieval, citations, support check, safety notices):\n")
    for answer in grounded_answers(run_dir, index, recipe.eval.questions):
        console.print(f"[bold]{answer.question}[/bold]")
        console.print(answer.text, markup=False, highlight=False)
        console.print()
    console.print(f"run directory: {run_dir}\nindex: {index}  (try: medtune ask \"your question\" --index {index} --model {run_dir})")
    return run_dir


# The encoder reads each passage's first 64 tokens (the question and the answer's opening), not 128 as `medtune
# index build` does: the build takes 106 s instead of 256 s here, for MedQuAD self-test MRR@10 0.793 instead of 0.806.
INDEX_TOKENS = 64


def medquad_index(medquad: Path) -> Path:
    """MedQuAD's answered questions as a retrieval index, built once into medtune's cache."""
    key = hashlib.sha1(f"{medquad.resolve()}|{FORMAT}|{INDEX_TOKENS}".encode()).hexdigest()[:12]
    target = cache_dir() / "indexes" / f"medquad-{key}"
    manifest = target / "manifest.json"
    if manifest.is_file():
        if json.loads(manifest.read_text()).get("questions"):
            return target
        # built before stored-question matching (same format, no questions.usearch): it would search without it
        log.info("rebuilding the cached MedQuAD index in %s: it predates question matching", target)
    else:
        log.info("building the MedQuAD retrieval index once, into %s", target)
    passages, report = load_passages(medquad)
    return build_index(passages, target, report=report, max_seq_length=INDEX_TOKENS)


def grounded_answers(model: Path, index: Path, questions: list[str]) -> list[GroundedAnswer]:
    """`questions` answered by `model` from `index`, generated in one batch."""
    answerer = Answerer(Retriever(load_index(index)))
    prepared = [answerer.prepare(q) for q in questions]
    to_generate = [p for p in prepared if p.final is None]
    generated = iter(Predictor.from_pretrained(model).generate_chat([p.messages for p in to_generate]) if to_generate else [])
    return [p.final or answerer.finish(p, next(generated)) for p in prepared]


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
