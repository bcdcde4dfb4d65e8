"""Passages from QA records and from passage JSONL: ids, chunking with overlap, bad rows."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, qa_rows
from medtune.data.report import DataError
from medtune.rag.passages import Passage, load_passages, passages_from_records, windows
from medtune.records import QARecord


def test_windows_overlap_and_cover_the_end():
    words = [str(i) for i in range(25)]
    parts = windows(words, 10, 3)
    assert [p[0] for p in parts] == ["0", "7", "14", "21"]
    assert parts[-1][-1] == "24" and len(parts[-1]) == 4
    assert all(a[-3:] == b[:3] for a, b in zip(parts, parts[1:]))
    assert windows(words[:10], 10, 3) == [words[:10]]
    with pytest.raises(ValueError, match="overlap"):
        windows(words, 10, 10)


def test_long_answers_are_chunked_keeping_metadata_and_ids():
    long = QARecord(question="What is gout ?", answer=" ".join(f"w{i}" for i in range(30)), id="q1", source="S", url="u", focus="Gout")
    short = QARecord(question="What causes gout ?", answer="Uric acid .", id="q2", source="S", url="u2", focus="Gout")
    empty = QARecord(question="How to treat gout ?", answer=None, id="q3")
    passages = passages_from_records([long, short, empty], chunk_words=12, overlap=4)
    assert [p.id for p in passages] == ["q1#1", "q1#2", "q1#3", "q1#4", "q2"]
    assert all(p.text.startswith("What is gout ?\n") for p in passages[:4])
    assert passages[1].text.split("\n")[1].split()[:4] == ["w8", "w9", "w10", "w11"]  # 4 words overlap
    assert {(p.title, p.url, p.source, p.lang) for p in passages[:4]} == {("Gout", "u", "S", "en")}
    assert {p.question for p in passages[:4]} == {"What is gout ?"}  # every window keeps the question it answers
    assert passages[4] == Passage(id="q2", text="What causes gout ?\nUric acid .", title="Gout", url="u2", source="S",
                                  question="What causes gout ?")


def test_reused_qids_get_unique_ids():
    recs = [QARecord(question=f"q{i}", answer="a", id="0001-1") for i in range(3)]
    assert [p.id for p in passages_from_records(recs)] == ["0001-1", "0001-1~2", "0001-1~3"]


def test_qa_jsonl_is_read_with_medtune_loaders(qa_jsonl):
    passages, report = load_passages(qa_jsonl)
    assert report.loader == "jsonl" and len(passages) == len(qa_rows()) == report.passages
    assert passages[0].id == "asthma-symptoms" and passages[0].title == "asthma"
    assert passages[0].text == "What are the symptoms of asthma ?\nThe symptoms of asthma include pain , fatigue and fever ."


def test_passage_jsonl_keeps_caller_ids(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "doc-7", "text": "Gout is arthritis.", "title": "Gout", "url": "https://x/gout"}, {"id": "A", "text": "Body", "lang": "es"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    passages, report = load_passages(path)
    assert report.loader == "passages"
    assert passages == [Passage("doc-7", "Gout is arthritis.", "Gout", "https://x/gout"), Passage("A", "Body", lang="es")]


def test_document_ids_and_repeats(tmp_path):
    """Re-exported corpora (CARES) name passages by document_id and repeat whole reports: a repeat is skipped
    and counted, another text of the same document gets its own id; a line with no id is named by its line."""
    path = tmp_path / "cases.jsonl"
    rows = [{"raw_text": "Informe uno.", "document_id": 4651186.0, "topic": "TAC"},
            {"raw_text": "Informe uno.", "document_id": 4651186.0, "topic": "TAC"},
            {"raw_text": "Informe dos.", "document_id": 4651186.0},
            {"raw_text": "Sin id.", "language": "es"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    passages, report = load_passages(path)
    assert report.loader == "passages" and report.records == 4
    assert [(p.id, p.text, p.title) for p in passages] == [("4651186", "Informe uno.", "TAC"), ("4651186~2", "Informe dos.", ""),
                                                           ("cases:4", "Sin id.", "")]
    assert passages[2].lang == "es"
    assert [(s["row"], s["reason"]) for s in report.skipped] == [(2, "repeats document '4651186' of line 1 word for word")]


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"id": "a", "text": "dup"}, "duplicate id 'a' \\(first on line 1\\)"),
        ({"id": "b", "title": "no text"}, "no text field \\(one of text, raw_text, passage, content\\)"),
        ({"id": "b", "text": "  "}, "passage 'b' has empty text"),
    ],
)
def test_bad_passage_rows_name_file_and_line(tmp_path, bad, reason):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "first"}) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=f"p.jsonl, line 3: {reason}"):
        load_passages(path)
    passages, report = load_passages(path, on_bad_row="skip")
    assert [p.id for p in passages] == ["a"] and report.skipped[0]["row"] == 3


@pytest.mark.skipif(not (SHARED_DATA / "medquad").is_dir(), reason="MedQuAD not in shared data")
def test_medquad_collection():
    passages, report = load_passages(SHARED_DATA / "medquad" / "9_CDC_QA")
    assert report.loader == "medquad" and report.passages == len(passages) > report.records - report.unanswered
    assert len({p.id for p in passages}) == len(passages)


@pytest.mark.skipif(not (SHARED_DATA / "es_clinical_text").is_dir(), reason="es_clinical_text not in shared data")
def test_cares_reads_as_passages_for_index_and_synth():
    from medtune.data.report import LoadReport
    from medtune.data.synth import read_passages

    path = SHARED_DATA / "es_clinical_text" / "cares_es.jsonl"
    passages, report = load_passages(path)
    assert report.loader == "passages" and (report.records, len(passages), len(report.skipped)) == (1037, 648, 389)
    synth = read_passages(path, loader=None, language="es", on_bad_row="error", report=LoadReport(source=str(path), loader=""))
    assert [p.id for p in synth] == [p.id for p in passages] and {p.lang for p in synth} == {"es"}
