"""Passages: the unit that retrieval indexes, searches and cites.

Two ways in:
  * QA records (MedQuAD first, or any file medtune's loaders read): one passage per answered
    pair, text = question + answer so that a search matches either, title = the record's focus.
    Long answers are cut into overlapping word windows, each repeating the question, so that a
    window deep in a long answer is still found by the question it answers; window n of record
    `qid` is `qid#n` and keeps the record's url, title, source and language.
  * a passage JSONL (see medtune.data.passages): the caller's own units, kept whole and under
    the caller's ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medtune.data import load_source
from medtune.data.loaders import infer_loader
from medtune.data.passages import Passage, is_passage_jsonl, read_passage_jsonl
from medtune.data.report import DataError, LoadReport
from medtune.recipe import SourceConfig
from medtune.records import QARecord

# 250 words: the question and about the first 80 words of a window fit the embedder's 128
# tokens (BM25 sees all of it); smaller windows mean more passages to embed.
CHUNK_WORDS = 250
OVERLAP = 50


@dataclass
class PassageReport:
    """What `load_passages` read and made; recorded in the index manifest."""

    source: str
    loader: str  # "passages" for a passage JSONL, else the QA loader used
    chunk_words: int
    overlap: int
    records: int = 0  # QA records or JSONL lines read
    passages: int = 0
    chunked: int = 0  # records whose answer was cut into several passages
    unanswered: int = 0  # QA records without an answer: nothing to retrieve
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {file, row, reason}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def windows(words: list[str], size: int, overlap: int) -> list[list[str]]:
    """Overlapping windows of `size` words, each starting `size - overlap` after the last."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError(f"need chunk_words > 0 and 0 <= overlap < chunk_words, got {size} and {overlap}")
    if len(words) <= size:
        return [words]
    step = size - overlap
    # windows start every `step` words until one reaches the end; the last may be short
    return [words[i : i + size] for i in range(0, len(words) - size + step, step)]


def passages_from_records(
    records: Iterable[QARecord],
    report: PassageReport | None = None,
    *,
    chunk_words: int = CHUNK_WORDS,
    overlap: int = OVERLAP,
    parents: list[int] | None = None,
) -> list[Passage]:
    """Passages of the answered records; `parents`, when given, receives each passage's record position (0-based)."""
    report = report or PassageReport(source="", loader="records", chunk_words=chunk_words, overlap=overlap)
    passages: list[Passage] = []
    seen: dict[str, int] = {}
    for n, rec in enumerate(records, 1):
        first = len(passages)
        report.records += 1
        if not rec.answered:
            report.unanswered += 1
            continue
        # MedQuAD reuses a qid for the pairs of every focus of a multi-focus document (2,495 ids
        # over the tree): later uses get `~2`, `~3`, in load order, so every id stays unique.
        base = rec.id or f"{rec.source or 'record'}-{n}"
        seen[base] = seen.get(base, 0) + 1
        qid = base if seen[base] == 1 else f"{base}~{seen[base]}"
        meta = {"title": rec.focus, "url": rec.url, "source": rec.source, "lang": rec.language, "question": rec.question}
        parts = windows(rec.answer.split(), chunk_words, overlap)
        if len(parts) == 1:
            passages.append(Passage(id=qid, text=f"{rec.question}\n{rec.answer}", **meta))
        else:
            report.chunked += 1
            passages += [Passage(id=f"{qid}#{i}", text=f"{rec.question}\n{' '.join(p)}", **meta) for i, p in enumerate(parts, 1)]
        if parents is not None:
            parents += [n - 1] * (len(passages) - first)
    report.passages = len(passages)
    return passages


def load_passages(
    source_path: str | Path,
    loader: str | None = None,
    *,
    chunk_words: int = CHUNK_WORDS,
    overlap: int = OVERLAP,
    on_bad_row: Literal["error", "skip"] = "error",
) -> tuple[list[Passage], PassageReport]:
    """Passages from a MedQuAD tree, a passage JSONL (`loader="passages"`) or any QA file medtune reads.

    Without `loader` it is inferred: a directory of XML is MedQuAD, a .jsonl whose rows have
    a text field and no question is a passage file (medtune.data.passages), anything else goes by
    medtune's QA loaders.
    """
    path = Path(source_path)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    windows([], chunk_words, overlap)  # validate the settings before reading anything
    if loader is None:
        loader = "passages" if is_passage_jsonl(path) else infer_loader(path)
    report = PassageReport(source=str(path), loader=loader, chunk_words=chunk_words, overlap=overlap)
    if loader == "passages":
        read = LoadReport(source=str(path), loader=loader)
        passages = read_passage_jsonl(path, read, on_bad_row)
        report.records, report.skipped, report.passages = read.rows_seen, read.skipped, len(passages)
        return passages, report
    records, load_report = load_source(SourceConfig(loader=loader, path=str(path), on_bad_row=on_bad_row))
    report.skipped = load_report.skipped
    return passages_from_records(records, report, chunk_words=chunk_words, overlap=overlap), report
