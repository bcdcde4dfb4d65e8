"""Synthetic question-answer pairs generated from passages of medical text, for training data.

Passages come from a passage JSONL (`{id, text}`; also `raw_text`/`document_id` as in the
Spanish clinical text exports, optional `title`/`topic`, `url`, `lang`) or from the answers
of any QA source medtune loads. An instruction-tuned LLM is asked, in the passage's language,
for `per_passage` questions answerable from the passage, each with its answer, as
"Pregunta: … / Respuesta: …" lines (JSON is accepted too). Generations go through the same
content-hash disk cache as translation, so a rerun regenerates nothing.

Every pair that is not kept is counted by reason: malformed generations, empty fields,
duplicates (exact after normalising the question, and near-duplicates — word-set Jaccard —
among the questions about one passage; across passages only identical question and answer,
since "¿Qué edad tiene el paciente?" about two different cases is two examples) and answers
the passage does not support (too few of the answer's content words occur in the passage: a
lexical check, because embedding models belong to the retrieval stage, which data does not
import). Records are QARecords with `context` = the passage and `focus` = its title or id
(so a split keeps all questions about one passage together); `OUT.provenance.json` says how
they were made.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from medtune.data.generation import (
    Generate,
    GenerationCache,
    LazyGenerate,
    cache_file,
    chat_generator,
    content_key,
    generate_cached,
)
from medtune.data.loaders import infer_loader, load_source
from medtune.data.passages import Passage, is_passage_jsonl, read_passage_jsonl
from medtune.data.report import DataError, LoadReport
from medtune.data.split import normalize
from medtune import DEFAULT_MODEL
from medtune.io import write_atomic, write_json
from medtune.recipe import SourceConfig
from medtune.records import QARecord

TEMPLATE_VERSION = "synth-v1"  # part of every cache key: change it with the prompts
PROMPTS = {
    "en": (
        "Read the medical text below and write {n} question(s) that the text answers, each followed by its answer "
        "taken from the text. Write each pair exactly like this:\nQuestion: ...\nAnswer: ...\n\nText:\n{passage}"
    ),
    "es": (
        "Lee el texto médico siguiente y escribe {n} pregunta(s) que el texto responda, cada una seguida de su "
        "respuesta tomada del texto. Escribe cada par exactamente así:\nPregunta: ...\nRespuesta: ...\n\nTexto:\n{passage}"
    ),
    "pt": (
        "Leia o texto médico abaixo e escreva {n} pergunta(s) que o texto responda, cada uma seguida da sua "
        "resposta retirada do texto. Escreva cada par exatamente assim:\nPergunta: ...\nResposta: ...\n\nTexto:\n{passage}"
    ),
}
DEFAULT_GENERATION = {"max_new_tokens": 256, "num_beams": 1, "do_sample": False}


# --- passages ------------------------------------------------------------------------------

def read_passages(source: Path, *, loader: str | None, language: str | None, on_bad_row: Literal["error", "skip"],
                  report: LoadReport) -> list[Passage]:
    """A passage JSONL (loader "passages", or None and the file is one), or the answers of a QA source."""
    if loader == "passages" or (loader is None and is_passage_jsonl(source)):
        return read_passage_jsonl(source, report, on_bad_row, language)
    cfg = SourceConfig(loader=loader or infer_loader(source), path=str(source), language=language or "en", on_bad_row=on_bad_row)
    records, qa_report = load_source(cfg)
    report.loader, report.files_read, report.rows_seen, report.skipped = cfg.loader, qa_report.files_read, qa_report.rows_seen, qa_report.skipped
    return [Passage(id=r.id, text=r.answer, lang=language or r.language, title=r.focus, url=r.url) for r in records if r.answered]


def truncate(text: str, max_chars: int) -> str:
    """At most `max_chars`, cut after the last sentence end (or space) inside the limit."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind(".\n"))
    return cut[: end + 1] if end > max_chars // 2 else cut[: cut.rfind(" ")].rstrip()


# --- parsing -------------------------------------------------------------------------------

_Q = r"question|pregunta|pergunta"
_A = r"answer|respuesta|resposta"
# A label: "Question"/"Pregunta"/"Pergunta" (or answer) after whitespace, or Q/A/P/R at the start of a
# line; list markers, numbering and markdown bold around it are allowed.
_PREFIX = r"[*#>\-\t ]*(?:\d+[.)]\s*)?\**\s*"
_LABEL = re.compile(
    rf"(?:^{_PREFIX}(?:(?P<qs>q|p)|(?P<as>a|r))|(?:^|(?<=\s)){_PREFIX}(?:(?P<q>{_Q})|(?P<a>{_A})))\s*\d*\s*\**\s*[:：]\**",
    re.IGNORECASE | re.MULTILINE,
)
_JSON_KEYS = {"question": "q", "pregunta": "q", "pergunta": "q", "answer": "a", "respuesta": "a", "resposta": "a"}


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """(question, answer) pairs in a generation: labelled lines, or JSON objects with question and
    answer keys. A label without its partner is ignored; no pair at all means a malformed generation."""
    if (pairs := _json_pairs(text)):
        return pairs
    labels = list(_LABEL.finditer(text))
    pairs, question = [], None
    ends = [m.start() for m in labels[1:]] + [len(text)]
    for this, end in zip(labels, ends, strict=False):  # no labels: no ends but the text's
        # A value runs to the next label or a blank line (after which models add notes).
        value = _clean(text[this.end() : end].split("\n\n")[0])
        if this["q"] or this["qs"]:
            question = value
        elif question is not None:
            pairs.append((question, value))
            question = None
    return pairs


