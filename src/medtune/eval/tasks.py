"""The task registry: a task is data (where its items and few-shot examples come from), a
prompt, and a scoring kind. `medtune eval --tasks a,b` looks tasks up here by name.

Multiple-choice tasks follow lm-evaluation-harness conventions so numbers are comparable:
HEAD-QA and PubMedQA score each option's text after "Answer:" ("cloze"); MedQA, MedMCQA,
MMLU and CasiMedicos list lettered options and score the letters ("letters").
Paths are relative to the data directory (the layout of the project's shared data, which is
how the datasets are distributed); `name=PATH` on the command line points a task elsewhere.
Bad items are skipped and counted with their reasons, never fatal; every task reports the files
it read and the split each file's name says it holds.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medtune.data import prepare_data
from medtune.data.mcq import load_mcq, pubmedqa_test_ids
from medtune.eval.choice_metrics import LETTERS
from medtune.eval.loglik import Request
from medtune.recipe import DataConfig, SourceConfig
from medtune.records import QARecord, from_dataset

# Prompt words per language: (question, answer, passage). lm-eval uses the English ones everywhere.
PROMPT_WORDS = {
    "en": ("Question", "Answer", "Abstract"),
    "es": ("Pregunta", "Respuesta", "Resumen"),
    "pt": ("Pergunta", "Resposta", "Resumo"),
}
FEWSHOT_SEPARATOR = "\n\n"


@dataclass
class TaskData:
    items: list[QARecord]
    fewshot: list[QARecord]  # pool of worked examples; may be the items themselves (an item never shows itself)
    skipped: list[dict] = field(default_factory=list)  # the items' counted skips, e.g. HEAD-QA items with images
    note: str = ""
    files: dict[str, str] = field(default_factory=dict)  # what was read: {"items": path, "fewshot": path}
    fewshot_skipped: list[dict] = field(default_factory=list)  # skips in a separate few-shot file


@dataclass(frozen=True)
class Task:
    name: str
    kind: Literal["choice", "generation"]
    language: str
    load: Callable[[Path], TaskData]  # path (the default below under the data dir, or the user's) -> data
    default_path: str
    style: Literal["cloze", "letters"] = "cloze"
    about: str = ""


TASKS: dict[str, Task] = {}


class TaskError(ValueError):
    """A task that cannot run as asked: unknown name, missing data, too few few-shot examples."""


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise KeyError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; tasks: {', '.join(sorted(TASKS))}") from None


def task_path(task: Task, data_dir: str | Path | None, override: str | None) -> Path:
    if override:
        path = Path(override)
    elif task.default_path and data_dir:
        path = Path(data_dir) / task.default_path
    else:
        hint = f"--data-dir DIR (holding {task.default_path}) or MEDTUNE_DATA_DIR" if task.default_path else f"{task.name}=PATH"
        raise TaskError(f"task {task.name}: where is its data? give {hint}")
    if not path.exists():
        raise TaskError(f"task {task.name}: {path} does not exist")
    return path


# ---- prompts ----------------------------------------------------------------------------

def choice_request(rec: QARecord, style: str, language: str, shots: list[QARecord] = ()) -> Request:
    """The prompt (with any worked examples first) and the continuations to score for one item."""
    context = "".join(_choice_prompt(s, style, language) + _gold(s, style) + FEWSHOT_SEPARATOR for s in shots)
    return Request(context + _choice_prompt(rec, style, language), _continuations(rec, style))


def _choice_prompt(rec: QARecord, style: str, language: str) -> str:
    question, answer, passage = PROMPT_WORDS.get(language, PROMPT_WORDS["en"])
    text = f"{passage}: {rec.context}\n" if rec.context else ""
    text += f"{question}: {rec.question}\n"
    if style == "letters":
        text += "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(rec.options))
    return text + f"{answer}:"


def _continuations(rec: QARecord, style: str) -> tuple[str, ...]:
    return tuple(f" {LETTERS[i]}" if style == "letters" else f" {o}" for i, o in enumerate(rec.options))


def _gold(rec: QARecord, style: str) -> str:
    return _continuations(rec, style)[rec.answer_index]


def fewshot_examples(rec: QARecord, pool: list[QARecord], k: int, seed: int = 0) -> list[QARecord]:
    """k worked examples, the same for every item of a category: drawn once (seeded) from the pool,
    from the item's own category when the pool has enough of it (MMLU subjects), never the item itself."""
    if k == 0:
        return []
    same = [r for r in pool if r.category == rec.category and r.id != rec.id]
    candidates = same if len(same) >= k else [r for r in pool if r.id != rec.id]
    if len(candidates) < k:
        raise TaskError(f"{k}-shot needs {k} examples besides the item; the few-shot pool has {len(candidates)}")
    key = rec.category if len(same) >= k else ""
    ordered = sorted(candidates, key=lambda r: random.Random(f"{seed}:{key}:{r.id}").random())
    return ordered[:k]


# ---- data -------------------------------------------------------------------------------

