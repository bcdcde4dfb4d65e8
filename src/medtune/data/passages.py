"""Passages: pieces of medical text with an id (a web page's section, a case report, a chunk of an answer).
Synthesis generates questions from them; retrieval indexes and cites them.

A passage JSONL has one per line: text in `text` (or `raw_text`, `passage`, `content`, as re-exported
corpora name it), and optionally `id` (or `document_id`), `title` (or `topic`), `url`, `source`,
`lang` (or `language`) and `question` (the question the passage answers). A .jsonl file is one of these, not QA data, when its first object has a text
field and not both `question` and `answer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from medtune.data.report import DataError, LoadReport
from medtune.data.tabular import jsonl_objects, parse_json
from medtune.recipe import SourceConfig

TEXT_KEYS = ("text", "raw_text", "passage", "content")  # the first one present
TITLE_KEYS = ("title", "topic")
LANG_KEYS = ("lang", "language")


@dataclass(frozen=True, slots=True)
class Passage:
    id: str
    text: str
    title: str = ""
    url: str = ""
    source: str = ""
    lang: str = "en"
    question: str = ""  # the stored question a QA passage answers; retrieval matches questions to it too

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def is_passage_jsonl(path: Path) -> bool:
    """A .jsonl file whose first object has a text field and is not a question-answer row."""
    if path.suffix.lower() != ".jsonl":
        return False
    with path.open(encoding="utf-8-sig", errors="replace") as fh:  # the loader reports bad bytes with their line
        line = next((line for line in fh if line.strip()), "")
    if line:
        try:
            first = parse_json(line, path, 1)
        except DataError:
            return False  # the QA loader reports it with its line number
        # A passage may name the question it answers; QA rows have an answer field beside theirs.
        return isinstance(first, dict) and not {"question", "answer"} <= first.keys() and any(k in first for k in TEXT_KEYS)
    return False


def read_passage_jsonl(path: Path, report: LoadReport, on_bad_row: Literal["error", "skip"] = "error",
                       language: str | None = None) -> list[Passage]:
    """The file's passages; a line without text, or whose `id` repeats an earlier one, is a bad row.

    An `id` names one passage. A `document_id` may come back on later lines: with the same text (CARES
    repeats 308 of its 648 reports) the line is skipped and counted; with other text it gets `~2`, `~3`,
    in order. A line with neither is `<file stem>:<line>`. `language` overrides the lines' own."""
    report.loader = "passages"
    passages: list[Passage] = []
    ids: dict[str, int] = {}  # id -> first line
    documents: dict[str, dict[str, int]] = {}  # document_id -> {text: first line}
    for line, row in jsonl_objects(path, SourceConfig(loader="jsonl", path=str(path), on_bad_row=on_bad_row), report):
        text = next((row[k] for k in TEXT_KEYS if isinstance(row.get(k), str)), None)
        if text is None:
            report.reject(DataError(path, f"no text field (one of {', '.join(TEXT_KEYS)})", line=line), on_bad_row)
            continue
        pid = _text_id(row.get("id"))
        if not pid and (doc := _text_id(row.get("document_id"))):
            texts = documents.setdefault(doc, {})
            if text in texts:
                report.skipped.append({"file": str(path), "row": line, "reason": f"repeats document {doc!r} of line {texts[text]} word for word"})
                continue
            texts[text] = line
            pid = doc if len(texts) == 1 else f"{doc}~{len(texts)}"
        pid = pid or f"{path.stem}:{line}"
        if not text.strip():
            report.reject(DataError(path, f"passage {pid!r} has empty text", line=line), on_bad_row)
        elif pid in ids:
            report.reject(DataError(path, f"duplicate id {pid!r} (first on line {ids[pid]})", line=line), on_bad_row)
        else:
            ids[pid] = line
            passages.append(Passage(
                id=pid, text=text.strip(), title=next((str(row[k]) for k in TITLE_KEYS if row.get(k)), ""),
                url=str(row.get("url") or ""), source=str(row.get("source") or ""),
                lang=language or next((str(row[k]) for k in LANG_KEYS if row.get(k)), "en"),
                question=str(row.get("question") or "") if isinstance(row.get("question"), str) else "",
            ))
    return passages


def _text_id(value) -> str:
    # pandas exports write integer ids as floats (4433836.0)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value).strip()
