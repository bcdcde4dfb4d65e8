"""What a loader read, produced and rejected, and the error it raises for bad input."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from medtune.records import QARecord


class DataError(ValueError):
    """Input that cannot be read as QA records; the message says where: file, line or row, column.

    `line` is a line in a text file (CSV, JSONL, XML) that an editor can jump to; `row` is the
    position of an item in a JSON list (1-based).
    """

    def __init__(
        self,
        file: str | os.PathLike,
        reason: str,
        *,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file, self.reason, self.line, self.row, self.column = str(file), reason, line, row, column
        where = self.file
        if line is not None:
            where += f", line {line}"
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {reason}")


@dataclass
class LoadReport:
    source: str  # the path the loader was given
    loader: str
    files_read: int = 0
    rows_seen: int = 0
    records: int = 0
    answered: int = 0
    empty_answers: int = 0  # kept as records with answer None, so they show up in every count
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {file, row, reason}

    def reject(self, err: DataError, on_bad_row: Literal["error", "skip"]) -> None:
        """Raise a bad row, or record it as a counted skip when the source allows skipping."""
        if on_bad_row == "error":
            raise err
        row = err.line if err.line is not None else err.row
        self.skipped.append({"file": err.file, "row": row, "reason": err.reason})

    def count(self, records: list[QARecord]) -> None:
        self.records = len(records)
        self.answered = sum(r.answered for r in records)
        self.empty_answers = self.records - self.answered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