_SPLITS = {"train": "train", "dev": "dev", "val": "validation", "valid": "validation", "validation": "validation",
           "test": "test"}


def split_of(path: Path) -> str | None:
    """The split a file's or folder's name says it holds: test_HEAD_EN.json, dev.jsonl, train-00000-of-00001.parquet,
    mmlu_medical/test; None when the name does not say."""
    return next((_SPLITS[w] for w in re.split(r"[^a-z]+", path.stem.lower()) if w in _SPLITS), None)


def described(path: Path) -> str:
    split = split_of(path)
    return f"{path} ({split} split)" if split else f"{path} (split not named in the file name)"


def _choice_files(loader: str, items_file: str, fewshot_file: str | None, language: str = "en") -> Callable[[Path], TaskData]:
    """Items from `items_file` in the task directory, worked examples from `fewshot_file`.
    A path to a single file serves as both (an item is never its own example)."""

    def load(path: Path) -> TaskData:
        items_path, pool_path = (path, None) if path.is_file() else (path / items_file, path / fewshot_file if fewshot_file else None)
        items, report = load_mcq(loader, items_path, language=language, on_bad_row="skip")
        if pool_path:
            pool, pool_report = load_mcq(loader, pool_path, language=language, on_bad_row="skip")
            fewshot, pool_skipped = f"few-shot examples from {described(pool_path)}", pool_report.skipped
        else:
            pool, pool_skipped = items, []
            fewshot = "few-shot examples from the same file (no separate split); an item never sees itself"
        return TaskData(items, pool, report.skipped, f"items from {described(items_path)}; {fewshot}",
                        {"items": str(items_path), "fewshot": str(pool_path or items_path)}, pool_skipped)

    return load


def _pubmedqa(path: Path) -> TaskData:
    file = path if path.is_file() else path / "ori_pqal.json"
    records, report = load_mcq("pubmedqa", file, on_bad_row="skip")
    test = pubmedqa_test_ids(file)
    return TaskData([r for r in records if r.id in test], [r for r in records if r.id not in test], report.skipped,
                    f"the {len(test)} PQA-L test ids of {file}; few-shot from the other labelled questions",
                    {"items": str(file), "fewshot": str(file)})


def _held_out(loader: str, language: str) -> Callable[[Path], TaskData]:
    """Generation tasks: the test split medtune's default grouped split holds out (seeded, by focus),
    so a model trained with the default split is evaluated on questions it never saw."""

    def load(path: Path) -> TaskData:
        source = SourceConfig(loader=loader, path=str(path), language=language, on_bad_row="skip")
        data = prepare_data(DataConfig(sources=[source]))
        skipped = [s for report in data.report["sources"].values() for s in report["skipped"]]
        return TaskData(from_dataset(data.splits["test"]), [], skipped,
                        f"held-out test split of medtune's default focus-grouped split of {path}", {"items": str(path)})

    return load


for lang in ("es", "en"):
    suffix = "_EN" if lang == "en" else ""  # the English translation's files are test_HEAD_EN.json, …
    # The splits read are in each report's note: they follow the files (a NAME=FILE may be any split).
    register(Task(f"headqa_{lang}", "choice", lang, _choice_files("headqa", f"test_HEAD{suffix}.json", f"dev_HEAD{suffix}.json", lang),
                  f"head_qa/{lang}", about=f"HEAD-QA ({lang}): Spanish specialisation exams (MIR, EIR, BIR, FIR, QIR, PIR)"))
    register(Task(f"casimedicos_{lang}", "choice", lang, _choice_files("casimedicos", "dev.jsonl", "train.jsonl", lang),
                  f"casimedicos/{lang}", style="letters", about=f"CasiMedicos ({lang}): MIR clinical cases"))
register(Task("medqa", "choice", "en", _choice_files("medqa", "test.jsonl", None), "medqa_usmle", style="letters",
              about="MedQA-USMLE, 4 options"))
register(Task("medmcqa", "choice", "en", _choice_files("medmcqa", "dev.jsonl", None), "medmcqa", style="letters",
              about="MedMCQA (AIIMS/NEET PG); its validation split is the usual test set"))
register(Task("pubmedqa", "choice", "en", _pubmedqa, "pubmedqa", about="PubMedQA PQA-L: yes/no/maybe given the abstract"))
register(Task("mmlu_medical", "choice", "en", _choice_files("mmlu", "test", "dev"), "mmlu_medical", style="letters",
              about="MMLU medical subjects; few-shot from each subject's own examples"))
register(Task("exam_pt", "choice", "pt", _choice_files("exam_pt", "", None, "pt"), "", style="letters",
              about="Portuguese exam CSV (Texto with inline options, Resposta Correta): exam_pt=FILE.csv"))
register(Task("medquad", "generation", "en", _held_out("medquad", "en"), "medquad", about="MedQuAD answers, held-out test split"))
register(Task("medtext", "generation", "en", _held_out("medtext", "en"), "", about="MedText-format CSV (Prompt, Completion): medtext=FILE.csv"))
