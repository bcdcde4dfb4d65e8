"""The one record schema for question-answer examples, and its bridge to `datasets`.

Every loader yields `QARecord`s; every later stage (training, alignment, evaluation,
retrieval) reads them back from a `datasets.Dataset` whose columns are `QA_COLUMNS`.
The same record carries an open question (question, answer), a multiple-choice item
(plus `options` and `answer_index`, with `answer` the right option's text), a preference
pair (plus `rejected`, with `answer` the chosen one) and a plain-text document for continued
pre-training (no question, the text as `answer`).
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
    category: str = ""  # exam category or subject (HEAD-QA "medicine", MedMCQA "Anatomy"); results are broken down by it
    context: str = ""  # passage the question is asked about (PubMedQA abstracts), shown before the question
    options: tuple[str, ...] = ()  # multiple choice: the options in exam order
    answer_index: int | None = None  # multiple choice: index of the right option in `options`
    rejected: str | None = None  # preference pair: the worse answer (`answer` is the chosen one)

    @property
    def answered(self) -> bool:
        return bool(self.answer and self.answer.strip())


    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)


QA_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(QARecord))
TEXT_FIELDS: tuple[str, ...] = tuple(n for n in QA_COLUMNS if n not in ("options", "answer_index"))  # one column each in a table

_FEATURES = datasets.Features(
    {name: datasets.Value("string") for name in QA_COLUMNS}
    | {"options": datasets.Sequence(datasets.Value("string")), "answer_index": datasets.Value("int64")}
)


def to_dataset(records: list[QARecord]) -> datasets.Dataset:
    """Records as an in-memory Arrow dataset with the schema's columns."""
    columns = {name: [getattr(r, name) for r in records] for name in QA_COLUMNS}
    columns["options"] = [list(o) for o in columns["options"]]
    return datasets.Dataset.from_dict(columns, features=_FEATURES)


def from_dataset(ds: datasets.Dataset) -> list[QARecord]:
    return [QARecord(**{k: row[k] for k in QA_COLUMNS} | {"options": tuple(row["options"])}) for row in ds]
