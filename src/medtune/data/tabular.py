"""CSV, JSON (a list of objects), JSONL and Parquet files, with a mapping from record fields to columns.

`SourceConfig.fields` maps a record field to the file's column, e.g. `{question: Prompt,
answer: Completion}`; unmapped fields read the column of the same name. `question` and
`answer` must exist, as must every column named explicitly: a missing one is a wrong
mapping, not a bad row, so it is an error even with `on_bad_row: skip`. Other columns are
optional: without an `id` the record gets `<file stem>:<line or row>`, without a `source`
the file stem, without a `language` the source's language.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from medtune.data.loaders import register_loader
from medtune.data.report import DataError, LoadReport
from medtune.recipe import SourceConfig
from medtune.records import TEXT_FIELDS, QARecord


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped; Windows line ends, also inside quoted CSV fields, read
    as "\\n"); other encodings fail naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as exc:
        data, start = exc.object, exc.start  # the bytes after any BOM, which the offsets count from
        line = data.count(b"\n", 0, start) + 1
        column = start - data.rfind(b"\n", 0, start)
        raise DataError(
            path, f"not UTF-8: byte 0x{data[start]:02x} at column {column}; re-save the file as UTF-8", line=line
        ) from None


def parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """`text` parsed as JSON: a JSON Lines `line`, or a whole file (line None). Whatever json.loads
    rejects is a DataError naming the file and line, which loaders raise or count as a bad row."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", line=exc.lineno if line is None else line) from None
    except ValueError as exc:  # an integer over Python's 4,300-digit limit; json does not say where
        raise DataError(path, f"unreadable JSON: {exc}", line=line) from None
    except RecursionError:  # arrays or objects nested deeper than Python's recursion limit (about 1,000)
        raise DataError(path, "malformed JSON: nested too deeply", line=line) from None


class _Mapper:
    """Turns one row (a mapping of column -> value) into a record, or says what is wrong."""

    def __init__(self, path: Path, cfg: SourceConfig) -> None:
        unknown = sorted(set(cfg.fields) - set(TEXT_FIELDS))
        if unknown:
            raise DataError(path, f"`fields` maps unknown record field(s) {unknown}; they are {list(TEXT_FIELDS)}")
        self.path, self.cfg = path, cfg
        self.columns = {name: cfg.fields.get(name, name) for name in TEXT_FIELDS}
        self.required = {n: c for n, c in self.columns.items() if n in cfg.fields or n in ("question", "answer")}

    def check_columns(self, available: Collection[str], *, line: int | None = None, row: int | None = None) -> None:
        for name, column in self.required.items():
            if column not in available:
                raise DataError(
                    self.path,
                    f"column {column!r} (for record field {name!r}) not found; available columns: {list(available)}",
                    column=column,
                    line=line,
                    row=row,
                )

    def record(
        self, item: dict[str, Any], report: LoadReport, *, line: int | None = None, row: int | None = None
    ) -> QARecord | None:
        """The item's record; None when the item is bad and the source skips bad rows."""
        self.check_columns(item.keys(), line=line, row=row)
        try:
            values = {name: self._text(item.get(column), column, line, row) for name, column in self.columns.items()}
            if not values["question"]:
                raise DataError(self.path, "empty question", column=self.columns["question"], line=line, row=row)
        except DataError as err:
            report.reject(err, self.cfg.on_bad_row)
            return None
        return QARecord(
            question=values["question"],
            answer=values["answer"] or None,  # kept and counted as an empty answer
            id=values["id"] or f"{self.path.stem}:{line or row}",
            source=values["source"] or self.path.stem,
            url=values["url"],
            focus=values["focus"],
            qtype=values["qtype"],
            language=values["language"] or self.cfg.language,
            category=values["category"],
            context=values["context"],
            rejected=values["rejected"] or None,
        )

    def _text(self, value: Any, column: str, line: int | None, row: int | None) -> str:
        if isinstance(value, dict | list):
            kind = type(value).__name__
            raise DataError(self.path, f"expected text, got a JSON {kind}", column=column, line=line, row=row)
        return "" if value is None else str(value).strip()


