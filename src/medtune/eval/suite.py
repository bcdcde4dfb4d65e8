"""`medtune eval MODEL_OR_RUN --tasks …`: run registry tasks on one model and write one report.

Per task the report holds the metrics with bootstrap 95% intervals, the per-category
breakdown, how many items the loaders skipped and why, and one full prompt, so a reader can
see exactly what the model was asked. Per-item results go to items/<task>.jsonl, which
`medtune compare` uses for paired confidence intervals.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

from medtune.logs import log
from medtune.eval.choice_metrics import LETTERS, predictions, summarize
from medtune.eval.generation import evaluate_generation
from medtune.eval.loglik import OptionScorer, Request
from medtune.eval.suite_report import write_suite_report
from medtune.eval.tasks import PROMPT_WORDS, Task, TaskData, TaskError, choice_request, fewshot_examples, get_task, task_path
from medtune.io import write_atomic
from medtune.engines.config import EngineConfig
from medtune.predict import Predictor
from medtune.recipe import EvalConfig
from medtune.records import to_dataset


def parse_tasks(spec: str | list[str]) -> list[tuple[Task, str | None]]:
    """"headqa_es,exam_pt=exams.csv" -> [(task, None), (task, "exams.csv")]."""
    items = spec.split(",") if isinstance(spec, str) else spec
    out = []
    for item in (i.strip() for i in items):
        if item:
            name, _, path = item.partition("=")
            out.append((get_task(name), path or None))
    if not out:
        raise TaskError("no tasks given; e.g. --tasks headqa_es,headqa_en")
    return out


def evaluate(
    model_ref: str | Path,
    tasks: str | list[str],
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    num_fewshot: int = 0,
    limit: int | None = None,
    prompt_language: str | None = None,
    max_generations: int = 200,
    batch_tokens: int = 4096,
    seed: int = 0,
    engine: EngineConfig | None = None,
) -> Path:
    """Evaluate a run directory, model directory or hub id on `tasks`; returns the report directory.
    `engine` generates the answers of generation tasks (llama.cpp: the GGUF export, at its speed);
    log-likelihoods (choice tasks, answer perplexity) always come from the transformers model."""
    chosen = parse_tasks(tasks)
    if prompt_language and prompt_language not in PROMPT_WORDS:
        raise TaskError(f"prompt language {prompt_language!r}: choose one of {', '.join(PROMPT_WORDS)}")
    data_dir = data_dir or os.environ.get("MEDTUNE_DATA_DIR")
    loaded = [(task, task.load(task_path(task, data_dir, path))) for task, path in chosen]  # every path checked before the model loads
    predictor = Predictor.from_pretrained(model_ref)
    out_dir = Path(out_dir) if out_dir else Path("evals") / f"{Path(str(model_ref)).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    (out_dir / "items").mkdir(parents=True, exist_ok=True)
    results = {}
    to_generate = {task.name: _generation_items(data, limit or max_generations, seed) for task, data in loaded if task.kind != "choice"}
    asked = [r.question for items in to_generate.values() for r in items]
    answers = None
    if engine and engine.kind != "transformers" and asked:  # one engine (one llama-server) answers every generation task
        answers = _engine_answers(model_ref, engine, predictor, asked)
    for task, data in loaded:
        log.info("%s: %d items, %d skipped (%s)", task.name, len(data.items), len(data.skipped), data.note)
        if task.kind == "choice":
            scorer = OptionScorer(predictor.model, predictor.tokenizer, batch_tokens=batch_tokens)
            result, rows = run_choice_task(task, data, scorer, num_fewshot=num_fewshot, limit=limit, prompt_language=prompt_language, seed=seed)
        else:
            result, rows = run_generation_task(task, data, to_generate[task.name], predictor, batch_tokens=batch_tokens, answers=answers)
        write_atomic(out_dir / "items" / f"{task.name}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        results[task.name] = result
    report = {
        "model": str(model_ref),
        "settings": {"num_fewshot": num_fewshot, "limit": limit, "prompt_language": prompt_language, "seed": seed,
                     "engine": (engine or EngineConfig()).kind, "device": predictor.model.device.type,
                     "dtype": str(predictor.model.dtype).removeprefix("torch.")},
        "tasks": results,
    }
    write_suite_report(out_dir, report)
    return out_dir


def run_choice_task(task: Task, data: TaskData, scorer: OptionScorer, *, num_fewshot: int = 0, limit: int | None = None,
                    prompt_language: str | None = None, seed: int = 0) -> tuple[dict, list[dict]]:
    items = data.items[:limit] if limit else data.items
    if not items:
        raise TaskError(f"task {task.name}: no items to evaluate")
    language = prompt_language or task.language
    requests = [choice_request(r, task.style, language, fewshot_examples(r, data.fewshot, num_fewshot, seed)) for r in items]
    loglik = scorer.score(requests, desc=task.name)
    pred, pred_norm = predictions(loglik, [r.options for r in items])
    gold = [r.answer_index for r in items]
    result = {
        "kind": "choice",
        "about": task.about,
        "style": task.style,
        "prompt_language": language,
        "num_fewshot": num_fewshot,
        "skipped": _count_reasons(data.skipped),
        "fewshot_skipped": _count_reasons(data.fewshot_skipped),
        "files": data.files,
        "note": data.note,
        "example_prompt": requests[0].context + requests[0].options[gold[0]],
        "metrics": summarize(gold, pred, pred_norm, [r.category for r in items], seed=seed),
    }
    rows = [
        {"id": r.id, "category": r.category, "gold": LETTERS[g], "pred": LETTERS[p], "pred_norm": LETTERS[pn], "loglik": ll}
        for r, g, p, pn, ll in zip(items, gold, pred, pred_norm, loglik)
    ]
    return result, rows


def _engine_answers(model_ref, engine: EngineConfig, predictor: Predictor, questions: list[str]):
    """`questions` answered by `engine` in one go, in the run's prompt format (its template; the engine adds
    the run's system prompt), greedy and as long as the transformers path's (EvalConfig's generation);
    returns a lookup from questions to their answers."""
    from medtune.engines import generate_all, make_engine
    from medtune.prompts import render_prompt

    unique = list(dict.fromkeys(questions))
    generation = EvalConfig().generation
    conversations = [[{"role": "user", "content": render_prompt(predictor.template, q)}] for q in unique]
    table = dict(zip(unique, generate_all(make_engine(str(model_ref), engine, generation), conversations,
                                          max_tokens=generation.max_new_tokens, concurrency=engine.parallel,
                                          desc=f"generate ({engine.kind})")))
    return lambda asked: [table[q] for q in asked]


def _generation_items(data: TaskData, limit: int, seed: int) -> list:
    """The answered items a generation task scores: at most `limit`, a fixed random sample (files keep their topic order)."""
    items = [r for r in data.items if r.answered]
    return random.Random(seed).sample(items, limit) if len(items) > limit else items


def run_generation_task(task: Task, data: TaskData, items: list, predictor: Predictor, *, batch_tokens: int = 4096,
                        answers=None) -> tuple[dict, list[dict]]:
    """`items` (of `data`, chosen by `_generation_items`) answered and scored with ROUGE/BLEU/chrF (language-aware),
    and answer perplexity: the log-likelihood of each reference answer (with its end-of-turn token) after the prompt."""
    generated = evaluate_generation(predictor, to_dataset(items), EvalConfig(max_samples=None, metrics=["rouge", "bleu", "chrf"]),
                                    split="test", answers=answers)
    scorer = OptionScorer(predictor.model, predictor.tokenizer, batch_tokens=batch_tokens)
    end = "" if predictor.is_seq2seq else (predictor.tokenizer.eos_token or "")
    requests = [Request(p, (a + end,)) for p, a in zip(predictor.prompts([r.question for r in items]), [r.answer for r in items])]
    nll = -sum(s[0] for s in scorer.score(requests, desc=f"{task.name} perplexity"))
    tokens = sum(len(scorer.encode(r).options[0]) for r in requests)
    metrics = generated["metrics"] | {"perplexity": math.exp(nll / tokens)}
    result = {"kind": "generation", "about": task.about, "note": data.note, "files": data.files, "skipped": _count_reasons(data.skipped), "n": generated["n"], "perplexity_tokens": tokens, "language": generated.get("language"), "metrics": metrics, "samples": generated["samples"]}
    return result, generated.get("predictions", [])


def _count_reasons(skipped: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    return counts
