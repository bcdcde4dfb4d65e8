"""Multiple-choice loaders (HEAD-QA, MedQA, MedMCQA, PubMedQA, MMLU, CasiMedicos): fixtures in each
dataset's real format (and the hub's), bad rows, and counts on the real files. Portuguese exams:
test_data_exam_pt.py."""

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from medtune.data import LOADERS, DataError
from medtune.data.mcq import load_mcq, pubmedqa_test_ids
from medtune.records import QARecord, from_dataset, to_dataset

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MCQ_LOADERS = ("headqa", "medqa", "medmcqa", "pubmedqa", "mmlu", "casimedicos", "exam_pt")


def mcq(question: str, options: tuple[str, ...], answer_index: int, **fields) -> QARecord:
    return QARecord(question, options[answer_index], options=options, answer_index=answer_index, **fields)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def assert_round_trip(records: list[QARecord]) -> None:
    assert from_dataset(to_dataset(records)) == records


def test_registered_names() -> None:
    assert set(MCQ_LOADERS) <= set(LOADERS)


# ---- HEAD-QA ----------------------------------------------------------------------------------


def headqa_item(qid: str, ra: str, texts: list[str], image: str = "") -> dict:
    # As released: qid and ra are strings, aid a number.
    return {"qid": qid, "qtext": f"Question {qid}?", "ra": ra,
            "answers": [{"aid": i, "atext": t} for i, t in enumerate(texts, 1)], "image": image}


def headqa_file(path: Path, *, bad_ra: bool = False, language: str | None = "es") -> Path:
    medicine = [headqa_item("1", "2", ["Uno.", "Dos.", "Tres.", "Cuatro."]),
                headqa_item("2", "1", ["a", "b", "c", "d"], image="./data/MIR/Cuaderno_2016_1_M/2.png")]
    # Answers listed out of order: the options follow the aid.
    medicine[0]["answers"].reverse()
    nursing = [headqa_item("7", "9" if bad_ra else "4", ["w", "x", "y", "z"])]
    data = {"version": "1.0", "exams": {
        "Cuaderno_2016_1_M": {"name": "Cuaderno_2016_1_M", "category": "medicine", "year": "2016", "data": medicine},
        "Cuaderno_2016_1_E": {"name": "Cuaderno_2016_1_E", "category": "nursery", "year": "2016", "data": nursing},
    }}
    if language:
        data["language"] = language
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


def test_headqa_records_and_image_skip(tmp_path: Path) -> None:
    records, report = load_mcq("headqa", headqa_file(tmp_path / "test_HEAD.json"))
    assert records == [
        mcq("Question 1?", ("Uno.", "Dos.", "Tres.", "Cuatro."), 1, id="Cuaderno_2016_1_M:1", source="head_qa",
            language="es", category="medicine"),
        mcq("Question 7?", ("w", "x", "y", "z"), 3, id="Cuaderno_2016_1_E:7", source="head_qa", language="es",
            category="nursery"),
    ]
    assert (report.files_read, report.rows_seen, report.records) == (1, 3, 2)
    assert report.skipped == [{"file": str(tmp_path / "test_HEAD.json"), "row": "Cuaderno_2016_1_M:2",
                               "reason": "needs an image"}]
    assert_round_trip(records)


def test_headqa_language_falls_back_to_source(tmp_path: Path) -> None:
    records, _ = load_mcq("headqa", headqa_file(tmp_path / "h.json", language=None), language="en")
    assert {r.language for r in records} == {"en"}


def test_headqa_bad_answer_id(tmp_path: Path) -> None:
    path = headqa_file(tmp_path / "test_HEAD.json", bad_ra=True)
    with pytest.raises(DataError) as info:
        load_mcq("headqa", path)
    msg = str(info.value)
    assert msg.startswith(f"{path}, row 1, column 'ra': exam 'Cuaderno_2016_1_E', qid 7:")
    assert "'9' is not among the answer ids ['1', '2', '3', '4']" in msg

    records, report = load_mcq("headqa", path, on_bad_row="skip")
    assert [r.id for r in records] == ["Cuaderno_2016_1_M:1"]
    assert Counter(s["reason"] == "needs an image" for s in report.skipped) == {True: 1, False: 1}


