"""Exact-duplicate removal and a seeded train/validation/test split grouped by focus.

Questions about one focus (a disease, a drug) share wording and facts, so a focus seen in
training must not reappear in validation or test: the split keeps each group whole.
Functions return indices into the given records, so callers can carry data along (e.g.
which source each record came from).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from medtune.recipe import SplitConfig
from medtune.records import QARecord

SPLITS = ("train", "validation", "test")


def normalize(text: str | None) -> str:
    """Case-, width- and whitespace-insensitive form of a text, for comparing texts."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def unique_indices(records: Sequence[QARecord]) -> list[int]:
    """Indices of the first record of each (normalised question, normalised answer) pair."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for i, r in enumerate(records):
        key = (normalize(r.question), normalize(r.answer))
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def group_key(record: QARecord) -> str:
    """The normalised focus; a record without one is a group of its own question."""
    focus = normalize(record.focus)
    return f"focus:{focus}" if focus else f"question:{normalize(record.question)}"


def split_indices(records: Sequence[QARecord], cfg: SplitConfig) -> dict[str, list[int]]:
    """Indices of train, validation and test, the same for the same records and seed.

    With group_by="focus" the fractions are fractions of focus groups, not of records
    (that is how GroupShuffleSplit counts), so split sizes in records vary with group size.
    With group_by="none" every record is its own group: a plain seeded split.
    """
    groups = np.array([group_key(r) for r in records] if cfg.group_by == "focus" else range(len(records)))
    rest = np.arange(len(records))
    parts = {}
    # Test first out of all groups, then validation out of the rest, scaled so that both
    # fractions stay fractions of the whole.
    for name, fraction in (("test", cfg.test), ("validation", cfg.validation / (1 - cfg.test))):
        if fraction == 0:
            parts[name] = rest[:0]
            continue
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=cfg.seed)
        keep, held_out = next(splitter.split(rest, groups=groups[rest]))
        parts[name], rest = rest[held_out], rest[keep]
    parts["train"] = rest
    return {name: sorted(parts[name].tolist()) for name in SPLITS}


def focus_overlap(records: Sequence[QARecord], parts: dict[str, list[int]]) -> int:
    """How many focus groups appear in more than one split (0 for a grouped split)."""
    seen: dict[str, str] = {}
    shared = set()
    for name, indices in parts.items():
        for i in indices:
            key = group_key(records[i])
            if seen.setdefault(key, name) != name:
                shared.add(key)
    return len(shared)
