"""MedQuAD XML loader: every layout variant of the released tree, errors, and the real numbers."""

from pathlib import Path

import pytest

from medtune.data import DataError, data_stats, infer_loader, load_source
from medtune.recipe import SourceConfig

REAL = Path(__file__).parents[1].parent / "shared" / "data" / "medquad"

STANDARD = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000001" source="GARD" url="https://rarediseases.info.nih.gov/x">
<Focus>Alpha   Syndrome</Focus>
<FocusAnnotations><UMLS><CUIs><CUI>C1</CUI></CUIs><SemanticGroup>Disorders</SemanticGroup></UMLS></FocusAnnotations>
<QAPairs>
  <QAPair pid="1">
    <Question qid="0000001-1" qtype="information">What is (are)
      Alpha Syndrome ?</Question>
    <Answer>Key points
                    - first point

                    Second   paragraph.</Answer>
  </QAPair>
  <QAPair pid="2">
    <Question qid="0000001-2" qtype="symptoms">What are the symptoms of Alpha Syndrome ?</Question>
    <Answer>   </Answer>
  </QAPair>
  <QAPair pid="3">
    <Question qid="0000001-3" qtype="treatment">How to treat Alpha Syndrome ?</Question>
  </QAPair>
</QAPairs>
</Document>
"""

# 10_MPlus_ADAM_QA: a comment, and answers removed for copyright.
ADAM = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000002" source="ADAM" url="https://medlineplus.gov/ency/a.htm">
 <!--Answers from the A.D.A.M. medical encyclopedia were removed-->
<Focus>Beta</Focus>
<QAPairs><QAPair pid="1"><Question qid="0000002-1" qtype="causes">What causes Beta ?</Question><Answer></Answer>
</QAPair></QAPairs>
</Document>
"""

# 9_CDC_QA: UMLS instead of FocusAnnotations, an empty Focus.
CDC = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000003" source="CDC" url="http://www.cdc.gov/g">
<Focus></Focus>
<UMLS><CUI></CUI><SemanticType></SemanticType><SemanticGroup></SemanticGroup></UMLS>
<QAPairs><QAPair pid="1"><Question qid="0000003-1" qtype="information">What is Gamma ?</Question>
<Answer>Gamma is a parasite.</Answer></QAPair></QAPairs>
</Document>
"""

# 9_CDC_QA/0000397.xml: another root element, `fid` instead of `id`.
DISEASE_FILE = """<?xml version="1.0" encoding="UTF-8"?>
<DiseaseFile fid="0000397" source="CDC" url="http://www.cdc.gov/parasites/taeniasis/">
<Focus>Parasites - Taeniasis</Focus>
<UMLS><CUI></CUI></UMLS>
<QAPairs><QAPair pid="1"><Question qid="0000397-1" qtype="information">What is Taeniasis ?</Question>
<Answer>Taeniasis is a tapeworm infection.</Answer></QAPair></QAPairs>
</DiseaseFile>
"""

# 6_NINDS_QA/0000007.xml and three more: the older lower-case schema.
NINDS_DOC = """<?xml version="1.0" encoding="UTF-8"?>
<doc docid="0000007" corpus="NINDS" url="http://www.ninds.nih.gov/disorders/holmes_adie/holmes_adie.htm">
<doctitle-focus>Holmes-Adie</doctitle-focus>
<umls><cui></cui><semanticType></semanticType><semanticGroup></semanticGroup></umls>
<qaPairs>
<pair pid="1"><question qid="0000007-1" qtype="information">what is holmes-adie syndrome ?</question>
<answer>Holmes-Adie syndrome (HAS) is a neurological disorder.</answer></pair>
<pair pid="2"><question qid="0000007-2" qtype="treatment">is there any treatment for Holmes-Adie ?</question>
<answer>Doctors may prescribe reading glasses.</answer></pair>
</qaPairs>
</doc>
"""

# 5_NIDDK_QA: six documents with no pairs at all.
NO_PAIRS = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000056" source="NIDDK" url="https://www.niddk.nih.gov/x"><Focus>Delta</Focus><QAPairs/></Document>
"""

# No `source` attribute: the collection folder names the source.
NO_SOURCE = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000009"><Focus>Epsilon</Focus><QAPairs><QAPair pid="1">
<Question qid="0000009-1" qtype="information">What is Epsilon ?</Question><Answer>A thing.</Answer>
</QAPair></QAPairs></Document>
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = {
        "2_GARD_QA/0000001.xml": STANDARD,
        "10_MPlus_ADAM_QA/0000002.xml": ADAM,
        "9_CDC_QA/0000003.xml": CDC,
        "9_CDC_QA/0000397.xml": DISEASE_FILE,
        "6_NINDS_QA/0000007.xml": NINDS_DOC,
        "5_NIDDK_QA/0000056.xml": NO_PAIRS,
        "7_SeniorHealth_QA/0000009.xml": NO_SOURCE,
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "LICENSE.txt").write_text("CC BY 4.0")
    return tmp_path


def load(path: Path, **kw):
    return load_source(SourceConfig(loader="medquad", path=str(path), **kw))