def test_headqa_image_skipped_even_on_error(tmp_path: Path) -> None:
    _, report = load_mcq("headqa", headqa_file(tmp_path / "h.json"), on_bad_row="error")
    assert [s["reason"] for s in report.skipped] == ["needs an image"]


def headqa_hub_rows(path: Path) -> list[dict]:
    """The rows of the hub's head_qa: one per question, naming its exam, with `image` null or {bytes, path}."""
    data = json.loads(path.read_text())
    return [{"name": name, "year": exam["year"], "category": exam["category"], "qid": int(item["qid"]),
             "qtext": item["qtext"], "ra": int(item["ra"]),
             "image": {"bytes": b"\x89PNG", "path": item["image"]} if item["image"] else None,
             "answers": [{"aid": a["aid"], "atext": a["atext"]} for a in item["answers"]]}
            for name, exam in data["exams"].items() for item in exam["data"]]


@pytest.mark.parametrize("suffix", ["parquet", "jsonl", "json"])
def test_headqa_hub_rows(tmp_path: Path, suffix: str) -> None:
    rows = headqa_hub_rows(headqa_file(tmp_path / "test_HEAD.json"))
    path = tmp_path / f"test.{suffix}"
    if suffix == "parquet":
        write_parquet(path, rows)
    else:  # as datasets' to_json writes them: image null, or its path
        rows = [r | {"image": r["image"] and {"bytes": None, "path": r["image"]["path"]}} for r in rows]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) if suffix == "jsonl" else json.dumps(rows))
    records, report = load_mcq("headqa", path, language="es")
    original, _ = load_mcq("headqa", tmp_path / "test_HEAD.json")
    assert records == original
    assert (report.rows_seen, report.records) == (3, 2)
    assert report.skipped == [{"file": str(path), "row": "Cuaderno_2016_1_M:2", "reason": "needs an image"}]


def test_headqa_hub_bad_row(tmp_path: Path) -> None:
    rows = headqa_hub_rows(headqa_file(tmp_path / "test_HEAD.json", bad_ra=True))
    path = write_parquet(tmp_path / "test.parquet", rows)
    with pytest.raises(DataError, match=r"test\.parquet, row 3, column 'ra': exam 'Cuaderno_2016_1_E', qid 7: right answer 9"):
        load_mcq("headqa", path)
    assert [s["row"] for s in load_mcq("headqa", path, on_bad_row="skip")[1].skipped] == ["Cuaderno_2016_1_M:2", 3]


# ---- MedQA ------------------------------------------------------------------------------------


MEDQA_ROW = {"question": "A 23-year-old woman ... Which is the best next step?", "answer": "Nitrofurantoin",
             "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Nitrofurantoin"},
             "meta_info": "step2&3", "answer_idx": "D", "metamap_phrases": ["woman"]}


def test_medqa(tmp_path: Path) -> None:
    shuffled = MEDQA_ROW | {"options": dict(reversed(MEDQA_ROW["options"].items())), "meta_info": "step1"}
    records, report = load_mcq("medqa", write_jsonl(tmp_path / "test.jsonl", [MEDQA_ROW, shuffled]))
    options = ("Ampicillin", "Ceftriaxone", "Doxycycline", "Nitrofurantoin")
    assert records == [
        mcq(MEDQA_ROW["question"], options, 3, id="test:1", source="medqa", category="step2&3"),
        mcq(MEDQA_ROW["question"], options, 3, id="test:2", source="medqa", category="step1"),
    ]
    assert (report.files_read, report.rows_seen) == (1, 2)