@register_loader("csv")
def load_csv(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    report.files_read += 1
    mapper = _Mapper(path, cfg)
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    header = reader.fieldnames or []
    mapper.check_columns(header, line=1)
    end = 1  # quoted fields may span lines: a row starts after the line where the last one ended
    try:
        for row in reader:
            line, end = end + 1, reader.line_num
            report.rows_seen += 1
            # DictReader puts extra fields under the key None and fills missing ones with None.
            if None in row or None in row.values():
                err = DataError(path, f"row does not have the header's {len(header)} fields", line=line)
                report.reject(err, cfg.on_bad_row)
                continue
            if (record := mapper.record(row, report, line=line)) is not None:
                yield record
    except csv.Error as exc:  # e.g. a NUL byte: the rest of the file cannot be trusted
        raise DataError(path, f"malformed CSV: {exc}", line=reader.line_num) from None


def json_objects(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[tuple[int, dict]]:
    """(row number, object) per item of a JSON list; an item that is not an object is a bad row."""
    report.files_read += 1
    items = parse_json(read_text(path), path)
    if not isinstance(items, list):
        raise DataError(path, f"expected a JSON list of objects, got a {type(items).__name__}")
    for row, item in enumerate(items, 1):
        report.rows_seen += 1
        if isinstance(item, dict):
            yield row, item
        else:
            report.reject(DataError(path, f"expected an object, got a JSON {type(item).__name__}", row=row), cfg.on_bad_row)


@register_loader("json")
def load_json(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    mapper = _Mapper(path, cfg)
    for row, item in json_objects(path, cfg, report):
        if (record := mapper.record(item, report, row=row)) is not None:
            yield record


def json_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of each non-blank line of a JSON Lines file, read as `read_text` reads it. Split on
    "\n" only: str.splitlines() also splits on U+2028, which JSON allows unescaped in strings."""
    return [(line, text) for line, text in enumerate(read_text(path).split("\n"), 1) if text.strip()]


def jsonl_objects(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[tuple[int, dict]]:
    """(line number, object) per JSON Lines line; a malformed line or a non-object is a bad row."""
    report.files_read += 1
    for line, text in json_lines(path):
        report.rows_seen += 1
        try:
            item = parse_json(text, path, line)
        except DataError as err:
            report.reject(err, cfg.on_bad_row)
            continue
        if isinstance(item, dict):
            yield line, item
        else:
            report.reject(DataError(path, f"expected an object, got a JSON {type(item).__name__}", line=line), cfg.on_bad_row)


@register_loader("jsonl")
def load_jsonl(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    mapper = _Mapper(path, cfg)
    for line, item in jsonl_objects(path, cfg, report):
        if (record := mapper.record(item, report, line=line)) is not None:
            yield record


def parquet_objects(path: Path, report: LoadReport) -> Iterator[tuple[int, dict]]:
    """(row number, row) per row of a Parquet file (the Hugging Face hub's layout), read in batches so
    that a large file is never held whole; nested columns come back as lists and dicts."""
    import pyarrow as pa  # imported here: only Parquet files need it
    import pyarrow.parquet as pq

    report.files_read += 1
    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for item in batch.to_pylist():
                row += 1
                report.rows_seen += 1
                yield row, item
    except (pa.ArrowException, OSError) as exc:  # not Parquet, or a damaged page: the rest cannot be read
        raise DataError(path, f"unreadable Parquet: {exc}", row=row + 1 if row else None) from None


@register_loader("parquet")
def load_parquet(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    mapper = _Mapper(path, cfg)
    for row, item in parquet_objects(path, report):
        if (record := mapper.record(item, report, row=row)) is not None:
            yield record
