"""Named presets for patient/doctor chat and clinical-case datasets, over the tabular loaders.

Each preset is the CSV / JSON / JSONL loader of `medtune.data.tabular` with the dataset's
real column names as default `fields` and its name as the record `source`:

  * `ai_medical_chatbot` (ruslanmv/ai-medical-chatbot): the hub's `dialogues.parquet`, or JSONL /
    CSV, `{Description, Patient, Doctor}`; question = Patient, answer = Doctor, focus =
    Description (the short question title, so that the split keeps repeats of one question in
    one part).
  * `chatdoctor` (ChatDoctor): GenMedGPT-5k and HealthCareMagic-100k are JSON lists `{instruction,
    input, output}`; question = input, answer = output. `instruction` is one constant
    system-style sentence and is not read: the recipe's `prompt.system` plays that part.
    iCliniq is a JSON list `{input, answer_icliniq, answer_chatgpt, answer_chatdoctor}`, told
    apart by its first record: answer = answer_icliniq, the real doctor's (the other two are
    model answers and are not read).
  * `medtext` (BI55/MedText): CSV `{Prompt, Completion}`; question = Prompt, answer = Completion.

The format follows the suffix (.csv, .json, .jsonl, .parquet), whatever the dataset's usual
one, so a re-export or the hub's Parquet copy loads the same way. `fields` in the recipe override
the defaults column by column; an empty string drops a default (e.g. `{focus: ""}` when a
copy has no Description column). Bad input is handled exactly as by the tabular loaders:
errors name the file and line or row, or rows are counted as skipped with `on_bad_row: skip`.
The record `source` is the preset's name unless `fields` maps `source` or the file has a
`source` column; the language is the source's `language`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from medtune.data.loaders import Loader, register_loader
from medtune.data.report import DataError, LoadReport
from medtune.data.tabular import load_csv, load_json, load_jsonl, load_parquet
from medtune.recipe import SourceConfig
from medtune.records import QARecord

_BY_SUFFIX: dict[str, Loader] = {".csv": load_csv, ".json": load_json, ".jsonl": load_jsonl, ".parquet": load_parquet}

AI_MEDICAL_CHATBOT_FIELDS = {"question": "Patient", "answer": "Doctor", "focus": "Description"}
CHATDOCTOR_FIELDS = {"question": "input", "answer": "output"}
ICLINIQ_FIELDS = {"question": "input", "answer": "answer_icliniq"}
MEDTEXT_FIELDS = {"question": "Prompt", "answer": "Completion"}


def preset_config(cfg: SourceConfig, defaults: dict[str, str]) -> SourceConfig:
    """`cfg` with the preset's default columns under its own `fields`; "" drops a default."""
    fields = {name: column for name, column in {**defaults, **cfg.fields}.items() if column}
    return cfg.model_copy(update={"fields": fields})


def load_preset(
    path: Path, cfg: SourceConfig, report: LoadReport, *, source: str, defaults: dict[str, str]
) -> Iterator[QARecord]:
    """Records of `path` read by the tabular loader for its suffix, with the preset's columns."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, f"is a directory; the {cfg.loader!r} loader reads one file")
    try:
        loader = _BY_SUFFIX[path.suffix.lower()]
    except KeyError:
        raise DataError(
            path,
            f"the {cfg.loader!r} loader reads {', '.join(_BY_SUFFIX)} files, not {path.suffix or 'no suffix'!r}",
        ) from None
    # The tabular loaders name a record after its file stem when no `source` column is read.
    keep_source = "source" in cfg.fields
    for record in loader(path, preset_config(cfg, defaults), report):
        if not keep_source and record.source == path.stem:
            record = replace(record, source=source)
        yield record


@register_loader("ai_medical_chatbot")
def load_ai_medical_chatbot(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    return load_preset(path, cfg, report, source="ai-medical-chatbot", defaults=AI_MEDICAL_CHATBOT_FIELDS)


@register_loader("chatdoctor")
def load_chatdoctor(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    columns = _first_columns(path)
    icliniq = "answer_icliniq" in columns and "output" not in columns
    return load_preset(path, cfg, report, source="chatdoctor", defaults=ICLINIQ_FIELDS if icliniq else CHATDOCTOR_FIELDS)


def _first_columns(path: Path) -> set[str]:
    """The columns of a Parquet file, or of the first object of a JSON list / JSON Lines file (read
    from its first 64 KiB); empty when there is none to read there: the loader then says what is wrong."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return set(pq.read_schema(path).names)
        except (pa.ArrowException, OSError):
            return set()
    if suffix not in (".json", ".jsonl") or not path.is_file():
        return set()
    with path.open("rb") as f:
        head = f.read(1 << 16).decode("utf-8-sig", errors="ignore")
    start = head.find("{")
    try:
        item = json.JSONDecoder().raw_decode(head, start)[0] if start >= 0 else {}
    except (ValueError, RecursionError):  # malformed, a 5,000-digit number, nesting too deep
        return set()
    return set(item) if isinstance(item, dict) else set()


@register_loader("medtext")
def load_medtext(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    return load_preset(path, cfg, report, source="medtext", defaults=MEDTEXT_FIELDS)