@pytest.mark.parametrize(
    "options",
    [[{"key": k, "value": v} for k, v in reversed(MEDQA_ROW["options"].items())],  # BigBio's med_qa source schema
     list(MEDQA_ROW["options"].values())],  # a plain list, lettered in order
)
def test_medqa_options_as_list(tmp_path: Path, options: list) -> None:
    expected, _ = load_mcq("medqa", write_jsonl(tmp_path / "test.jsonl", [MEDQA_ROW]))
    records, _ = load_mcq("medqa", write_parquet(tmp_path / "test.parquet", [MEDQA_ROW | {"options": options}]))
    assert records == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [({"answer": "Ampicillin"}, "column 'answer': answer 'Ampicillin' is not option D's text 'Nitrofurantoin'"),
     ({"answer_idx": "E"}, "column 'answer_idx': answer_idx 'E' is not one of the options ['A', 'B', 'C', 'D']"),
     ({"options": None}, "column 'options': expected an object {A: text} or a list, got NoneType"),
     ({"options": [{"key": "A"}]}, "missing field 'value'"),
     ({"question": ""}, "empty question")],
)
def test_medqa_bad_rows(tmp_path: Path, change: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [MEDQA_ROW, "", MEDQA_ROW | change])
    with pytest.raises(DataError, match="line 3") as info:
        load_mcq("medqa", path)
    assert str(path) in str(info.value) and message in str(info.value)
    records, report = load_mcq("medqa", path, on_bad_row="skip")
    assert len(records) == 1 and report.rows_seen == 2 and [s["row"] for s in report.skipped] == [3]


def test_malformed_json_line_is_a_bad_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", ['{"question": ', MEDQA_ROW, "[1]"])
    with pytest.raises(DataError, match=r"test\.jsonl, line 1: malformed JSON"):
        load_mcq("medqa", path)
    records, report = load_mcq("medqa", path, on_bad_row="skip")
    assert len(records) == 1 and [s["row"] for s in report.skipped] == [1, 3] and report.rows_seen == 3


# ---- MedMCQA ----------------------------------------------------------------------------------


MEDMCQA_ROW = {"question": "Which of the following is not true for myelinated nerve fibers:", "exp": None, "cop": 1,
               "opa": "Impulse is slower than in non-myelinated fibers", "opb": "Currents arise at nodes of Ranvier",
               "opc": "Saltatory conduction is seen", "opd": "Local anesthesia works only without myelin",
               "subject_name": "Physiology", "topic_name": None, "id": "45258d3d", "choice_type": "multi"}


def test_medmcqa_cop_counts_from_one(tmp_path: Path) -> None:
    no_id = {k: v for k, v in MEDMCQA_ROW.items() if k != "id"} | {"cop": 4, "subject_name": "Anatomy"}
    records, _ = load_mcq("medmcqa", write_jsonl(tmp_path / "dev.jsonl", [MEDMCQA_ROW, no_id]))
    options = tuple(MEDMCQA_ROW[k] for k in ("opa", "opb", "opc", "opd"))
    assert records == [
        mcq(MEDMCQA_ROW["question"], options, 0, id="45258d3d", source="medmcqa", category="Physiology"),
        mcq(MEDMCQA_ROW["question"], options, 3, id="dev:2", source="medmcqa", category="Anatomy"),
    ]


@pytest.mark.parametrize(("cop", "message"), [(5, "cop 5 is not 1-4"), ("x", "malformed item"), (2.5, "malformed item")])
def test_medmcqa_bad_cop(tmp_path: Path, cop, message: str) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [MEDMCQA_ROW | {"cop": 4}, MEDMCQA_ROW | {"cop": cop}])
    with pytest.raises(DataError, match=r"dev\.jsonl, line 2") as info:
        load_mcq("medmcqa", path)
    assert message in str(info.value)
    assert load_mcq("medmcqa", path, on_bad_row="skip")[1].skipped[0]["row"] == 2


def test_medmcqa_hub_counts_from_zero(tmp_path: Path) -> None:
    """The hub's export: cop 0-3, and -1 in the test split, which has no answers."""
    hub = [MEDMCQA_ROW | {"cop": 0}, MEDMCQA_ROW | {"cop": 3, "id": "x2"}, MEDMCQA_ROW | {"cop": -1, "id": "x3"}]
    options = tuple(MEDMCQA_ROW[k] for k in ("opa", "opb", "opc", "opd"))
    for path in (write_jsonl(tmp_path / "validation.jsonl", hub), write_parquet(tmp_path / "validation.parquet", hub)):
        records, report = load_mcq("medmcqa", path)  # the -1 is skipped even when bad rows are errors
        assert [(r.id, r.answer_index) for r in records] == [("45258d3d", 0), ("x2", 3)]
        assert records[1] == mcq(MEDMCQA_ROW["question"], options, 3, id="x2", source="medmcqa", category="Physiology")
        assert report.skipped == [{"file": str(path), "row": 3,
                                   "reason": "no answer key (cop missing or -1, as in the test split)"}]


