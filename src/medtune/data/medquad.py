"""MedQuAD (Ben Abacha & Demner-Fushman, 2019): the original XML tree, one document per file.

Most files are `Document[id, source, url]/{Focus, FocusAnnotations, QAPairs/QAPair[pid]/
{Question[qid, qtype], Answer}}`. Variants in the released tree, all handled here:
  * 9_CDC_QA: `UMLS` instead of `FocusAnnotations` (unused here), and one file whose root
    is `DiseaseFile[fid, source, url]` with the usual children;
  * 6_NINDS_QA: four files in an older lower-case schema, `doc[docid, corpus, url]/
    {doctitle-focus, umls, qaPairs/pair[pid]/{question, answer}}`;
  * 5_NIDDK_QA: six documents with an empty `QAPairs` (no records);
  * 10-12 (A.D.A.M., MedlinePlus drugs, herbs): empty `Answer`s (removed for copyright),
    kept as records with answer None so that they are counted;
  * 9_CDC_QA: three documents with an empty `Focus` (the split groups them by question).
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.parsers.expat import ErrorString

from medtune.data.loaders import register_loader
from medtune.data.report import DataError, LoadReport
from medtune.recipe import SourceConfig
from medtune.records import QARecord


@dataclass(frozen=True)
class _Layout:
    source: str  # root attribute naming the collection
    focus: str
    pairs: str  # path from the root to the question-answer pairs
    question: str
    answer: str


_STANDARD = _Layout("source", "Focus", "QAPairs/QAPair", "Question", "Answer")
_LAYOUTS = {
    "Document": _STANDARD,
    "DiseaseFile": _STANDARD,
    "doc": _Layout("corpus", "doctitle-focus", "qaPairs/pair", "question", "answer"),
}


def _squash(text: str) -> str:
    return " ".join(text.split())


def _clean_answer(text: str) -> str:
    # Answers keep the web pages' indentation and blank lines; keep only the line structure.
    return "\n".join(line for line in map(_squash, text.splitlines()) if line)


@register_loader("medquad")
def load_medquad(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    """Every question of a MedQuAD tree, a collection folder or a single file."""
    for file in sorted(path.rglob("*.xml")) if path.is_dir() else [path]:
        report.files_read += 1
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as exc:
            line, column = exc.position  # expat counts columns from 0
            err = DataError(file, f"malformed XML: {ErrorString(exc.code)} (column {column + 1})", line=line)
            report.reject(err, cfg.on_bad_row)
            continue
        layout = _LAYOUTS.get(root.tag)
        if layout is None:
            err = DataError(file, f"unknown root element <{root.tag}>; MedQuAD files have <{'>, <'.join(_LAYOUTS)}>")
            report.reject(err, cfg.on_bad_row)
            continue
        yield from _records(file, root, layout, cfg, report)


def _records(
    file: Path, root: ET.Element, layout: _Layout, cfg: SourceConfig, report: LoadReport
) -> Iterator[QARecord]:
    source = root.get(layout.source) or file.parent.name  # the collection folder as a fallback
    url = root.get("url", "")
    focus = _squash(root.findtext(layout.focus, ""))
    for row, pair in enumerate(root.iterfind(layout.pairs), 1):
        report.rows_seen += 1
        q = pair.find(layout.question)
        question = _squash("".join(q.itertext())) if q is not None else ""
        if not question:
            err = DataError(file, f"QAPair pid={pair.get('pid')!r} has no question text", row=row)
            report.reject(err, cfg.on_bad_row)
            continue
        a = pair.find(layout.answer)
        answer = _clean_answer("".join(a.itertext())) if a is not None else ""
        yield QARecord(
            question=question,
            answer=answer or None,
            id=q.get("qid", ""),
            source=source,
            url=url,
            focus=focus,
            qtype=q.get("qtype", ""),
            language="en",
        )


def medquad_digest(root: Path) -> str:
    """A fingerprint of a MedQuAD tree: SHA-256 of the lines `<SHA-256 of the file>  <path under root>`
    of its XML files (those the loader reads) in path order, as `find . -name '*.xml' -printf '%P\\n' |
    LC_ALL=C sort | xargs sha256sum | sha256sum` prints it from `root`."""
    files = sorted((f.relative_to(root).as_posix(), f) for f in root.rglob("*.xml"))
    listing = "".join(f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {name}\n" for name, f in files)
    return hashlib.sha256(listing.encode()).hexdigest()
