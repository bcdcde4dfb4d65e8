"""Multiple-choice metrics with bootstrap confidence intervals, overall and per category.

accuracy: the option with the highest log-likelihood is right. accuracy_norm: the same after
dividing each log-likelihood by the option's length in characters (lm-eval's acc_norm), so
long options are not penalised for having more tokens. macro_f1: F1 over answer letters,
averaged with equal weight per letter, which exposes a model that always answers "A".
"""

from __future__ import annotations

import string
from collections import defaultdict

import numpy as np
from sklearn.metrics import f1_score

LETTERS = string.ascii_uppercase
N_BOOTSTRAP = 1000


def predictions(loglik: list[list[float]], options: list[tuple[str, ...]]) -> tuple[list[int], list[int]]:
    """(argmax of log-likelihood, argmax of log-likelihood per character) per item."""
    raw = [int(np.argmax(s)) for s in loglik]
    norm = [int(np.argmax([v / max(len(o), 1) for v, o in zip(s, opts)])) for s, opts in zip(loglik, options)]
    return raw, norm


def macro_f1(gold: np.ndarray, pred: np.ndarray) -> float:
    labels = np.union1d(gold, pred)  # letters never seen nor predicted do not count
    return float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0))


def _accuracy(gold: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(gold == pred))


def with_interval(metric, gold: np.ndarray, pred: np.ndarray, *, seed: int = 0, n: int = N_BOOTSTRAP) -> dict:
    """{"value", "ci95": [low, high]}: percentile bootstrap over items (resampled with replacement)."""
    value = metric(gold, pred)
    if len(gold) < 2:
        return {"value": value, "ci95": [value, value]}
    idx = np.random.default_rng(seed).integers(0, len(gold), size=(n, len(gold)))
    samples = [metric(gold[i], pred[i]) for i in idx]
    low, high = np.percentile(samples, [2.5, 97.5])
    return {"value": value, "ci95": [float(low), float(high)]}


def accuracy_interval(correct: np.ndarray, *, seed: int = 0, n: int = N_BOOTSTRAP) -> list[float]:
    """Bootstrap 95% interval of a mean of 0/1 outcomes, vectorised (used per category and for deltas)."""
    if len(correct) < 2:
        return [float(np.mean(correct))] * 2 if len(correct) else [float("nan")] * 2
    idx = np.random.default_rng(seed).integers(0, len(correct), size=(n, len(correct)))
    low, high = np.percentile(correct[idx].mean(axis=1), [2.5, 97.5])
    return [float(low), float(high)]


def summarize(gold: list[int], pred: list[int], pred_norm: list[int], categories: list[str], *, seed: int = 0) -> dict:
    g, p, pn = np.array(gold), np.array(pred), np.array(pred_norm)
    summary = {
        "n": len(g),
        "accuracy": with_interval(_accuracy, g, p, seed=seed),
        "accuracy_norm": with_interval(_accuracy, g, pn, seed=seed),
        "macro_f1": with_interval(macro_f1, g, p, seed=seed),
    }
    by: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        if c:
            by[c].append(i)
    if len(by) > 1:
        summary["by_category"] = {
            c: {"n": len(ix), "accuracy": {"value": _accuracy(g[ix], p[ix]), "ci95": accuracy_interval(g[ix] == p[ix], seed=seed)}}
            for c, ix in sorted(by.items())
        }
    return summary