def test_medmcqa_cop_base_from_the_format_when_only_1_to_3(tmp_path: Path) -> None:
    rows = [MEDMCQA_ROW | {"cop": 1}, MEDMCQA_ROW | {"cop": 3}]
    original = load_mcq("medmcqa", write_jsonl(tmp_path / "dev.jsonl", rows))[0]
    hub = load_mcq("medmcqa", write_parquet(tmp_path / "dev.parquet", rows))[0]
    assert [r.answer_index for r in original] == [0, 2] and [r.answer_index for r in hub] == [1, 3]


def test_medmcqa_cop_with_both_0_and_4_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [MEDMCQA_ROW | {"cop": 0}, MEDMCQA_ROW | {"cop": 4}])
    with pytest.raises(DataError, match=r"dev\.jsonl, column 'cop': cop holds both 0 and 4"):
        load_mcq("medmcqa", path, on_bad_row="skip")


def test_medmcqa_missing_option(tmp_path: Path) -> None:
    row = {k: v for k, v in MEDMCQA_ROW.items() if k != "opc"}
    with pytest.raises(DataError, match=r"line 1: missing field 'opc'"):
        load_mcq("medmcqa", write_jsonl(tmp_path / "dev.jsonl", [row]))


# ---- PubMedQA ---------------------------------------------------------------------------------


def pubmedqa_dir(root: Path, decisions: dict[str, str], test: list[str]) -> Path:
    root.mkdir()
    data = {pmid: {"QUESTION": f"Does {pmid} help?", "CONTEXTS": ["Background.", "Results."],
                   "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Humans"], "YEAR": "2011",
                   "reasoning_required_pred": "yes", "reasoning_free_pred": "yes",
                   "final_decision": d, "LONG_ANSWER": "It does."} for pmid, d in decisions.items()}
    (root / "ori_pqal.json").write_text(json.dumps(data))
    (root / "test_ground_truth.json").write_text(json.dumps({pmid: decisions[pmid] for pmid in test}))
    return root / "ori_pqal.json"


def test_pubmedqa(tmp_path: Path) -> None:
    path = pubmedqa_dir(tmp_path / "pubmedqa", {"21645374": "yes", "16418930": "maybe"}, ["16418930"])
    records, report = load_mcq("pubmedqa", path)
    assert records == [
        mcq(f"Does {pmid} help?", ("yes", "no", "maybe"), i, id=pmid, source="pubmedqa",
            context="Background.\nResults.")
        for pmid, i in (("21645374", 0), ("16418930", 2))
    ]
    assert report.rows_seen == 2
    assert pubmedqa_test_ids(path) == {"16418930"}


def test_pubmedqa_bad_decision(tmp_path: Path) -> None:
    path = pubmedqa_dir(tmp_path / "pubmedqa", {"1": "yes", "2": "perhaps"}, [])
    with pytest.raises(DataError, match=r"row 2, column 'final_decision': pmid 2: final_decision 'perhaps'"):
        load_mcq("pubmedqa", path)
    assert [r.id for r in load_mcq("pubmedqa", path, on_bad_row="skip")[0]] == ["1"]


def test_pubmedqa_test_ids_need_the_ground_truth_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test_ground_truth.json: no such file"):
        pubmedqa_test_ids(tmp_path / "ori_pqal.json")


# ---- MMLU -------------------------------------------------------------------------------------


