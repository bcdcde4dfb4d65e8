"""CSV / JSON / JSONL loaders, column mapping, error messages, and the loader registry."""

import json
import re
from pathlib import Path

import pytest

from medtune.data import LOADERS, DataError, LoadReport, infer_loader, load_source, register_loader
from medtune.data import loaders as registry
from medtune.recipe import SourceConfig
from medtune.records import QARecord


def load(path: Path, loader: str | None = None, **kw):
    return load_source(SourceConfig(loader=loader or infer_loader(path), path=str(path), **kw))


def test_csv_with_mapping_and_empty_answer(tmp_path: Path) -> None:
    path = tmp_path / "medtext.csv"
    path.write_text('Prompt,Completion,Topic\nWhat is flu?,"A viral\ninfection.",flu\nIs it bad?,,flu\n')
    records, report = load(path, fields={"question": "Prompt", "answer": "Completion", "focus": "Topic"})
    assert records == [
        QARecord("What is flu?", "A viral\ninfection.", id="medtext:2", source="medtext", focus="flu"),
        QARecord("Is it bad?", None, id="medtext:4", source="medtext", focus="flu"),
    ]
    assert (report.rows_seen, report.records, report.answered, report.empty_answers) == (2, 2, 1, 1)


def test_json_list_identity_columns(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    rows = [{"question": "Q1", "answer": "A1", "id": 7, "source": "site", "qtype": "treatment"}, {"question": "Q2"}]
    path.write_text(json.dumps([rows[0], rows[1] | {"answer": None}]))
    records, report = load(path, language="es")
    assert records[0] == QARecord("Q1", "A1", id="7", source="site", qtype="treatment", language="es")
    assert records[1] == QARecord("Q2", None, id="qa:2", source="qa", language="es")
    assert report.to_dict()["empty_answers"] == 1


def test_jsonl_mapping(tmp_path: Path) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text('{"Patient": "Headache?", "Doctor": "Rest."}\n\n{"Patient": "Fever?", "Doctor": "Fluids."}\n')
    records, report = load(path, fields={"question": "Patient", "answer": "Doctor"})
    assert [(r.question, r.answer, r.id) for r in records] == [
        ("Headache?", "Rest.", "chat:1"),
        ("Fever?", "Fluids.", "chat:3"),
    ]
    assert report.rows_seen == 2 and report.files_read == 1


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl"])
def test_missing_column_names_file_column_and_available(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"data.{suffix}"
    row = {"Prompt": "q", "Completion": "a"}
    text = {"csv": "Prompt,Completion\nq,a\n", "json": json.dumps([row]), "jsonl": json.dumps(row) + "\n"}[suffix]
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load(path, fields={"question": "Prompt", "answer": "Answer"}, on_bad_row="skip")  # never skipped
    msg = str(info.value)
    assert str(path) in msg and "column 'Answer'" in msg and "['Prompt', 'Completion']" in msg
    assert "for record field 'answer'" in msg


def write_parquet(path: Path, columns: dict[str, list], row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_parquet_mapping_nulls_and_row_numbers(tmp_path: Path) -> None:
    # Row groups of 2: the rows are read in batches and numbered across them.
    path = write_parquet(tmp_path / "train-00000-of-00001.parquet", {
        "Prompt": ["What is flu?", "Is it bad?", None, "Fever?"],
        "Completion": ["A viral infection.", None, "orphan answer", "Rest."],
        "__index_level_0__": [0, 1, 2, 3],  # pandas' index, as in many hub files: not read
    }, row_group_size=2)
    with pytest.raises(DataError, match=r"train-00000-of-00001\.parquet, row 3, column 'Prompt': empty question"):
        load(path, fields={"question": "Prompt", "answer": "Completion"})
    records, report = load(path, fields={"question": "Prompt", "answer": "Completion"}, on_bad_row="skip")
    assert [(r.question, r.answer, r.id) for r in records] == [
        ("What is flu?", "A viral infection.", "train-00000-of-00001:1"),
        ("Is it bad?", None, "train-00000-of-00001:2"),
        ("Fever?", "Rest.", "train-00000-of-00001:4"),
    ]
    assert (report.files_read, report.rows_seen, report.answered, report.empty_answers) == (1, 4, 2, 1)
    assert report.skipped == [{"file": str(path), "row": 3, "reason": "empty question"}]


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_text("question,answer\nq,a\n")
    with pytest.raises(DataError, match=r"d\.parquet: unreadable Parquet: "):
        load(tmp_path / "d.parquet", on_bad_row="skip")


def test_unknown_record_field_in_mapping(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("q,a\nx,y\n")
    with pytest.raises(DataError, match=r"unknown record field\(s\) \['questoin'\]"):
        load(tmp_path / "d.csv", fields={"questoin": "q"})


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_non_utf8_names_file_and_line(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"latin1.{suffix}"
    body = (
        b"question,answer\nok,fine\nQu\xe9?,oui\n"
        if suffix == "csv"
        else b'{"question": "ok", "answer": "a"}\n{"question": "Qu\xe9?"}\n'
    )
    path.write_bytes(body)
    with pytest.raises(DataError, match=rf"latin1\.{suffix}, line {3 if suffix == 'csv' else 2}: not UTF-8: byte 0xe9"):
        load(path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffquestion,answer\n¿Qué es?,Nada\n".encode())
    assert load(path)[0][0].question == "¿Qué es?"


def test_bad_jsonl_line_error_or_counted_skip(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": \n[1]\n{"question": "q3"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl, line 2: malformed JSON: Expecting value"):
        load(path)
    # {"question": "q3"} lacks the answer column: a mapping error, raised even when skipping.
    with pytest.raises(DataError, match=r"d\.jsonl, line 4, column 'answer': column 'answer' .* not found"):
        load(path, on_bad_row="skip")
    path.write_text('{"question": "q1", "answer": "a1"}\n{"question": "q2", "answer": \n[1]\n')
    records, report = load(path, on_bad_row="skip")
    assert [r.question for r in records] == ["q1"] and report.rows_seen == 3
    assert [(s["row"], s["reason"].split(":")[0]) for s in report.skipped] == [
        (2, "malformed JSON"),
        (3, "expected an object, got a JSON list"),
    ]


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl"])
def test_empty_question_error_or_skip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d.{suffix}"
    rows = [{"question": "q1", "answer": "a1"}, {"question": "  ", "answer": "a2"}]
    text = {
        "csv": "question,answer\nq1,a1\n  ,a2\n",
        "json": json.dumps(rows),
        "jsonl": "\n".join(map(json.dumps, rows)),
    }[suffix]
    path.write_text(text)
    where = "row 2" if suffix == "json" else f"line {3 if suffix == 'csv' else 2}"
    with pytest.raises(DataError, match=rf"d\.{suffix}, {where}, column 'question': empty question"):
        load(path)
    records, report = load(path, on_bad_row="skip")
    assert len(records) == 1 and report.rows_seen == 2 and report.skipped[0]["reason"] == "empty question"


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("question,answer\nq1,a1\nq2,a,b\nq3\n")
    with pytest.raises(DataError, match=r"d\.csv, line 3: row does not have the header's 2 fields"):
        load(path)
    records, report = load(path, on_bad_row="skip")
    assert len(records) == 1 and [s["row"] for s in report.skipped] == [3, 4]


def test_malformed_json_file(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('[\n{"question": "q"},\n')
    with pytest.raises(DataError, match=r"d\.json, line 3: malformed JSON"):
        load(tmp_path / "d.json")
    (tmp_path / "d.json").write_text('{"question": "q"}')
    with pytest.raises(DataError, match=r"expected a JSON list of objects, got a dict"):
        load(tmp_path / "d.json")


def test_unknown_loader_lists_registered(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown loader 'xlsx'; registered loaders: ai_medical_chatbot, .*chatdoctor, csv, .*headqa, json, jsonl, medmcqa, medqa, medquad, medtext, .*parquet"):
        load_source(SourceConfig(loader="xlsx", path=str(tmp_path)))
    with pytest.raises(DataError, match="no such file or directory"):
        load_source(SourceConfig(loader="csv", path=str(tmp_path / "missing.csv")))


def test_infer_loader(tmp_path: Path) -> None:
    suffixes = ("csv", "JSON", "jsonl", "parquet")
    assert [infer_loader(tmp_path / f"x.{s}") for s in suffixes] == ["csv", "json", "jsonl", "parquet"]
    with pytest.raises(DataError, match=r"cannot infer a loader from suffix '\.xlsx'"):
        infer_loader(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="directory holds no XML files"):
        infer_loader(tmp_path)


def test_register_a_new_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "LOADERS", dict(LOADERS))

    @register_loader("lines")
    def load_lines(path: Path, cfg: SourceConfig, report: LoadReport):
        report.files_read += 1
        for line in path.read_text().splitlines():
            report.rows_seen += 1
            q, _, a = line.partition("\t")
            yield QARecord(q, a or None)

    with pytest.raises(ValueError, match="already registered"):
        register_loader("lines")(load_lines)
    (tmp_path / "d.tsv").write_text("q1\ta1\nq2\n")
    records, report = load_source(SourceConfig(loader="lines", path=str(tmp_path / "d.tsv")))
    assert len(records) == 2 and (report.answered, report.empty_answers) == (1, 1)


# Rows json.loads rejects with other errors than JSONDecodeError: Python's 4,300-digit limit on integers
# (ValueError) and nesting deeper than its recursion limit (RecursionError).
HUGE_INT = '{"question": "q", "answer": ' + "9" * 5000 + "}"
DEEP = '{"question": "q", "answer": ' + "[" * 100_000 + "]" * 100_000 + "}"
GOOD = {"question": "Is flu viral?", "answer": "Yes.",
        "prompt": "Is flu viral?", "chosen": "Yes.", "rejected": "No.", "text": "Flu is viral.",
        "options": {"A": "Yes.", "B": "No."}, "answer_idx": "A", "Patient": "Is flu viral?", "Doctor": "Yes.", "Description": "Flu"}


@pytest.mark.parametrize("bad, reason", [(HUGE_INT, "unreadable JSON: Exceeds the limit (4300 digits)"),
                                         (DEEP, "malformed JSON: nested too deeply")])
@pytest.mark.parametrize("loader", ["jsonl", "pairs", "text", "medqa", "ai_medical_chatbot"])
def test_unparsable_jsonl_line_error_or_counted_skip(tmp_path: Path, loader: str, bad: str, reason: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(f"{bad}\n{json.dumps(GOOD)}\n")  # first: the chat presets sniff columns from the first object
    with pytest.raises(DataError, match=rf"d\.jsonl, line 1: {re.escape(reason)}"):
        load(path, loader)
    records, report = load(path, loader, on_bad_row="skip")
    assert len(records) == 1 and report.rows_seen == 2
    assert [(s["row"], s["reason"][: len(reason)]) for s in report.skipped] == [(1, reason)]


@pytest.mark.parametrize("bad, reason", [(HUGE_INT, "unreadable JSON: Exceeds the limit"), (DEEP, "malformed JSON: nested too deeply")])
@pytest.mark.parametrize("loader", ["json", "chatdoctor"])
def test_unparsable_json_file_names_the_file(tmp_path: Path, loader: str, bad: str, reason: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(f"[{bad}]")
    for on_bad_row in ("error", "skip"):  # a file that does not parse has no rows to skip
        with pytest.raises(DataError, match=rf"d\.json: {reason}"):
            load(path, loader, on_bad_row=on_bad_row)


def test_pubmedqa_unparsable_files_name_the_file(tmp_path: Path) -> None:
    from medtune.data.mcq import pubmedqa_test_ids

    (tmp_path / "ori_pqal.json").write_text("9" * 5000)
    (tmp_path / "test_ground_truth.json").write_text("[" * 100_000)
    with pytest.raises(DataError, match=r"ori_pqal\.json: unreadable JSON"):
        load(tmp_path / "ori_pqal.json", "pubmedqa")
    with pytest.raises(DataError, match=r"test_ground_truth\.json: malformed JSON: nested too deeply"):
        pubmedqa_test_ids(tmp_path / "ori_pqal.json")


@pytest.mark.parametrize("bad", [HUGE_INT, DEEP])
def test_passage_sniff_leaves_unparsable_first_line_to_the_loader(tmp_path: Path, bad: str) -> None:
    from medtune.data.passages import is_passage_jsonl

    path = tmp_path / "d.jsonl"
    path.write_text(bad + "\n")
    assert not is_passage_jsonl(path)


@pytest.mark.parametrize("bad", ["[" + "9" * 5000 + "]", "[" * 100_000])
def test_model_output_that_json_cannot_read_is_parsed_as_text(bad: str) -> None:
    from medtune.data.synth import parse_pairs

    assert parse_pairs(bad + "\nQuestion: Is flu viral?\nAnswer: Yes.") == [("Is flu viral?", "Yes.")]
