"""Multiple-choice exam datasets in their original formats, as `QARecord`s with `options`.

Every record has `options` in exam order, `answer_index` into them and `answer` = the right
option's text. Loaders (names as in recipes and `load_mcq`):

  * `headqa`: one HEAD-QA file: the original JSON (`{language, exams: {name: {category, data}}}`),
    or the Hugging Face hub's rows (`name, year, category, qid, qtext, ra, answers, image`) as
    Parquet, JSONL or a JSON list. id `<exam>:<qid>`, category = the exam's (as spelt there:
    "nursery", not "nursing"), language = the original file's, else the source's. Items with an
    image are always skipped and counted ("needs an image"): the question cannot be answered
    from its text.
  * `medqa`: MedQA-USMLE; options an object `{A: text}` (the original release), a list of
    `{key, value}` (BigBio) or a list of texts (lettered in order); category = `meta_info`.
  * `medmcqa`: MedMCQA; `cop` counts from 1 in the original release (1-4) and from 0 on the
    hub (0-3; -1 in the test split, which has no answers). Read per file: a 0 means it counts from
    0, a 4 that it counts from 1 (both at once is an error); a file with neither (only 1-3) is
    read by its format's convention: Parquet from 0 (the hub's), JSON/JSONL from 1. A missing or
    -1 `cop` is skipped and counted ("no answer key"). category = `subject_name`.
  * `pubmedqa`: PubMedQA `ori_pqal.json`; options yes/no/maybe, context = the abstract's parts.
    `pubmedqa_test_ids` gives the 500 PQA-L test ids.
  * `mmlu`: headerless MMLU CSV, or a directory of them; category = subject from the file name.
  * `casimedicos`: CasiMedicos JSONL; question = `full_question` (the case and its question),
    category = `type` (the specialty, in English in both languages).
  * `exam_pt`: Portuguese exam CSV exported from the exams' PDFs (`Número, Texto, Bloco,
    Resposta Correta, Arquivo Prova`), the options inside `Texto`; see `split_options`.

MedQA, MedMCQA and CasiMedicos read JSON Lines, a JSON list (`.json`) or Parquet (`.parquet`).
Bad items (answer not among the options, missing fields, ...) are raised, or counted as skipped
with `on_bad_row: skip`, naming the file and line (JSONL, CSV) or row (JSON, Parquet) and
column. Items that are sound but cannot be asked (an image, an annulled question, no answer
key) are always skipped and counted, with the reason.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medtune.data.loaders import load_source, register_loader
from medtune.data.report import DataError, LoadReport
from medtune.data.tabular import json_objects, jsonl_objects, parquet_objects, parse_json, read_text
from medtune.recipe import SourceConfig
from medtune.records import QARecord

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"
PUBMEDQA_OPTIONS = ("yes", "no", "maybe")


def load_mcq(
    loader: str, path: str | Path, *, language: str = "en", on_bad_row: Literal["error", "skip"] = "error"
) -> tuple[list[QARecord], LoadReport]:
    return load_source(SourceConfig(loader=loader, path=str(path), language=language, on_bad_row=on_bad_row))


class _Bad(Exception):
    """A bad item; `_convert` adds the file and location."""

    def __init__(self, reason: str, column: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.column = reason, column


class _Skip(Exception):
    """A sound item that cannot be asked (it needs an image, was annulled, has no answer key): skipped
    and counted whatever `on_bad_row` says. `row` names it when its line or row number would not."""

    def __init__(self, reason: str, row: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.row = reason, row


# (where: "line" in a text file or "row" in a JSON list, its number, prefix of a bad item's reason, item)
Located = tuple[Literal["line", "row"], int, str, Any]


def _convert(
    path: Path, cfg: SourceConfig, report: LoadReport, items: Iterable[Located], convert: Callable[[Any, int], QARecord]
) -> Iterator[QARecord]:
    """`convert(item, its line or row)` for each item; a bad item goes to `report.reject` with its location."""
    for kind, at, label, item in items:
        where = {kind: at}
        try:
            record = convert(item, at)
        except _Skip as skip:
            report.skipped.append({"file": str(path), "row": skip.row or at, "reason": skip.reason})
            continue
        except _Bad as bad:
            err = DataError(path, label + bad.reason, column=bad.column, **where)
        except KeyError as exc:
            err = DataError(path, f"{label}missing field {exc.args[0]!r}", **where)
        except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong type or form
            err = DataError(path, f"{label}malformed item: {exc}", **where)
        else:
            yield record
            continue
        report.reject(err, cfg.on_bad_row)


def _text(value: Any, what: str) -> str:
    if isinstance(value, dict | list):
        raise _Bad(f"{what}: expected text, got a JSON {type(value).__name__}")
    return "" if value is None else str(value).strip()


def _choice(question: Any, options: Iterable[Any], answer_index: int, **fields: str) -> QARecord:
    question = _text(question, "question")
    options = tuple(_text(o, f"option {i}") for i, o in enumerate(options, 1))
    if not question:
        raise _Bad("empty question")
    if len(options) < 2:
        raise _Bad(f"needs at least 2 options, has {len(options)}")
    if empty := [str(i) for i, o in enumerate(options, 1) if not o]:
        raise _Bad(f"empty option(s) {', '.join(empty)}")
    if not 0 <= answer_index < len(options):
        raise _Bad(f"answer index {answer_index} is out of range for {len(options)} options")
    return QARecord(question, options[answer_index], options=options, answer_index=answer_index, **fields)


def _read_json(path: Path, report: LoadReport) -> Any:
    report.files_read += 1
    return parse_json(read_text(path), path)


def _records(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[Located]:
    """The objects of a Parquet file, a JSON list (.json) or JSON Lines (any other suffix)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        for row, item in parquet_objects(path, report):
            yield "row", row, "", item
    elif suffix == ".json":
        for row, item in json_objects(path, cfg, report):
            yield "row", row, "", item
    else:
        for line, item in jsonl_objects(path, cfg, report):
            yield "line", line, "", item