def test_mmlu_directory(tmp_path: Path) -> None:
    write_csv(tmp_path / "medical_genetics_test.csv", [["Which gene?", "BRCA1", "TP53", "CFTR", "HBB", "C"]])
    write_csv(tmp_path / "anatomy_test.csv", [["A lesion\nat the foramen causes", "w", "x", "y", "z", "A"],
                                              ["Which bone?", "Femur", "Tibia", "Ulna", "Radius", "d"]])
    (tmp_path / "notes.txt").write_text("not read")
    records, report = load_mcq("mmlu", tmp_path)
    assert records == [
        mcq("A lesion\nat the foramen causes", ("w", "x", "y", "z"), 0, id="anatomy:1", source="mmlu",
            category="anatomy"),
        mcq("Which bone?", ("Femur", "Tibia", "Ulna", "Radius"), 3, id="anatomy:2", source="mmlu", category="anatomy"),
        mcq("Which gene?", ("BRCA1", "TP53", "CFTR", "HBB"), 2, id="medical_genetics:1", source="mmlu",
            category="medical_genetics"),
    ]
    assert (report.files_read, report.rows_seen) == (2, 3)
    assert load_mcq("mmlu", tmp_path / "anatomy_test.csv")[0] == records[:2]


def test_mmlu_bad_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "anatomy_test.csv", [["Two\nlines", "w", "x", "y", "z", "A"],
                                                     ["Which?", "w", "x", "y", "z", "E"],
                                                     ["Short", "w", "x", "A"]])
    with pytest.raises(DataError, match=r"anatomy_test\.csv, line 3, column 'answer': answer 'E' is not a letter A-D"):
        load_mcq("mmlu", path)
    records, report = load_mcq("mmlu", path, on_bad_row="skip")
    assert [r.id for r in records] == ["anatomy:1"] and [s["row"] for s in report.skipped] == [3, 4]
    assert "expected 6 fields" in report.skipped[1]["reason"]


def test_mmlu_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no CSV files"):
        load_mcq("mmlu", tmp_path)


# ---- CasiMedicos ------------------------------------------------------------------------------


def casimedicos_row(options: dict, correct: str) -> dict:
    return {"type": "HEMATOLOGY", "full_question": "Una mujer de 43 años... ¿Cuál es el diagnóstico?",
            "question": "¿Cuál es el diagnóstico?", "options": options, "correct_option": correct,
            "explanation": "Bastones de Auer."}


def test_casimedicos(tmp_path: Path) -> None:
    five = {"1": "LMC.", "2": "LAP.", "3": "LAM.", "4": "LLC.", "5": "LLA."}
    four = {"5": "nan", "1": "a", "2": "b", "3": "c", "4": "d"}  # as in the real files: "nan", once listed first
    path = write_jsonl(tmp_path / "dev.jsonl", [casimedicos_row(five, "2"), casimedicos_row(four, "4")])
    records, report = load_mcq("casimedicos", path, language="es")
    question = "Una mujer de 43 años... ¿Cuál es el diagnóstico?"
    assert records == [
        mcq(question, ("LMC.", "LAP.", "LAM.", "LLC.", "LLA."), 1, id="dev:1", source="casimedicos", language="es",
            category="HEMATOLOGY"),
        mcq(question, ("a", "b", "c", "d"), 3, id="dev:2", source="casimedicos", language="es", category="HEMATOLOGY"),
    ]
    assert report.rows_seen == 2
    assert_round_trip(records)


@pytest.mark.parametrize(
    ("options", "correct", "message"),
    [({"1": "a", "2": "b", "3": "c", "4": "d", "5": "nan"}, "5", "correct_option '5' is not one of the options"),
     ({"1": "a", "2": None, "3": "c", "4": "d"}, "1", "empty option(s) 2"),
     ({"1": "a", "2": "b", "x": "c"}, "1", "malformed item")],
)
def test_casimedicos_bad_rows(tmp_path: Path, options: dict, correct: str, message: str) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [casimedicos_row(options, correct)])
    with pytest.raises(DataError, match=r"dev\.jsonl, line 1") as info:
        load_mcq("casimedicos", path)
    assert message in str(info.value)
    assert len(load_mcq("casimedicos", path, on_bad_row="skip")[1].skipped) == 1


# ---- the real files ---------------------------------------------------------------------------


