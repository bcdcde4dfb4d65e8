"""The one record schema for question-answer examples, and its bridge to `datasets`.

Every loader yields `QARecord`s; every later stage (training, alignment, evaluation,
retrieval) reads them back from a `datasets.Dataset` whose columns are `QA_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import datasets


@dataclass(frozen=True, slots=True)
class QARecord:
    question: str
    answer: str | None  # None when the source ships the question without its answer
    id: str = ""
    source: str = ""  # collection or dataset name, e.g. "GARD" or "chatdoctor"
    url: str = ""  # page the answer comes from, kept so that answers can cite it
    focus: str = ""  # the disease, drug or topic the question is about; split groups use it
    qtype: str = ""  # question type, e.g. "symptoms", "treatment"
    language: str = "en"

    @property
    def answered(self) -> bool:
        return bool(self.answer and self.answer.strip())


QA_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(QARecord))

_FEATURES = datasets.Features({name: datasets.Value("string") for name in QA_COLUMNS})


def to_dataset(records: list[QARecord]) -> datasets.Dataset:
    """Records as an in-memory Arrow dataset with the schema's columns (all strings)."""
    columns = {name: [getattr(r, name) for r in records] for name in QA_COLUMNS}
    return datasets.Dataset.from_dict(columns, features=_FEATURES)


def from_dataset(ds: datasets.Dataset) -> list[QARecord]:
    return [QARecord(**{k: row[k] for k in QA_COLUMNS}) for row in ds]
