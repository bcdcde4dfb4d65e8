"""Chat / clinical-case presets: ai_medical_chatbot, chatdoctor, medtext (over the tabular loaders)."""

import csv
import json
from pathlib import Path

import pytest

from medtune.data import LOADERS, DataError, load_source
from medtune.recipe import SourceConfig
from medtune.records import QARecord

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).parent / "fixtures"
CHATBOT_SAMPLE = SHARED_DATA / "ai_medical_chatbot" / "sample.jsonl"
CHATDOCTOR_5K = SHARED_DATA / "chatdoctor" / "chatdoctor5k.json"
INSTRUCTION = "If you are a doctor, please answer the medical questions based on the patient's description."


def load(path: Path, loader: str, **kw):
    return load_source(SourceConfig(loader=loader, path=str(path), **kw))


def counts(report) -> tuple[int, int, int, int, int]:
    return report.rows_seen, report.records, report.answered, report.empty_answers, len(report.skipped)


CHATBOT_ROWS = [
    {"Description": "Q. What causes my headache?", "Patient": "Hi doctor, I have a headache.", "Doctor": "Hi. Rest."},
    {"Description": "Q. Is a fever of 39 C serious?", "Patient": "Hello, my son has a fever, 39 C.", "Doctor": ""},
    {"Description": "Q. What causes my headache?", "Patient": "Hi, headaches daily.", "Doctor": "Hi. See a neurologist."},
]


def test_registered_names() -> None:
    assert {"ai_medical_chatbot", "chatdoctor", "medtext"} <= set(LOADERS)


def test_ai_medical_chatbot_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in CHATBOT_ROWS))
    records, report = load(path, "ai_medical_chatbot")
    assert records == [
        QARecord("Hi doctor, I have a headache.", "Hi. Rest.", id="dialogues:1", source="ai-medical-chatbot",
                 focus="Q. What causes my headache?"),
        QARecord("Hello, my son has a fever, 39 C.", None, id="dialogues:2", source="ai-medical-chatbot",
                 focus="Q. Is a fever of 39 C serious?"),
        QARecord("Hi, headaches daily.", "Hi. See a neurologist.", id="dialogues:3", source="ai-medical-chatbot",
                 focus="Q. What causes my headache?"),
    ]
    assert counts(report) == (3, 3, 2, 1, 0)
    assert report.loader == "ai_medical_chatbot" and report.files_read == 1


