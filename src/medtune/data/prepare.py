"""From a recipe's `data` section to train/validation/test datasets and a report of every count.

Order: load every source, drop exact duplicates (across sources, first one wins), set
aside records without an answer (counted), split all sources together grouped by focus,
mix the training split by source weight, then cap the splits.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from medtune.data.loaders import load_source
from medtune.data.report import DataError
from medtune.data.split import SPLITS, focus_overlap, split_indices, unique_indices
from medtune.recipe import DataConfig, SourceConfig
from medtune.records import QARecord, to_dataset

log = logging.getLogger(__name__)

_ORIGIN = "_origin"  # temporary column: the source a record came from, to count the mix


@dataclass
class PreparedData:
    splits: datasets.DatasetDict  # train / validation / test, columns QA_COLUMNS, answered only
    report: dict[str, Any]


def source_names(sources: list[SourceConfig]) -> list[str]:
    """A short unique name per source: the file or folder name, numbered when repeated."""
    names = [Path(s.path).name or s.path for s in sources]
    counts = Counter(names)
    return [f"{n}#{i}" if counts[n] > 1 else n for i, n in enumerate(names, 1)]


def prepare_data(cfg: DataConfig) -> PreparedData:
    names = source_names(cfg.sources)
    records: list[QARecord] = []
    origins: list[str] = []
    report: dict[str, Any] = {"sources": {}}
    for name, source in zip(names, cfg.sources, strict=True):
        loaded, load_report = load_source(source)
        records += loaded
        origins += [name] * len(loaded)
        report["sources"][name] = load_report.to_dict()

    kept = unique_indices(records) if cfg.dedup else list(range(len(records)))
    answered = [i for i in kept if records[i].answered]
    report["duplicates_removed"] = len(records) - len(kept)
    report["unanswered_excluded"] = len(kept) - len(answered)
    if not answered:
        raise DataError(", ".join(s.path for s in cfg.sources), "no answered records to train or evaluate on")
    records, origins = [records[i] for i in answered], [origins[i] for i in answered]

    parts = split_indices(records, cfg.split)
    report["split"] = cfg.split.model_dump() | {"sizes": {k: len(v) for k, v in parts.items()}}
    report["focus_overlap"] = focus_overlap(records, parts)

    def dataset(indices: list[int]) -> datasets.Dataset:
        return _with_origin([records[i] for i in indices], [origins[i] for i in indices])

    weights = {name: s.weight for name, s in zip(names, cfg.sources, strict=True)}
    by_source = [(dataset([i for i in parts["train"] if origins[i] == n]), w) for n, w in weights.items()]
    train, strategy = _mix(by_source, cfg.split.seed)
    report["mix"] = {"weights": weights, "strategy": strategy, "unused": len(parts["train"]) - len(train)}
    splits = {"train": train, "validation": dataset(parts["validation"]), "test": dataset(parts["test"])}

    caps = {"train": cfg.max_examples, "validation": cfg.max_eval_examples, "test": cfg.max_eval_examples}
    report["capped"] = {}
    for name in SPLITS:
        before = len(splits[name])
        splits[name] = _cap(splits[name], caps[name], cfg.split.seed)
        report["capped"][name] = before - len(splits[name])

    report["mix"]["train"] = dict(Counter(splits["train"][_ORIGIN]))  # realized, after the cap
    report["sizes"] = {name: len(ds) for name, ds in splits.items()}
    log.info(
        "data: %s, %d duplicates removed, %d unanswered excluded",
        report["sizes"],
        report["duplicates_removed"],
        report["unanswered_excluded"],
    )
    return PreparedData(datasets.DatasetDict({k: ds.remove_columns(_ORIGIN) for k, ds in splits.items()}), report)


def _with_origin(records: list[QARecord], origins: list[str]) -> datasets.Dataset:
    return to_dataset(records).add_column(_ORIGIN, origins)


def _mix(parts: list[tuple[datasets.Dataset, float]], seed: int) -> tuple[datasets.Dataset, str]:
    """The training split of every source, and how it was mixed.

    Equal weights: all of every source, concatenated. Otherwise sources are drawn with
    probability proportional to weight until the first one runs out, so that no example
    repeats and the realized mix follows the weights (larger sources are not used up).
    """
    used = [(ds, w) for ds, w in parts if len(ds)]  # an empty source would end the draw at once
    if len({w for _, w in used}) <= 1:
        return datasets.concatenate_datasets([ds for ds, _ in used] or [parts[0][0]]), "concatenate"
    total = sum(w for _, w in used)
    mixed = datasets.interleave_datasets(
        [ds for ds, _ in used],
        probabilities=[w / total for _, w in used],
        seed=seed,
        stopping_strategy="first_exhausted",
    )
    return mixed, "interleave"


def _cap(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or len(ds) <= limit:
        return ds
    return ds.shuffle(seed=seed).select(range(limit)).flatten_indices()