def _csv_rows(path: Path, report: LoadReport, delimiters: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, fields) for each row; quoted fields may span lines. The delimiter is
    the one of `delimiters` the first line holds most of (a spreadsheet in Portuguese writes ";")."""
    report.files_read += 1
    text = read_text(path)
    first = text.split("\n", 1)[0]
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=max(delimiters, key=first.count))
    end = 0
    try:
        for fields in reader:
            line, end = end + 1, reader.line_num
            if fields:  # csv yields [] for a blank line
                yield line, fields
    except csv.Error as exc:  # e.g. a NUL byte: the rest of the file cannot be trusted
        raise DataError(path, f"malformed CSV: {exc}", line=reader.line_num) from None


# ---- HEAD-QA, PubMedQA (JSON) -----------------------------------------------------------------


@register_loader("headqa")
def load_headqa(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    if path.suffix.lower() == ".json" and not _is_json_list(path):
        items, language = _headqa_exams(path, cfg, report)
    else:  # the hub's rows: each names its exam and category
        items, language = _headqa_rows(path, cfg, report), cfg.language

    def convert(item: dict, at: int) -> QARecord:
        name, qid = item["name"], item["qid"]
        if _has_image(item.get("image")):
            # Not a bad row: the item is fine but cannot be asked without its image.
            raise _Skip("needs an image", row=f"{name}:{qid}")
        # `aid` is a number and `ra` a string in the released files: compare them as text.
        answers = sorted(item["answers"], key=lambda a: int(a["aid"]))
        aids = [str(a["aid"]) for a in answers]
        if str(item["ra"]) not in aids:
            raise _Bad(f"right answer {item['ra']!r} is not among the answer ids {aids}", column="ra")
        return _choice(
            item["qtext"], [a["atext"] for a in answers], aids.index(str(item["ra"])), id=f"{name}:{qid}",
            source="head_qa", language=language, category=_text(item.get("category"), "category"),
        )

    return _convert(path, cfg, report, items, convert)


def _headqa_exams(path: Path, cfg: SourceConfig, report: LoadReport) -> tuple[Iterator[Located], str]:
    """The items of the original JSON, each given its exam's name and category, and the file's language."""
    data = _read_json(path, report)
    if not isinstance(data, dict) or not isinstance(data.get("exams"), dict):
        raise DataError(path, "expected a HEAD-QA object {version, language, exams: {name: exam}}")
    language = str(data.get("language") or cfg.language).lower()  # "es"/"en"; some copies write "EN"

    def items() -> Iterator[Located]:
        for name, exam in data["exams"].items():  # keyed by the exam's name
            if not isinstance(exam, dict) or not isinstance(exam.get("data"), list):
                raise DataError(path, f"exam {name!r}: expected an object with a `data` list")
            for row, item in enumerate(exam["data"], 1):
                report.rows_seen += 1
                qid = item.get("qid") if isinstance(item, dict) else None
                entry = {**item, "name": name, "category": exam.get("category")} if isinstance(item, dict) else item
                yield "row", row, f"exam {name!r}, qid {qid}: ", entry

    return items(), language


def _headqa_rows(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[Located]:
    for kind, at, _, item in _records(path, cfg, report):
        yield kind, at, f"exam {item.get('name')!r}, qid {item.get('qid')}: ", item


def _has_image(image: Any) -> bool:
    """The original files give an image's path or ""; the hub gives null or {bytes, path}."""
    return any(image.values()) if isinstance(image, dict) else bool(image)