def real(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def check_items(records: list[QARecord]) -> None:
    assert all(0 <= r.answer_index < len(r.options) and r.answer == r.options[r.answer_index] for r in records)
    assert all(r.question and all(r.options) for r in records)
    assert len({r.id for r in records}) == len(records)


@pytest.mark.parametrize(
    ("relative", "language", "items", "images"),
    [(f"head_qa/{lang}/{split}_HEAD{suffix}.json", lang, items, images)
     for lang, suffix in (("es", ""), ("en", "_EN"))
     for split, items, images in (("test", 2742, 67), ("dev", 1366, 30), ("train", 2657, 68))],
)
def test_real_headqa(relative: str, language: str, items: int, images: int) -> None:
    records, report = load_mcq("headqa", real(relative))
    assert (report.rows_seen, report.records, len(report.skipped)) == (items, items - images, images)
    assert {s["reason"] for s in report.skipped} == {"needs an image"}
    assert {r.language for r in records} == {language}
    # The files spell nursing "nursery".
    assert {r.category for r in records} == {"medicine", "nursery", "pharmacology", "biology", "chemistry",
                                             "psychology"}
    check_items(records)


@pytest.mark.parametrize(
    ("loader", "relative", "items"),
    [("medqa", "medqa_usmle/test.jsonl", 1273), ("medmcqa", "medmcqa/dev.jsonl", 4183),
     ("pubmedqa", "pubmedqa/ori_pqal.json", 1000), ("mmlu", "mmlu_medical/test", 1089),
     ("mmlu", "mmlu_medical/dev", 45), ("casimedicos", "casimedicos/es/dev.jsonl", 55),
     ("casimedicos", "casimedicos/en/dev.jsonl", 55), ("casimedicos", "casimedicos/es/train.jsonl", 381),
     ("casimedicos", "casimedicos/en/train.jsonl", 381)],
)
def test_real_counts(loader: str, relative: str, items: int) -> None:
    records, report = load_mcq(loader, real(relative))
    assert (report.rows_seen, report.records, report.skipped) == (items, items, [])
    check_items(records)
    assert_round_trip(records)


def test_real_details() -> None:
    medmcqa, _ = load_mcq("medmcqa", real("medmcqa/dev.jsonl"))
    # cop counts from 1: the first item has cop 1, and the statement that is not true is option a.
    assert medmcqa[0].answer_index == 0 and medmcqa[0].answer.startswith("Impulse through myelinated fibers is slower")
    mmlu, report = load_mcq("mmlu", real("mmlu_medical/test"))
    assert report.files_read == 6
    assert set(Counter(r.category for r in mmlu)) == {"anatomy", "clinical_knowledge", "college_biology",
                                                      "college_medicine", "medical_genetics", "professional_medicine"}
    pubmedqa, _ = load_mcq("pubmedqa", real("pubmedqa/ori_pqal.json"))
    test_ids = pubmedqa_test_ids(real("pubmedqa/ori_pqal.json"))
    assert len(test_ids) == 500 and test_ids <= {r.id for r in pubmedqa}
    casimedicos, _ = load_mcq("casimedicos", real("casimedicos/en/train.jsonl"))
    assert Counter(len(r.options) for r in casimedicos) == {4: 207, 5: 174}  # the 5th is "nan" in 4-option exams


def test_real_headqa_hub_layout_matches_the_original(tmp_path: Path) -> None:
    original = real("head_qa/es/dev_HEAD.json")
    path = write_parquet(tmp_path / "validation.parquet", headqa_hub_rows(original))
    records, report = load_mcq("headqa", path, language="es")
    expected, expected_report = load_mcq("headqa", original)
    assert records == expected and len(records) == 1366 - 30
    assert [s["row"] for s in report.skipped] == [s["row"] for s in expected_report.skipped]


def test_real_medmcqa_in_the_hub_convention(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in real("medmcqa/dev.jsonl").read_text().splitlines()]
    hub = write_parquet(tmp_path / "validation.parquet", [r | {"cop": r["cop"] - 1} for r in rows])
    records, report = load_mcq("medmcqa", hub)
    assert records == load_mcq("medmcqa", real("medmcqa/dev.jsonl"))[0] and report.records == 4183