def _json_pairs(text: str) -> list[tuple[str, str]]:
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    if start < 0:
        return []
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except (ValueError, RecursionError):  # malformed, a 5,000-digit number, nesting too deep: read it as text
        return []
    pairs = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict):
            fields = {_JSON_KEYS[k.lower()]: v for k, v in item.items() if k.lower() in _JSON_KEYS and isinstance(v, str)}
            if {"q", "a"} <= fields.keys():
                pairs.append((_clean(fields["q"]), _clean(fields["a"])))
    return pairs


def _clean(value: str) -> str:
    return value.strip().strip("*").strip().strip("\"'“”«»").strip()


# --- filters -------------------------------------------------------------------------------

# Function words of the three languages: not evidence that the passage supports an answer.
_STOPWORDS = frozenset(
    "the and for are was were with that this from have has had not but its their they them which who what when where "
    "how can may also been being into than then there these those such other more most some any all one two per "
    "los las del por para con una uno unos unas que como pero sus sin sobre entre este esta estos estas ese esa "
    "fue son ser han hay muy mas tambien cuando donde cual cuales desde hasta tiene tienen puede pueden segun "
    "dos das nos nas pelo pela pelos pelas com uma umas uns mas seu sua seus suas sem sobre entre este esta isso "
    "foi sao ter tem pode podem quando onde qual quais ate tambem muito".split()
)


def _fold(text: str) -> str:
    """Lowercase without accents, so that "médico" in the answer meets "medico" in the passage."""
    return "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"\w+", _fold(text)) if (len(w) >= 3 or w.isdigit()) and w not in _STOPWORDS]


def support(answer: str, passage: str) -> float | None:
    """Fraction of the answer's content words found in the passage; a word of six letters or more
    also counts when a passage word shares its first five (inflections: fractura/fracturas).
    None when the answer has no content words."""
    words = content_words(answer)
    if not words:
        return None
    vocab = set(content_words(passage))
    prefixes = {w[:5] for w in vocab if len(w) >= 5}
    return sum(w in vocab or (len(w) >= 6 and w[:5] in prefixes) for w in words) / len(words)