def test_ai_medical_chatbot_csv_by_suffix_and_language(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Description", "Patient", "Doctor"])
        writer.writeheader()
        writer.writerows(CHATBOT_ROWS)
    records, report = load(path, "ai_medical_chatbot", language="es")
    assert [(r.question, r.answer, r.focus, r.id) for r in records] == [
        (r["Patient"], r["Doctor"] or None, r["Description"], f"dialogues:{line}")
        for r, line in zip(CHATBOT_ROWS, (2, 3, 4), strict=True)
    ]
    assert {r.source for r in records} == {"ai-medical-chatbot"} and {r.language for r in records} == {"es"}
    assert counts(report) == (3, 3, 2, 1, 0)


def test_ai_medical_chatbot_bad_lines_error_or_skip(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.jsonl"
    lines = [json.dumps(CHATBOT_ROWS[0]), '{"Patient": "cut off', json.dumps(CHATBOT_ROWS[1] | {"Patient": " "}),
             json.dumps(CHATBOT_ROWS[2])]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load(path, "ai_medical_chatbot")
    assert str(info.value).startswith(f"{path}, line 2: malformed JSON")
    records, report = load(path, "ai_medical_chatbot", on_bad_row="skip")
    assert [r.id for r in records] == ["dialogues:1", "dialogues:4"]
    assert counts(report) == (4, 2, 2, 0, 2)
    assert [(s["row"], s["reason"]) for s in report.skipped] == [
        (2, "malformed JSON: Unterminated string starting at (column 13)"),
        (3, "empty question"),
    ]


def test_chatdoctor_json_list(tmp_path: Path) -> None:
    path = tmp_path / "chatdoctor5k.json"
    items = [
        {"instruction": INSTRUCTION, "input": "Doctor, I have panic attacks.", "output": "It may be panic disorder."},
        {"instruction": INSTRUCTION, "input": "Doctor, my voice is hoarse.", "output": "  "},
        {"instruction": INSTRUCTION, "input": "Doctor, my knee hurts.", "output": "Let us take an X-ray."},
    ]
    path.write_text(json.dumps(items, indent=6))
    records, report = load(path, "chatdoctor")
    assert records[0] == QARecord("Doctor, I have panic attacks.", "It may be panic disorder.",
                                  id="chatdoctor5k:1", source="chatdoctor")
    assert [(r.question, r.answer, r.id) for r in records[1:]] == [
        ("Doctor, my voice is hoarse.", None, "chatdoctor5k:2"),
        ("Doctor, my knee hurts.", "Let us take an X-ray.", "chatdoctor5k:3"),
    ]
    assert not any(INSTRUCTION in r.question for r in records)  # the instruction is the recipe's prompt.system
    assert counts(report) == (3, 3, 2, 1, 0)


def test_chatdoctor_bad_item_names_row(tmp_path: Path) -> None:
    path = tmp_path / "cd.json"
    path.write_text(json.dumps([{"input": "Q1", "output": "A1"}, {"input": ["Q2"], "output": "A2"}, "text"]))
    with pytest.raises(DataError) as info:
        load(path, "chatdoctor")
    assert str(info.value) == f"{path}, row 2, column 'input': expected text, got a JSON list"
    records, report = load(path, "chatdoctor", on_bad_row="skip")
    assert [r.question for r in records] == ["Q1"]
    assert counts(report) == (3, 1, 1, 0, 2) and [s["row"] for s in report.skipped] == [2, 3]


def test_ai_medical_chatbot_hub_parquet(tmp_path: Path) -> None:
    """The hub's dialogues.parquet: the three string columns (nulls where a cell is missing) and pandas' index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = CHATBOT_ROWS + [{"Description": None, "Patient": "Hi doctor, my knee hurts.", "Doctor": None},
                           {"Description": "Q. Blank?", "Patient": None, "Doctor": "Hi."}]
    table = pa.table({k: [r[k] for r in rows] for k in ("Description", "Patient", "Doctor")})
    path = tmp_path / "dialogues.parquet"
    pq.write_table(table.append_column("__index_level_0__", pa.array(range(len(rows)))), path)
    with pytest.raises(DataError, match=r"dialogues\.parquet, row 5, column 'Patient': empty question"):
        load(path, "ai_medical_chatbot")
    records, report = load(path, "ai_medical_chatbot", on_bad_row="skip")
    assert [(r.question, r.answer, r.focus, r.id, r.source) for r in records] == [
        ("Hi doctor, I have a headache.", "Hi. Rest.", "Q. What causes my headache?", "dialogues:1", "ai-medical-chatbot"),
        ("Hello, my son has a fever, 39 C.", None, "Q. Is a fever of 39 C serious?", "dialogues:2", "ai-medical-chatbot"),
        ("Hi, headaches daily.", "Hi. See a neurologist.", "Q. What causes my headache?", "dialogues:3", "ai-medical-chatbot"),
        ("Hi doctor, my knee hurts.", None, "", "dialogues:4", "ai-medical-chatbot"),
    ]
    assert counts(report) == (5, 4, 2, 2, 1)


def test_chatdoctor_icliniq_reads_the_real_doctors_answer() -> None:
    path = FIXTURES / "chatdoctor" / "iCliniq.json"
    with pytest.raises(DataError, match=r"iCliniq\.json, row 4, column 'input': empty question"):
        load(path, "chatdoctor")
    records, report = load(path, "chatdoctor", on_bad_row="skip")
    assert counts(report) == (5, 4, 3, 1, 1)
    assert [r.id for r in records] == ["iCliniq:1", "iCliniq:2", "iCliniq:3", "iCliniq:5"]
    assert records[0].answer.startswith("Hi. Based on your description this is most likely frontal and maxillary sinusitis")
    assert records[1].question == "Hello doctor,\nMy 4-year-old son has had a fever of 102 F since yesterday and a rash on his trunk today. What should I do?"
    assert records[2].answer is None  # an empty answer_icliniq is kept and counted, not filled from a model's answer
    assert not any("Chat Doctor." in (r.answer or "") for r in records)  # answer_chatdoctor is not read
    assert {r.source for r in records} == {"chatdoctor"}


def test_chatdoctor_icliniq_hub_parquet(tmp_path: Path) -> None:
    """lavita/ChatDoctor-iCliniq: the same columns as Parquet, told apart by its schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = json.loads((FIXTURES / "chatdoctor" / "iCliniq.json").read_text())
    pq.write_table(pa.Table.from_pylist(items), tmp_path / "train.parquet")
    records, report = load(tmp_path / "train.parquet", "chatdoctor", on_bad_row="skip")
    assert counts(report) == (5, 4, 3, 1, 1)
    assert [r.answer for r in records] == [items[i]["answer_icliniq"].strip() or None for i in (0, 1, 2, 4)]


def test_chatdoctor_healthcaremagic() -> None:
    path = FIXTURES / "chatdoctor" / "HealthCareMagic-100k.json"
    records, report = load(path, "chatdoctor", on_bad_row="skip")
    assert counts(report) == (4, 3, 2, 1, 1)
    assert report.skipped == [{"file": str(path), "row": 4, "reason": "empty question"}]
    assert records[0].question.startswith("I woke up this morning feeling the whole room is spinning")
    assert records[0].answer.endswith("Best wishes, Chat Doctor.")
    assert (records[2].id, records[2].answer) == ("HealthCareMagic-100k:3", None)  # "output": null
    assert not any(INSTRUCTION in r.question for r in records)


def test_medtext_fixture_bom_crlf_and_quotes() -> None:
    """BI55/MedText's medtext_2.csv layout, saved on Windows: BOM, CRLF, multi-line and quoted cells."""
    path = FIXTURES / "medtext" / "medtext_2.csv"
    records, report = load(path, "medtext")
    assert counts(report) == (4, 4, 3, 1, 0)
    assert [r.id for r in records] == ["medtext_2:2", "medtext_2:4", "medtext_2:5", "medtext_2:6"]
    assert records[0].question == ("A 60-year-old man with a 40 pack-year smoking history presents with hemoptysis and a "
                                   "10 kg weight loss over 3 months.\nChest X-ray shows a central hilar mass. "
                                   "What is the most likely diagnosis?")
    assert records[1].question.startswith('A 25-year-old woman presents with a "butterfly" rash')
    assert records[2].answer.startswith("Croup: a single dose of oral dexamethasone")
    assert records[3].answer is None and {r.source for r in records} == {"medtext"}


MEDTEXT_CSV = (
    "Prompt,Completion\n"
    '"A 45-year-old man, a smoker, presents with chest pain\nradiating to the left arm. What is the diagnosis?",'
    '"Likely acute coronary syndrome; obtain an ECG, troponin, and give aspirin.\n\nRefer to ""cardiology"" urgently."\n'
    "A child has a barking cough. What is it?,Croup.\n"
    '"A woman, 30, has a rash.",\n'
)


def test_medtext_csv_multiline_quoted_cells(tmp_path: Path) -> None:
    path = tmp_path / "medtext_1.csv"
    path.write_text(MEDTEXT_CSV)
    records, report = load(path, "medtext")
    assert records[0] == QARecord(
        "A 45-year-old man, a smoker, presents with chest pain\nradiating to the left arm. What is the diagnosis?",
        'Likely acute coronary syndrome; obtain an ECG, troponin, and give aspirin.\n\nRefer to "cardiology" urgently.',
        id="medtext_1:2",
        source="medtext",
    )
    # Each id names the line its row starts on, past the multi-line cells of the first row.
    assert [(r.question, r.answer, r.id) for r in records[1:]] == [
        ("A child has a barking cough. What is it?", "Croup.", "medtext_1:6"),
        ("A woman, 30, has a rash.", None, "medtext_1:7"),
    ]
    assert counts(report) == (3, 3, 2, 1, 0)


@pytest.mark.parametrize(
    ("loader", "name", "text", "column", "field"),
    [
        ("medtext", "m.csv", "Prompt,Answer\nq,a\n", "Completion", "answer"),
        ("chatdoctor", "c.json", json.dumps([{"instruction": "i", "input": "q", "response": "a"}]), "output", "answer"),
        ("ai_medical_chatbot", "a.jsonl", json.dumps({"Patient": "q", "Doctor": "a"}) + "\n", "Description", "focus"),
    ],
)
def test_missing_column_names_file_and_column(
    tmp_path: Path, loader: str, name: str, text: str, column: str, field: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load(path, loader, on_bad_row="skip")  # a wrong mapping is never a skipped row
    msg = str(info.value)
    assert msg.startswith(str(path)) and f"column {column!r} (for record field {field!r}) not found" in msg


def test_fields_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "medtext.csv"
    path.write_text("Prompt,Response,Topic,Origin\nWhat is gout?,A form of arthritis.,gout,site-a\n")
    records, _ = load(path, "medtext", fields={"answer": "Response", "focus": "Topic", "source": "Origin"})
    assert records == [QARecord("What is gout?", "A form of arthritis.", id="medtext:2", source="site-a", focus="gout")]
    # An empty column drops a default: a copy without Description loads with no focus.
    path = tmp_path / "nodesc.jsonl"
    path.write_text(json.dumps({"Patient": "q", "Doctor": "a"}) + "\n")
    records, _ = load(path, "ai_medical_chatbot", fields={"focus": ""})
    assert records == [QARecord("q", "a", id="nodesc:1", source="ai-medical-chatbot")]


def test_unsupported_suffix_and_directory(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"dialogues\.xlsx: the 'ai_medical_chatbot' loader reads \.csv, \.json, \.jsonl, \.parquet"):
        load(path, "ai_medical_chatbot")
    with pytest.raises(DataError, match="is a directory"):
        load(tmp_path, "medtext")


@pytest.mark.skipif(not CHATBOT_SAMPLE.exists(), reason="shared ai_medical_chatbot sample not present")
def test_real_ai_medical_chatbot_sample() -> None:
    records, report = load(CHATBOT_SAMPLE, "ai_medical_chatbot")
    assert counts(report) == (670, 670, 670, 0, 0)
    assert {r.source for r in records} == {"ai-medical-chatbot"} and {r.language for r in records} == {"en"}
    assert len({r.focus for r in records}) == 670 and all(r.focus.startswith("Q. ") for r in records)
    assert records[0].focus == "Q. What does abutment of the nerve root mean?"
    assert records[0].question.startswith("Hi doctor,I am just wondering what is abutting")
    assert records[-1].id == "sample:670"


@pytest.mark.skipif(not CHATDOCTOR_5K.exists(), reason="shared chatdoctor5k.json not present")
def test_real_chatdoctor5k() -> None:
    records, report = load(CHATDOCTOR_5K, "chatdoctor")
    assert counts(report) == (5452, 5452, 5452, 0, 0)
    assert {r.source for r in records} == {"chatdoctor"}
    assert records[0].question == "Doctor, I have been experiencing sudden and frequent panic attacks. I don't know what to do."
    assert records[0].answer.startswith("Well, based on what you're telling me, it sounds like you may be suffering")
    assert not any(INSTRUCTION in r.question for r in records)
    assert (records[0].id, records[-1].id) == ("chatdoctor5k:1", "chatdoctor5k:5452")