def test_every_layout_variant(tree: Path) -> None:
    records, report = load(tree)
    by_id = {r.id: r for r in records}
    assert len(records) == 9
    assert (report.files_read, report.rows_seen, report.records) == (7, 9, 9)
    assert (report.answered, report.empty_answers, report.skipped) == (6, 3, [])

    first = by_id["0000001-1"]
    assert first.question == "What is (are) Alpha Syndrome ?"
    assert first.answer == "Key points\n- first point\nSecond paragraph."
    assert (first.source, first.focus, first.qtype, first.language) == ("GARD", "Alpha Syndrome", "information", "en")
    assert first.url == "https://rarediseases.info.nih.gov/x"
    # Blank and missing answers are records with answer None, counted as empty.
    assert by_id["0000001-2"].answer is None and by_id["0000001-3"].answer is None
    assert by_id["0000002-1"].answer is None and by_id["0000002-1"].source == "ADAM"

    assert by_id["0000003-1"].focus == "" and by_id["0000003-1"].answered
    assert by_id["0000397-1"].source == "CDC" and by_id["0000397-1"].focus == "Parasites - Taeniasis"
    ninds = by_id["0000007-2"]
    assert (ninds.source, ninds.focus, ninds.qtype) == ("NINDS", "Holmes-Adie", "treatment")
    assert ninds.answer == "Doctors may prescribe reading glasses."
    assert by_id["0000009-1"].source == "7_SeniorHealth_QA"


def test_single_collection_and_single_file(tree: Path) -> None:
    assert len(load(tree / "6_NINDS_QA")[0]) == 2
    assert [r.id for r in load(tree / "9_CDC_QA" / "0000397.xml")[0]] == ["0000397-1"]


def test_malformed_xml_names_file_and_line(tree: Path) -> None:
    bad = tree / "3_GHR_QA" / "0000004.xml"
    bad.parent.mkdir()
    bad.write_text('<?xml version="1.0"?>\n<Document source="GHR">\n<Focus>x</Fokus>\n</Document>\n')
    with pytest.raises(DataError, match=r"0000004\.xml, line 3: malformed XML: mismatched tag") as info:
        load(tree)
    assert info.value.file == str(bad) and info.value.line == 3

    records, report = load(tree, on_bad_row="skip")
    assert len(records) == 9 and report.files_read == 8
    assert report.skipped == [{"file": str(bad), "row": 3, "reason": "malformed XML: mismatched tag (column 11)"}]


def test_unknown_root_and_empty_question(tree: Path) -> None:
    (tree / "x.xml").write_text("<Page><QAPairs/></Page>")
    with pytest.raises(DataError, match=r"x\.xml: unknown root element <Page>"):
        load(tree)
    (tree / "x.xml").write_text(
        '<Document source="GARD"><QAPairs><QAPair pid="7"><Question qid="q" qtype="t"> </Question>'
        "<Answer>a</Answer></QAPair></QAPairs></Document>"
    )
    with pytest.raises(DataError, match=r"x\.xml, row 1: QAPair pid='7' has no question text"):
        load(tree)
    records, report = load(tree, on_bad_row="skip")
    assert len(records) == 9 and report.rows_seen == 10 and len(report.skipped) == 1


def test_infer_loader_for_a_tree(tree: Path) -> None:
    assert infer_loader(tree) == "medquad"
    assert infer_loader(tree / "2_GARD_QA" / "0000001.xml") == "medquad"


def test_stats_on_fixture(tree: Path) -> None:
    stats = data_stats(str(tree))
    assert (stats["questions"], stats["answered"], stats["empty_answers"], stats["duplicates"]) == (9, 6, 3, 0)
    assert stats["per_source"]["GARD"] == {"questions": 3, "answered": 1}
    assert stats["per_source"]["ADAM"] == {"questions": 1, "answered": 0}
    assert stats["per_qtype"]["information"] == {"questions": 5, "answered": 5}
    assert sum(stats["split"]["sizes"].values()) == 6 and stats["split"]["focus_overlap"] == 0


@pytest.mark.skipif(not REAL.is_dir(), reason="shared MedQuAD tree not available")
def test_real_medquad_tree() -> None:
    stats = data_stats(str(REAL))
    assert stats["files"] == 11274
    assert stats["questions"] == 47457
    assert stats["answered"] == 16423
    assert stats["empty_answers"] == 47457 - 16423
    assert stats["skipped"] == []
    per_source = {k: v["questions"] for k, v in stats["per_source"].items()}
    assert per_source == {
        "ADAM": 17348, "CDC": 270, "CancerGov": 729, "GARD": 5394, "GHR": 5430, "MPlusDrugs": 12889,
        "MPlusHealthTopics": 981, "MPlusHerbsSupplements": 792, "NHLBI": 559, "NIDDK": 1192,
        "NIHSeniorHealth": 769, "NINDS": 1104,
    }  # fmt: skip
    # Collections 10-12 ship without answers.
    assert all(stats["per_source"][s]["answered"] == 0 for s in ("ADAM", "MPlusDrugs", "MPlusHerbsSupplements"))
    assert sum(stats["split"]["sizes"].values()) == stats["answered_unique"]
    assert stats["split"]["focus_overlap"] == 0
