"""Named presets for patient/doctor chat and clinical-case datasets, over the tabular loaders.

Each preset is the CSV / JSON / JSONL loader of `medtune.data.tabular` with the dataset's
real column names as default `fields` and its name as the record `source`:

  * `ai_medical_chatbot` (ruslanmv/ai-medical-chatbot): JSONL or CSV `{Description, Patient,
    Doctor}`; question = Patient, answer = Doctor, focus = Description (the short question
    title, so that the split keeps repeats of one question in one part).
  * `chatdoctor` (ChatDoctor GenMedGPT-5k; the HealthCareMagic / iCliniq files share the
    layout): a JSON list `{instruction, input, output}`; question = input, answer = output.
    `instruction` is one constant system-style sentence and is not read: the recipe's
    `prompt.system` plays that part.
  * `medtext` (BI55/MedText): CSV `{Prompt, Completion}`; question = Prompt, answer = Completion.

The format follows the suffix (.csv, .json, .jsonl), whatever the dataset's usual one, so a
re-export in another of the three formats loads the same way. `fields` in the recipe override
the defaults column by column; an empty string drops a default (e.g. `{focus: ""}` when a
copy has no Description column). Bad input is handled exactly as by the tabular loaders:
errors name the file and line or row, or rows are counted as skipped with `on_bad_row: skip`.
The record `source` is the preset's name unless `fields` maps `source` or the file has a
`source` column; the language is the source's `language`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from medtune.data.loaders import Loader, register_loader
from medtune.data.report import DataError, LoadReport
from medtune.data.tabular import load_csv, load_json, load_jsonl
from medtune.recipe import SourceConfig
from medtune.records import QARecord

_BY_SUFFIX: dict[str, Loader] = {".csv": load_csv, ".json": load_json, ".jsonl": load_jsonl}

AI_MEDICAL_CHATBOT_FIELDS = {"question": "Patient", "answer": "Doctor", "focus": "Description"}
CHATDOCTOR_FIELDS = {"question": "input", "answer": "output"}
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
            f"the {cfg.loader!r} loader reads {', '.join(_BY_SUFFIX)} files, not {path.suffix or 'no suffix'!r}; "
            "convert it first, e.g. pandas.read_parquet(path).to_json(out, orient='records', lines=True)",
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
    return load_preset(path, cfg, report, source="chatdoctor", defaults=CHATDOCTOR_FIELDS)


@register_loader("medtext")
def load_medtext(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    return load_preset(path, cfg, report, source="medtext", defaults=MEDTEXT_FIELDS)