def _is_json_list(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


@register_loader("pubmedqa")
def load_pubmedqa(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    data = _read_json(path, report)
    if not isinstance(data, dict):
        raise DataError(path, "expected a PubMedQA object {pmid: {QUESTION, CONTEXTS, final_decision, ...}}")

    def items() -> Iterator[Located]:
        for row, (pmid, item) in enumerate(data.items(), 1):
            report.rows_seen += 1
            yield "row", row, f"pmid {pmid}: ", (pmid, item)

    def convert(entry: tuple[str, dict], row: int) -> QARecord:
        pmid, item = entry
        decision = _text(item["final_decision"], "final_decision")
        if decision not in PUBMEDQA_OPTIONS:
            raise _Bad(f"final_decision {decision!r} is not one of {PUBMEDQA_OPTIONS}", column="final_decision")
        if not isinstance(item["CONTEXTS"], list):
            raise _Bad("expected a list of passages", column="CONTEXTS")
        return _choice(
            item["QUESTION"], PUBMEDQA_OPTIONS, PUBMEDQA_OPTIONS.index(decision), id=pmid, source="pubmedqa",
            language=cfg.language, context="\n".join(_text(c, "CONTEXTS") for c in item["CONTEXTS"]),
        )

    return _convert(path, cfg, report, items(), convert)


def pubmedqa_test_ids(path: str | Path) -> set[str]:
    """The PQA-L test ids, from `test_ground_truth.json` beside `ori_pqal.json` (`path`)."""
    file = Path(path).parent / "test_ground_truth.json"
    if not file.is_file():
        raise DataError(file, "no such file; PubMedQA ships it beside ori_pqal.json")
    truth = parse_json(read_text(file), file)
    return {str(pmid) for pmid in truth}  # {pmid: label}; a plain list of pmids reads the same


# ---- MedQA, MedMCQA, CasiMedicos (JSONL) -------------------------------------------------------


@register_loader("medqa")
def load_medqa(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    def convert(item: dict, line: int) -> QARecord:
        options, key = _lettered(item["options"]), item["answer_idx"]
        letters = sorted(options)  # A..D (E in the 5-option version)
        if key not in options:
            raise _Bad(f"answer_idx {key!r} is not one of the options {letters}", column="answer_idx")
        record = _choice(
            item["question"], [options[k] for k in letters], letters.index(key), id=f"{path.stem}:{line}",
            source="medqa", language=cfg.language, category=_text(item.get("meta_info"), "meta_info"),
        )
        if _text(item["answer"], "answer") != record.answer:
            raise _Bad(f"answer {item['answer']!r} is not option {key}'s text {record.answer!r}", column="answer")
        return record

    return _convert(path, cfg, report, _records(path, cfg, report), convert)


def _lettered(options: Any) -> dict[str, Any]:
    """MedQA's options as {letter: text}, from an object {A: text} (the original release), a list of
    {key, value} (BigBio's copy) or a list of texts (lettered A, B, ... in order)."""
    if isinstance(options, dict):
        return options
    if isinstance(options, list) and all(isinstance(o, dict) for o in options):
        return {str(o["key"]): o["value"] for o in options}
    if isinstance(options, list):
        return dict(zip(LETTERS, options))
    raise _Bad(f"expected an object {{A: text}} or a list, got {type(options).__name__}", column="options")


@register_loader("medmcqa")
def load_medmcqa(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    items = list(_records(path, cfg, report))
    base = _cop_base(path, [item for *_, item in items])

    def convert(item: dict, line: int) -> QARecord:
        cop = _cop(item)
        if cop is None:
            raise _Skip("no answer key (cop missing or -1, as in the test split)")
        if not base <= cop <= base + 3:
            raise _Bad(f"cop {item['cop']!r} is not {base}-{base + 3} (the right option; this file counts from {base})",
                       column="cop")
        return _choice(
            item["question"], [item[k] for k in ("opa", "opb", "opc", "opd")], cop - base,
            id=_text(item.get("id"), "id") or f"{path.stem}:{line}", source="medmcqa", language=cfg.language,
            category=_text(item.get("subject_name"), "subject_name"),
        )

    return _convert(path, cfg, report, items, convert)


def _cop(item: dict) -> int | None:
    """The right option's number; None when the item has no answer (the hub writes -1, the original omits it).
    Raises ValueError (a malformed item) when it is not a whole number."""
    cop = item.get("cop")
    if cop is None or str(cop).strip() in ("", "-1"):
        return None
    if isinstance(cop, float) and not cop.is_integer():
        raise ValueError(f"cop {cop!r} is not a whole number")
    return int(cop)


def _cop_base(path: Path, items: list[Any]) -> int:
    """What `cop` counts from in this file: 0 (the hub) or 1 (the original release); see the module doc."""
    values = set()
    for item in items:
        try:
            values.add(_cop(item))
        except (ValueError, TypeError, AttributeError):  # reported with its row by the loader
            continue
    if {0, 4} <= values:
        raise DataError(path, "cop holds both 0 and 4: it cannot count from both 0 and 1", column="cop")
    if 0 in values or 4 in values:
        base, why = (0, "a 0 occurs") if 0 in values else (1, "a 4 occurs")
    else:
        base = 0 if path.suffix.lower() == ".parquet" else 1
        why = f"only 1-3 occur: the {'hub' if base == 0 else 'original'} convention for its format"
    log.info("%s: cop counts from %d (%s)", path, base, why)
    return base


@register_loader("casimedicos")
def load_casimedicos(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    def convert(item: dict, line: int) -> QARecord:
        # By number, not as listed: one item of en/train.jsonl lists option "5" first.
        keys = sorted(item["options"], key=int)
        # Exams with 4 options still carry a 5th, missing: the text "nan" in the released files (a
        # pandas NaN written out), or null. Missing options at the end are dropped; one before a
        # present option would shift the letters of the rest, so `_choice` rejects it as empty.
        texts = [_text(item["options"][k], f"option {k}") for k in keys]
        texts = ["" if t == "nan" else t for t in texts]
        while texts and not texts[-1]:
            texts.pop()
        key, present = str(item["correct_option"]), keys[: len(texts)]
        if key not in present:
            raise _Bad(f"correct_option {key!r} is not one of the options {present}", column="correct_option")
        return _choice(
            item["full_question"], texts, keys.index(key), id=f"{path.stem}:{line}", source="casimedicos",
            language=cfg.language, category=_text(item.get("type"), "type"),
        )

    return _convert(path, cfg, report, _records(path, cfg, report), convert)


# ---- MMLU, Portuguese exams (CSV) --------------------------------------------------------------


@register_loader("mmlu")
def load_mmlu(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(path, "directory holds no CSV files")
    for file in files:
        yield from _mmlu_file(file, cfg, report)


def _mmlu_file(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    subject = re.sub(r"_(?:test|dev|val)$", "", path.stem)  # clinical_knowledge_test.csv -> clinical_knowledge

    def rows() -> Iterator[Located]:
        for row, (line, fields) in enumerate(_csv_rows(path, report), 1):
            report.rows_seen += 1
            yield "line", line, "", (row, fields)

    def convert(entry: tuple[int, list[str]], line: int) -> QARecord:
        row, fields = entry
        if len(fields) != 6:
            raise _Bad(f"expected 6 fields (question, A, B, C, D, answer letter), got {len(fields)}")
        letter = fields[5].strip().upper()
        if letter not in ("A", "B", "C", "D"):
            raise _Bad(f"answer {fields[5]!r} is not a letter A-D", column="answer")
        return _choice(fields[0], fields[1:5], "ABCD".index(letter), id=f"{subject}:{row}", source="mmlu",
                       language=cfg.language, category=subject)

    return _convert(path, cfg, report, rows(), convert)


EXAM_PT_TEXT, EXAM_PT_ANSWER = "Texto", "Resposta Correta"
EXAM_PT_AREA, EXAM_PT_EXAM = "Bloco", "Arquivo Prova"  # optional: the question's area and the exam it is from

# An option's marker: "(A)" anywhere (PDF exports run the options on in the question's paragraph,
# at times glued to the word before, at times in lower case), or a letter starting a line: "A) ",
# "B. ", "C - ", "d: " (after ".", ":" and dashes a space must follow, so that "E-mail" is not option
# E), or, the least sure, "A) " inside a line.
_MARKER = re.compile(
    r"\(\s?(?P<paren>[A-J])\s?\)"
    r"|^[ \t]*(?P<line>[A-J])(?:\)|[ \t]*[.:\-\u2013\u2014](?=\s))"
    r"|(?<![^\s.:;?!])(?P<bare>[A-J])\)(?=\s)",
    re.IGNORECASE | re.MULTILINE,
)
# Page furniture a PDF export leaves in the text: "(CONTINUA)", "(CONTINUAÇÃO DA QUESTÃO 44)", the
# same unbracketed in capitals, "Página 3 de 12".
_PAGE_NOTE = re.compile(
    r"\(\s*continua(?:ção|cao)?\b[^()]*\)"
    r"|(?-i:\bCONTINUA(?:ÇÃO|CAO)?\b(?:[ \t]+(?:NA|NO|DA|DO)[ \t]+[A-ZÀ-Ý]+(?:[ \t]+(?:[A-ZÀ-Ý]+|\d+))?)?)"
    r"|\bp[áa]g(?:ina|\.)[ \t]*\d+(?:[ \t]*(?:de|/)[ \t]*\d+)?",
    re.IGNORECASE,
)
# A word broken at a line's end: "estran- geiras", "insulino-\ndependente" ("pré- e pós-operatório" is
# left alone). Joined without the hyphen when the whole word occurs in the file, else with it: most
# breaks the PDFs keep fall in compounds (beta-lactâmico).
_HYPHENATION = re.compile(r"(?P<left>[^\W\d_]+)-(?:[ \t]*\n[ \t]*|[ \t]+)(?!(?:e|ou)\b)(?P<right>[a-zà-öø-ÿ]{2}[^\W\d_]*)")
# Soft hyphens and zero-width characters go; ligatures (ﬁ, ﬂ, ...) are spelt out; no-break spaces are spaces.
_INVISIBLE = {0xAD: None, 0x200B: None, 0x200C: None, 0x200D: None, 0xFEFF: None, 0xA0: " "} | {
    c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFB00, 0xFB07)
}
# What follows the last option but is not part of it: the next question's figure or table, set off by
# a wide gap or a blank line, or the next question's heading.
_AFTER_LAST = re.compile(r"(?<=\S)[ \t]{3,}(?=\S)|\n[ \t]*\n|\bQUESTÃO[ \t]+\d+")
# An answer key that annuls the question: "ANULADA", "Questão anulada", "nula", "cancelada" (or one
# with no letter or digit at all: "", "*", "-").
_ANNULLED = re.compile(r"\b(?:anulad|cancelad|nul[ao]\b)", re.IGNORECASE)
_ANSWER_WORDS = {"LETRA", "ALTERNATIVA", "OPÇÃO", "OPCAO", "RESPOSTA"}  # "Letra C" is C


@dataclass(frozen=True)
class _Marker:
    letter: str  # upper case
    start: int  # where the marker starts: the text before it belongs to what comes before
    end: int  # where its option's text starts
    doubt: int  # 0: "(A)" or a line's "A)"; 1: "(E)" glued to a word ("etambutol(E)"); 2: "A)" inside a line

    @classmethod
    def of(cls, m: re.Match, text: str) -> _Marker:
        glued = m["paren"] is not None and m.start() > 0 and text[m.start() - 1].isalnum()
        doubt = 2 if m["bare"] else int(glued)
        return cls((m["paren"] or m["line"] or m["bare"]).upper(), m.start(), m.end(), doubt)


def split_options(text: str, count: int | None = None, words: Collection[str] = ()) -> tuple[str, tuple[str, ...]]:
    """(question, options) of an exam question whose options are lettered A, B, ... in its text.

    The options are the last run of markers A, B, C, ... in order that reaches D (or `count`, the
    number of options the exam's questions have: a longer run is cut there, the rest belonging to
    its last option). Earlier runs are figure labels or a lettered list in the question. Doubtful
    markers (glued to a word, or "A)" inside a line) are used only when no run is complete without
    them. Without a complete run, the longest. What follows the last option after a wide gap or a
    blank line is dropped (`_AFTER_LAST`), as are page notes (`_PAGE_NOTE`); words broken at a line's
    end are joined (`_HYPHENATION`; `words`: the lower-case words known whole). Raises ValueError
    when no run of two or more options, or of `count`, is found.
    """
    text = _clean(text, words)
    run = _pick_run([_Marker.of(m, text) for m in _MARKER.finditer(text)], count)
    if not run:
        raise ValueError("no options found: expected (A), (B), ... in the text, or lines starting with A), A. or A -")
    if len(run) < 2:
        raise ValueError("only option A found, no B after it")
    if count and len(run) < count:
        raise ValueError(f"only {len(run)} options (A-{LETTERS[len(run) - 1]}) found; this exam's questions have {count}")
    ends = [m.start for m in run[1:]] + [len(text)]
    options = [text[m.end : end] for m, end in zip(run, ends, strict=True)]
    last = options[-1].strip()
    options[-1] = last[: cut.start()] if (cut := _AFTER_LAST.search(last)) else last
    question = "\n".join(" ".join(line.split()) for line in text[: run[0].start].splitlines())
    return re.sub(r"\n{2,}", "\n", question).strip(), tuple(" ".join(o.split()) for o in options)


def _clean(text: str, words: Collection[str]) -> str:
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n")

    def join(m: re.Match) -> str:
        return m["left"] + ("" if (m["left"] + m["right"]).lower() in words else "-") + m["right"]

    return _HYPHENATION.sub(join, _PAGE_NOTE.sub(" ", text))


def _runs(markers: list[_Marker]) -> list[list[_Marker]]:
    """From each A, the run A, B, C, ...: each the first marker of the next letter after the one before."""
    runs = []
    for i, first in enumerate(markers):
        if first.letter == "A":
            run = [first]
            for m in markers[i + 1 :]:
                if len(run) < len(LETTERS) and m.letter == LETTERS[len(run)]:
                    run.append(m)
            runs.append(run)
    return runs


def _pick_run(markers: list[_Marker], count: int | None) -> list[_Marker]:
    need = count or 4
    found = [_runs([m for m in markers if m.doubt <= doubt]) for doubt in (0, 1, 2)]
    for runs in found:
        if complete := [r for r in runs if len(r) >= need]:
            return complete[-1][:count] if count else complete[-1]
    # The longest; of equals, the surest and then the last.
    return max((r for runs in found for r in reversed(runs)), key=len, default=[])


def _answer_letter(value: str) -> str:
    """The letter of a `Resposta Correta` ("C", " c ", "(C)", "Letra C"). Annulled questions and those
    with two right answers ("A/C", "B ou D") are skipped."""
    text = value.strip()
    if not re.search(r"[^\W_]", text) or _ANNULLED.search(text):
        raise _Skip(f"annulled: {EXAM_PT_ANSWER} is {text!r}" if text else f"no {EXAM_PT_ANSWER}")
    words = [w for w in re.split(r"[\W_]+", text.upper()) if w and w not in _ANSWER_WORDS]
    if len(words) == 1 and words[0] in set(LETTERS):
        return words[0]
    if len(words) > 1 and set(words) <= set(LETTERS) | {"OU"}:  # "A e C": "E" is "and" or a letter, both mean two
        raise _Skip(f"more than one right answer: {EXAM_PT_ANSWER} is {text!r}")
    raise _Bad(f"answer {value!r} is not a letter", column=EXAM_PT_ANSWER)


def _column_key(name: str) -> str:
    """A header name compared without case, accents or extra spaces: "Numero" finds "Número"."""
    return " ".join("".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c)).casefold().split())


@register_loader("exam_pt")
def load_exam_pt(path: Path, cfg: SourceConfig, report: LoadReport) -> Iterator[QARecord]:
    rows = _csv_rows(path, report, delimiters=",;\t")
    names = next(rows, (1, []))[1]
    header = [_column_key(h) for h in names]
    for column in (EXAM_PT_TEXT, EXAM_PT_ANSWER):
        if _column_key(column) not in header:  # the wrong file, not a bad row: an error even with on_bad_row: skip
            raise DataError(path, f"column {column!r} not found; available columns: {names}", line=1, column=column)
    at = {column: header.index(_column_key(column)) for column in (EXAM_PT_TEXT, EXAM_PT_ANSWER, EXAM_PT_AREA,
                                                                    EXAM_PT_EXAM) if _column_key(column) in header}
    rows = list(rows)
    report.rows_seen += len(rows)

    def cell(fields: list[str], column: str) -> str:
        return fields[at[column]].strip() if column in at and at[column] < len(fields) else ""

    words = {w.lower() for _, fields in rows for w in re.findall(r"[^\W\d_]+", cell(fields, EXAM_PT_TEXT))}
    # How many options the questions of each exam have: most of them show it, and it tells a row
    # cut short (too few) from a label such as "(E)" read after the last option (too many).
    found: defaultdict[str, Counter] = defaultdict(Counter)
    for _, fields in rows:
        try:
            count = len(split_options(cell(fields, EXAM_PT_TEXT), words=words)[1])
        except ValueError:
            continue
        found[cell(fields, EXAM_PT_EXAM)][count] += 1
    usual = {exam: max(counts, key=lambda n: (counts[n], n)) for exam, counts in found.items()}

    def convert(fields: list[str], line: int) -> QARecord:
        if not any(f.strip() for f in fields):
            raise _Skip("empty row")
        if [_column_key(f) for f in fields] == header:
            raise _Skip("repeated header row")
        if len(fields) < len(header) or any(f.strip() for f in fields[len(header) :]):
            raise _Bad(f"row has {len(fields)} fields; the header has {len(header)}")
        letter = _answer_letter(fields[at[EXAM_PT_ANSWER]])
        try:
            question, options = split_options(fields[at[EXAM_PT_TEXT]], usual.get(cell(fields, EXAM_PT_EXAM)), words)
        except ValueError as exc:
            raise _Bad(str(exc), column=EXAM_PT_TEXT) from None
        if letter not in LETTERS[: len(options)]:
            raise _Bad(f"answer {fields[at[EXAM_PT_ANSWER]]!r} is not one of the options "
                       f"{', '.join(LETTERS[: len(options)])}", column=EXAM_PT_ANSWER)
        return _choice(question, options, LETTERS.index(letter), id=f"{path.stem}:{line}", source="exam_pt",
                       language="pt", category=cell(fields, EXAM_PT_AREA))

    return _convert(path, cfg, report, (("line", line, "", fields) for line, fields in rows), convert)
