"""Plain text for continued pre-training and replay: `loader: text`.

A JSON Lines file (one document per line, its text in the column `fields.text`, default `text`;
the SpanishMedicaLLM re-exports in es_clinical_text use `raw_text`), a .txt file (one document), or
a folder of them. Each document becomes a record with no question and the text as its answer,
which only `train.objective: pretrain` trains on. `focus` groups documents for the split: the
column `fields.focus` when given (e.g. `document_id`, so that the sentences of one case stay in
one split), else each document is a group of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from medtune.data.loaders import register_loader
from medtune.data.report import DataError, LoadReport
from medtune.data.tabular import jsonl_objects, read_text
from medtune.recipe import SourceConfig
from medtune.records import QARecord

_SUFFIXES = (".jsonl", ".txt")


@register_loader("text")
def load_text(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    files = sorted(f for f in path.rglob("*") if f.suffix in _SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(path, f"no {' or '.join(_SUFFIXES)} files in this folder")
    for file in files:
        if file.suffix == ".txt":
            report.files_read += 1
            report.rows_seen += 1
            if text := read_text(file).strip():
                yield _record(text, file.stem, file.stem, cfg)
            else:
                report.reject(DataError(file, "empty text file"), cfg.on_bad_row)
        elif file.suffix == ".jsonl":
            yield from _jsonl(file, cfg, report)
        else:
            raise DataError(file, f"the text loader reads {', '.join(_SUFFIXES)} files")


def _jsonl(file: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    column, group = cfg.fields.get("text", "text"), cfg.fields.get("focus")
    for line, row in jsonl_objects(file, cfg, report):
        text = row.get(column)
        if not isinstance(text, str) or not text.strip():
            report.reject(DataError(file, "no text" if text is None else "empty or non-string text", line=line, column=column), cfg.on_bad_row)
            continue
        doc = f"{file.stem}:{line}"
        yield _record(text.strip(), doc, f"{file.stem}:{row.get(group, '')}" if group else doc, cfg)


def _record(text: str, doc_id: str, focus: str, cfg: SourceConfig) -> QARecord:
    return QARecord(question="", answer=text, id=doc_id, source=doc_id.split(":")[0], focus=focus, language=cfg.language)
