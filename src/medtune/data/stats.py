"""`medtune data stats PATH`: what a dataset holds before any recipe uses it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from medtune.data.loaders import infer_loader, load_source
from medtune.data.split import focus_overlap, split_indices, unique_indices
from medtune.recipe import SourceConfig, SplitConfig
from medtune.records import QARecord


def _counts(records: list[QARecord], key: Callable[[QARecord], str]) -> dict[str, dict[str, int]]:
    questions = Counter(key(r) for r in records)
    answered = Counter(key(r) for r in records if r.answered)
    return {k: {"questions": questions[k], "answered": answered[k]} for k in sorted(questions)}


def data_stats(path: str, loader: str | None = None, split: SplitConfig | None = None) -> dict[str, Any]:
    """Counts for one file or tree, as JSON-serializable data.

    Bad rows are skipped and listed rather than fatal, so that one run shows all of them.
    Split sizes are those `prepare_data` would make: answered pairs after deduplication.
    """
    loader = loader or infer_loader(path)
    split = split or SplitConfig()
    records, report = load_source(SourceConfig(loader=loader, path=path, on_bad_row="skip"))
    unique = [records[i] for i in unique_indices(records)]
    answered = [r for r in unique if r.answered]
    parts = split_indices(answered, split) if answered else {}
    sizes = {name: len(indices) for name, indices in parts.items()}
    return {
        "path": str(path),
        "loader": loader,
        "files": report.files_read,
        "questions": report.records,
        "answered": report.answered,
        "empty_answers": report.empty_answers,
        "duplicates": len(records) - len(unique),
        "answered_unique": len(answered),
        "per_source": _counts(records, lambda r: r.source),
        "per_qtype": _counts(records, lambda r: r.qtype),
        "split": split.model_dump() | {"sizes": sizes, "focus_overlap": focus_overlap(answered, parts)},
        "skipped": report.skipped,
    }