def question_key(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", normalize(question)).split())


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


# --- the pipeline --------------------------------------------------------------------------

def synthesize_records(
    passages: Sequence[Passage],
    generate: Generate,
    cache: GenerationCache,
    *,
    model_id: str,
    source_name: str,
    per_passage: int = 1,
    generation: dict | None = None,
    batch_size: int = 8,
    min_support: float = 0.7,
    near_duplicate: float = 0.8,
    progress: bool = True,
) -> tuple[list[QARecord], dict]:
    """Records kept and counts. `generate` answers a batch of prompts (user messages)."""
    for p in passages:
        if p.lang not in PROMPTS:
            raise ValueError(f"passage {p.id}: no prompt for language {p.lang!r}; choose one of {list(PROMPTS)}")
    settings = json.dumps(generation or {}, sort_keys=True)
    prompts = [PROMPTS[p.lang].format(n=per_passage, passage=p.text) for p in passages]
    keys = [content_key(model_id, TEMPLATE_VERSION, settings, p.lang, str(per_passage), p.text) for p in passages]
    outputs, counts = generate_cached(prompts, keys, generate, cache, batch_size=batch_size, desc="synthesize", progress=progress)

    records, dropped, seen_pairs = [], Counter(), set()
    pairs_parsed = 0
    for passage, output in zip(passages, outputs, strict=True):
        pairs = parse_pairs(output)
        if not pairs:
            dropped["malformed"] += 1
            continue
        pairs_parsed += len(pairs)
        dropped["extra_pairs"] += max(0, len(pairs) - per_passage)
        seen_keys: set[str] = set()  # this passage's kept questions, normalised
        seen_questions: list[set[str]] = []  # and as word sets
        for question, answer in pairs[:per_passage]:
            key = question_key(question)
            words = set(key.split())
            if not key or not answer:
                reason = "empty"
            elif key in seen_keys or (key, normalize(answer)) in seen_pairs:
                reason = "duplicate"
            elif any(jaccard(words, seen) >= near_duplicate for seen in seen_questions):
                reason = "near_duplicate"
            elif (score := support(answer, passage.text)) is None:
                reason = "uninformative"
            elif score < min_support:
                reason = "unsupported"
            else:
                reason = None
            if reason:
                dropped[reason] += 1
                continue
            seen_keys.add(key)
            seen_questions.append(words)
            seen_pairs.add((key, normalize(answer)))
            records.append(QARecord(
                question=question, answer=answer, id=f"{passage.id}#{len(seen_questions)}", source=source_name,
                url=passage.url, focus=passage.title or passage.id, language=passage.lang, context=passage.text,
            ))
    report = {"passages": len(passages), "generations": counts, "pairs_parsed": pairs_parsed,
              "records": len(records), "dropped": dict(sorted((k, v) for k, v in dropped.items() if v))}
    return records, report


def synthesize(
    source: str | Path,
    out: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    language: str | None = None,
    per_passage: int = 1,
    loader: str | None = None,
    batch_size: int = 8,
    generation: dict | None = None,
    min_chars: int = 80,
    max_chars: int = 2000,
    max_passages: int | None = None,
    min_support: float = 0.7,
    near_duplicate: float = 0.8,
    on_bad_row: Literal["error", "skip"] = "error",
    cache_dir: str | Path | None = None,
    generate: Generate | None = None,
    progress: bool = True,
) -> dict:
    """Generate QA pairs from `source`'s passages; write `out` (JSONL QARecords) and
    `OUT.provenance.json` atomically; return the report. `language` overrides the passages' own
    (default en). `generate` replaces the model (a batch of prompts in, generations out); `model`
    still names the cache and the provenance."""
    start = time.monotonic()
    source, out = Path(source), Path(out)
    if per_passage < 1:
        raise ValueError(f"per_passage must be at least 1, got {per_passage}")
    if language is not None and language not in PROMPTS:
        raise ValueError(f"no prompt for language {language!r}; choose one of {list(PROMPTS)}")
    if not source.exists():
        raise DataError(source, "no such file or directory")
    generation = DEFAULT_GENERATION | (generation or {})
    load_report = LoadReport(source=str(source), loader="")  # read_passages names the loader it used
    passages, skipped, seen, truncated = [], Counter(), set(), 0
    for p in read_passages(source, loader=loader, language=language, on_bad_row=on_bad_row, report=load_report):
        text = truncate(p.text.strip(), max_chars)
        if len(text) < min_chars:
            skipped["too_short"] += 1
        elif normalize(text) in seen:
            skipped["duplicate"] += 1
        elif max_passages is not None and len(passages) >= max_passages:
            skipped["over_limit"] += 1
        else:
            seen.add(normalize(text))
            truncated += len(text) < len(p.text.strip())
            passages.append(replace(p, text=text))
    if generate is None:
        generate = LazyGenerate(lambda: chat_generator(model, generation))

    cache = GenerationCache(cache_file("synth", model, TEMPLATE_VERSION, cache_dir))
    records, report = synthesize_records(
        passages, generate, cache, model_id=model, source_name=source.name, per_passage=per_passage,
        generation=generation, batch_size=batch_size, min_support=min_support, near_duplicate=near_duplicate,
        progress=progress,
    )
    rows = [asdict(r) | {"options": list(r.options), "synthetic": True} for r in records]
    write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    report = {
        "source": str(source), "out": str(out), "model": model, **report,
        "passages_skipped": dict(sorted(skipped.items())), "passages_truncated": truncated,
        "skipped_rows": load_report.skipped, "cache": str(cache.path), "seconds": round(time.monotonic() - start, 2),
    }
    languages = sorted({p.lang for p in passages})
    write_json(provenance_path(out), {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model,
        "prompt_version": TEMPLATE_VERSION,
        "prompts": {lang: PROMPTS[lang] for lang in languages},
        "generation": generation,
        "per_passage": per_passage,
        "source": {"path": str(source.resolve()), "sha256": sha256_path(source), "loader": load_report.loader},
        "filters": {"min_chars": min_chars, "max_chars": max_chars, "max_passages": max_passages,
                    "min_support": min_support, "support": "fraction of answer content words in the passage",
                    "near_duplicate": near_duplicate, "dedup": "normalised question per passage (exact and word-set "
                    "Jaccard), normalised question+answer across passages"},
        "counts": {k: report[k] for k in ("passages", "passages_skipped", "passages_truncated", "generations",
                                          "pairs_parsed", "records", "dropped")},
    })
    return report


def provenance_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.provenance.json")


def sha256_path(path: Path) -> str:
    """A file's sha256; for a folder (MedQuAD), the sha256 over its files' relative paths and hashes."""
    if path.is_file():
        return _sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{_sha256_file(f)}\n".encode())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
