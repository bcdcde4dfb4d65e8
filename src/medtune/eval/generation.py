"""Generation evaluation: answer held-out questions and score them against the references."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import datasets

from medtune.eval.metrics import text_metrics
from medtune.predict import Predictor
from medtune.recipe import EvalConfig


def evaluate_generation(predictor: Predictor, ds: datasets.Dataset, cfg: EvalConfig, *, split: str, n_samples_shown: int = 5,
                        answers: Callable[[list[str]], list[str]] | None = None) -> dict:
    """`answers` (questions → answers) generates instead of `predictor`: another engine (llama.cpp)."""
    if cfg.max_samples is not None and len(ds) > cfg.max_samples:
        ds = ds.shuffle(seed=0).select(range(cfg.max_samples))  # a fixed random sample: splits keep file order
    if len(ds) == 0:
        return {"split": split, "n": 0, "metrics": {}, "samples": [], "note": "no examples to evaluate"}
    language = Counter(ds["language"]).most_common(1)[0][0]
    if answers is not None:
        predictions = answers(ds["question"])
    else:
        predictions = predictor.predict(ds["question"], batch_size=cfg.batch_size, progress=True, **cfg.generation.model_dump())
    # Perplexity is measured on the tokenized split by the caller; the rest score generated text.
    text = [m for m in cfg.metrics if m != "perplexity"]
    metrics = text_metrics(predictions, ds["answer"], metrics=text, language=language) if text else {}
    rows = [
        {"id": i, "question": q, "reference": r, "prediction": p}
        for i, q, r, p in zip(ds["id"], ds["question"], ds["answer"], predictions)
    ]
    return {"split": split, "n": len(ds), "language": language, "metrics": metrics, "samples": rows[:n_samples_shown], "predictions": rows}
