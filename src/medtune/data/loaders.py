"""Loader registry: a recipe names a loader per source; `load_source` runs it and counts.

A loader is `fn(path, cfg, report) -> Iterable[QARecord]`: it reads `path`, adds what it
read and rejected to `report` (files, rows, skips) and yields records; `load_source` then
counts records, answered and empty answers, so every loader reports them the same way.
New formats register themselves with `@register_loader("name")` in their own module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from medtune.data.report import DataError, LoadReport
from medtune.recipe import SourceConfig
from medtune.records import QARecord

log = logging.getLogger(__name__)

Loader = Callable[[Path, SourceConfig, LoadReport], Iterable[QARecord]]
LOADERS: dict[str, Loader] = {}

# Suffixes that name their loader; formats that share a suffix (e.g. other JSON layouts) are
# chosen by name instead.
_BY_SUFFIX = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".xml": "medquad"}


def register_loader(name: str) -> Callable[[Loader], Loader]:
    def decorate(fn: Loader) -> Loader:
        if name in LOADERS:
            raise ValueError(f"loader {name!r} is already registered (by {LOADERS[name].__module__})")
        LOADERS[name] = fn
        return fn

    return decorate


def infer_loader(path: str | Path) -> str:
    """The loader for a path: a directory of XML files is MedQuAD, files go by suffix."""
    path = Path(path)
    if path.is_dir():
        if next(path.rglob("*.xml"), None) is not None:
            return "medquad"
        raise DataError(path, f"directory holds no XML files; name a loader ({', '.join(sorted(LOADERS))})")
    try:
        return _BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise DataError(
            path, f"cannot infer a loader from suffix {path.suffix!r}; name one ({', '.join(sorted(LOADERS))})"
        ) from None


def load_source(cfg: SourceConfig) -> tuple[list[QARecord], LoadReport]:
    try:
        loader = LOADERS[cfg.loader]
    except KeyError:
        raise DataError(
            cfg.path, f"unknown loader {cfg.loader!r}; registered loaders: {', '.join(sorted(LOADERS))}"
        ) from None
    path = Path(cfg.path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    report = LoadReport(source=str(path), loader=cfg.loader)
    records = list(loader(path, cfg, report))
    report.count(records)
    log.info(
        "%s (%s): %d records, %d answered, %d empty answers, %d skipped",
        path,
        cfg.loader,
        report.records,
        report.answered,
        report.empty_answers,
        len(report.skipped),
    )
    return records, report
