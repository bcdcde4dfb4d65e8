"""Machine translation of an English QA dataset into Spanish or Portuguese, for training data.

The model is a seq2seq translation model (Marian opus-mt, NLLB-200, M2M100: language codes
are set from the tokenizer) or an instruction-tuned LLM given a translation prompt. Texts are
cut into sentences (long answers do not fit a translation model's window, and short inputs
batch well), translated through a disk cache keyed by content hash — a rerun after a kill
redoes nothing already translated — and joined back. The output, written atomically at the
end, is JSONL: the QARecord fields (`id` kept, `language` = the target) plus `source_id`,
`translated_from`, `machine_translated`, `mt_model` and `mt_flags`, which medtune's `jsonl`
loader reads back (it ignores columns that are not record fields).

Quality flags, counted by reason and written with the record (dropped only on request):
`numbers` (a number of the source is missing from the translation; decimal commas and
thousands separators are normalised), `units` (a quantity such as "0.6 mg" is not in the
translation with the same number and unit), `short` (under `min_length_ratio` of the
source's characters), `empty`, `identical` (returned untranslated).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from decimal import Decimal
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
from medtune.data.split import normalize
from medtune.sentences import split_sentences
from medtune.io import write_atomic
from medtune import DEFAULT_MODEL
from medtune.recipe import SourceConfig
from medtune.records import QARecord

LANGUAGES = {"en": "English", "es": "Spanish", "pt": "Portuguese"}
NLLB_CODES = {"en": "eng_Latn", "es": "spa_Latn", "pt": "por_Latn"}
TRANSLATABLE = ("question", "answer", "context", "rejected", "focus", "options")
# Part of every cache key: change it when the prompt or the model setup changes, so that old
# translations are not reused for the new ones.
TEMPLATE_VERSION = "mt-v1"
LLM_PROMPT = (
    "Translate the following medical text from {source} to {target}. Keep numbers, units, drug names "
    "and abbreviations exactly as written. Reply with the translation only.\n\n{text}"
)
DEFAULT_GENERATION = {"max_new_tokens": 256, "num_beams": 1, "do_sample": False}


# --- quality checks ---------------------------------------------------------------------

_SEPARATORS = ".,\u00a0\u202f\u2009"  # decimal or thousands: point, comma, (narrow) no-break and thin spaces
_NUMBER = re.compile(rf"\d+(?:[{_SEPARATORS}]\d+)*")
# Unit spellings -> one canonical form; the same abbreviations are used in en, es and pt
# (IU is UI in Spanish and Portuguese).
_UNITS = {
    "mg": "mg", "g": "g", "kg": "kg", "ng": "ng", "pg": "pg", "mcg": "µg", "µg": "µg", "μg": "µg", "ug": "µg",
    "ml": "ml", "l": "l", "dl": "dl", "µl": "µl", "μl": "µl", "mmol": "mmol", "µmol": "µmol", "μmol": "µmol",
    "mol": "mol", "meq": "meq", "mmhg": "mmhg", "cm": "cm", "mm": "mm", "µm": "µm", "μm": "µm", "nm": "nm",
    "kcal": "kcal", "iu": "iu", "ui": "iu", "u": "u", "h": "h", "min": "min", "%": "%", "°c": "°c", "°f": "°f",
    "bpm": "bpm",
}
_UNIT = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
_WORD_END = r"(?![^\W\d_])"  # not followed by a letter
# A quantity: a number and its unit(s), e.g. "2,5 mg/dL".
_QUANTITY = re.compile(rf"({_NUMBER.pattern})\s?((?:{_UNIT})(?:/(?:{_UNIT}))*){_WORD_END}", re.IGNORECASE)


def number_values(token: str) -> set[Decimal]:
    """The values a number token can mean: "1,000" is 1000 in English and 1 in Spanish, "2,5" and
    "2.5" are 2.5. Tried with each of point and comma as the decimal separator; the other
    separators must then split the integer part into groups of three digits."""
    values = set()
    for decimal_sep in ".,":
        head, sep, frac = token.partition(decimal_sep)
        groups = re.split(f"[{_SEPARATORS}]", head)
        if any(len(g) != 3 for g in groups[1:]) or (sep and not frac.isdigit()):
            continue
        values.add(Decimal("".join(groups) + (f".{frac}" if sep else "")).normalize())
    return values


def missing_numbers(source: str, translation: str) -> list[str]:
    found = set().union(*(number_values(t) for t in _NUMBER.findall(translation)))
    return [t for t in dict.fromkeys(_NUMBER.findall(source)) if not number_values(t) & found]


def missing_units(source: str, translation: str) -> list[str]:
    """Quantities of the source (e.g. "5 mg/dL") that the translation does not have with the same
    number and unit; "0,6 g" does not stand for "0.6 mg"."""

    def quantities(text: str) -> list[tuple[str, set[Decimal], tuple[str, ...]]]:
        return [(m[0], number_values(m[1]), tuple(_UNITS[u.lower()] for u in m[2].split("/"))) for m in _QUANTITY.finditer(text)]

    found = quantities(translation)
    return list(dict.fromkeys(
        text for text, values, units in quantities(source) if not any(units == u and values & v for _, v, u in found)
    ))


def quality_flags(source: str, translation: str, min_length_ratio: float) -> tuple[list[str], list[str]]:
    """(reasons, missing number/unit tokens) for one translated text."""
    if not source.strip():
        return [], []
    if not translation.strip():
        return ["empty"], []
    flags, missing = [], []
    if (numbers := missing_numbers(source, translation)):
        flags.append("numbers")
        missing += numbers
    if (units := missing_units(source, translation)):
        flags.append("units")
        missing += units
    # Very short sources ("Yes.") vary too much in length to judge.
    if len(source.strip()) >= 20 and len(translation.strip()) < min_length_ratio * len(source.strip()):
        flags.append("short")
    # Drug names and one-word answers legitimately stay the same; sentences should not.
    if normalize(source) == normalize(translation) and len(re.findall(r"[^\W\d_]{2,}", source)) >= 3:
        flags.append("identical")
    return flags, missing


# --- segmenting and model backends ---------------------------------------------------------

def segment(text: str, language: str) -> list[list[str]]:
    """Sentences per line (lines kept, so that lists and paragraphs survive the round trip)."""
    return [split_sentences(line, language) if line.strip() else [] for line in text.split("\n")]


def join(lines: list[list[str]]) -> str:
    return "\n".join(" ".join(sentences) for sentences in lines).strip()


_LABEL = re.compile(r"^\s*(?:translation|traducción|traduccion|tradução|traducao)\s*:\s*", re.IGNORECASE)


def clean_output(text: str) -> str:
    """An LLM's translation of one sentence: its first line, without a "Translation:" label or quotes."""
    lines = [line for line in text.strip().split("\n") if line.strip()]
    text = _LABEL.sub("", lines[0] if lines else "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'«“":
        text = text[1:-1].strip()
    return text


def detect_kind(model: str) -> Literal["seq2seq", "llm"]:
    """From the config (or a run's model card) alone, so that a fully cached rerun loads no weights."""
    from medtune.models import read_card, resolve_model

    folder, card = read_card(model)
    kind = card.get("kind") or resolve_model(str(folder or model)).kind
    return "seq2seq" if kind == "seq2seq" else "llm"


def seq2seq_generator(model: str, source_lang: str, target_lang: str, generation: dict) -> Generate:
    """A translation model's generate function, with the language codes its tokenizer knows."""
    from medtune.predict import Predictor

    predictor = Predictor.from_pretrained(model)
    if not predictor.is_seq2seq:
        raise ValueError(f"{model}: not a seq2seq model; use kind 'llm' for a decoder-only model")
    tok = predictor.tokenizer
    vocab = tok.get_vocab()
    extra, prefix = {}, ""
    if NLLB_CODES[target_lang] in vocab:  # NLLB-200
        tok.src_lang = NLLB_CODES[source_lang]
        extra["forced_bos_token_id"] = vocab[NLLB_CODES[target_lang]]
    elif f"__{target_lang}__" in vocab:  # M2M100
        tok.src_lang = source_lang
        extra["forced_bos_token_id"] = vocab[f"__{target_lang}__"]
    elif tag := next((t for t in (f">>{target_lang}<<", f">>{NLLB_CODES[target_lang][:3]}<<") if t in vocab), None):
        prefix = tag + " "  # multi-target Marian: >>es<< (opus-mt-en-ROMANCE) or >>spa<< (opus-mt-tc-big-*)
    elif predictor.model.config.model_type == "t5":  # T5's pretraining task format
        prefix = f"translate {LANGUAGES[source_lang]} to {LANGUAGES[target_lang]}: "
    kwargs = {"pad_token_id": tok.pad_token_id, **extra, **generation}

    def generate(texts: list[str]) -> list[str]:
        return predictor.generate([prefix + t for t in texts], **kwargs)

    return generate


def llm_generator(model: str, source_lang: str, target_lang: str, generation: dict) -> Generate:
    chat = chat_generator(model, generation)
    source, target = LANGUAGES[source_lang], LANGUAGES[target_lang]
    return lambda texts: chat([LLM_PROMPT.format(source=source, target=target, text=t) for t in texts])


# --- the pipeline --------------------------------------------------------------------------

def translate_records(
    records: Sequence[QARecord],
    target_lang: str,
    generate: Generate,
    cache: GenerationCache,
    *,
    model_id: str,
    kind: str,
    fields: Sequence[str] = ("question", "answer"),
    source_lang: str = "en",
    generation: dict | None = None,
    batch_size: int = 16,
    min_length_ratio: float = 0.5,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Translated rows (QARecord fields plus provenance and `mt_flags`) and counts. `generate`
    translates a batch of sentences; results go through `cache`, keyed by model, kind,
    languages, template version, generation settings and the sentence."""
    _check_languages(source_lang, target_lang)
    bad = [f for f in fields if f not in TRANSLATABLE]
    if bad or not fields:
        raise ValueError(f"cannot translate field(s) {bad or list(fields)}; translatable fields: {list(TRANSLATABLE)}")
    settings = json.dumps(generation or {}, sort_keys=True)
    # Every text to translate, as lines of sentences; a record's list field (options) gives several.
    texts = [[(f, i, t) for f in fields for i, t in enumerate(_values(r, f)) if t] for r in records]
    segmented = {t: segment(t, source_lang) for items in texts for _, _, t in items}
    sentences = [s for lines in segmented.values() for line in lines for s in line]
    keys = [content_key(model_id, kind, source_lang, target_lang, TEMPLATE_VERSION, settings, s) for s in sentences]
    outputs, counts = generate_cached(sentences, keys, generate, cache, batch_size=batch_size,
                                      desc=f"translate {source_lang}->{target_lang}", progress=progress)
    translated_sentences = iter(clean_output(o) for o in outputs)
    translations = {t: join([[next(translated_sentences) for _ in line] for line in lines]) for t, lines in segmented.items()}

    rows, flag_counts = [], Counter()
    for record, items in zip(records, texts, strict=True):
        row = asdict(record) | {"options": list(record.options), "language": target_lang}
        flags, missing = [], []
        for field, i, text in items:
            f, m = quality_flags(text, translations[text], min_length_ratio)
            flags += f
            missing += m
            if field == "options":
                row["options"][i] = translations[text]
            else:
                row[field] = translations[text]
        flags = list(dict.fromkeys(flags))
        flag_counts.update(flags)
        row |= {"source_id": record.id, "translated_from": source_lang, "machine_translated": True, "mt_model": model_id,
                "mt_flags": flags}
        if missing:
            row["mt_missing"] = list(dict.fromkeys(missing))
        rows.append(row)
    report = {"records": len(records), "flagged": sum(bool(r["mt_flags"]) for r in rows), "flags": dict(sorted(flag_counts.items())),
              "texts": len(segmented), "sentences": counts}
    return rows, report


def translate_file(
    source: str | Path,
    out: str | Path,
    target_lang: str,
    *,
    model: str = DEFAULT_MODEL,
    kind: Literal["auto", "seq2seq", "llm"] = "auto",
    loader: str | None = None,
    fields: Sequence[str] = ("question", "answer"),
    source_lang: str = "en",
    batch_size: int = 16,
    generation: dict | None = None,
    min_length_ratio: float = 0.5,
    drop_flagged: bool = False,
    on_bad_row: Literal["error", "skip"] = "error",
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    generate: Generate | None = None,
    progress: bool = True,
) -> dict:
    """Translate any QA source medtune loads (a file or a MedQuAD folder) into `target_lang` and
    write `out` (JSONL) atomically; returns the report. `generate` replaces the model (it gets a
    batch of source sentences and returns their translations); `model` still names the cache
    and the output's `mt_model`. `limit` keeps the first N answered records (a trial run)."""
    start = time.monotonic()
    _check_languages(source_lang, target_lang)
    generation = DEFAULT_GENERATION | (generation or {})
    loader = loader or infer_loader(source)
    records, load_report = load_source(SourceConfig(loader=loader, path=str(source), language=source_lang, on_bad_row=on_bad_row))
    if limit is not None:
        records = [r for r in records if r.answered][:limit]
    if kind == "auto":
        kind = "llm" if generate is not None else detect_kind(model)
    if generate is None:
        build = seq2seq_generator if kind == "seq2seq" else llm_generator
        generate = LazyGenerate(lambda: build(model, source_lang, target_lang, generation))
    cache = GenerationCache(cache_file("translate", model, f"{source_lang}-{target_lang}", cache_dir))
    rows, report = translate_records(
        records, target_lang, generate, cache, model_id=model, kind=kind, fields=fields, source_lang=source_lang,
        generation=generation, batch_size=batch_size, min_length_ratio=min_length_ratio, progress=progress,
    )
    kept = [r for r in rows if not (drop_flagged and r["mt_flags"])]
    write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return {
        "source": str(source), "loader": loader, "out": str(out), "model": model, "kind": kind,
        "source_lang": source_lang, "target_lang": target_lang, "fields": list(fields), "generation": generation,
        **report, "written": len(kept), "dropped": len(rows) - len(kept),
        "cache": str(cache.path), "cache_torn_lines": cache.torn, "skipped_rows": load_report.skipped,
        "seconds": round(time.monotonic() - start, 2),
    }


def _values(record: QARecord, field: str) -> list[str]:
    value = getattr(record, field)
    return list(value) if field == "options" else [value or ""]


def _check_languages(source_lang: str, target_lang: str) -> None:
    for lang in (source_lang, target_lang):
        if lang not in LANGUAGES:
            raise ValueError(f"unsupported language {lang!r}; choose one of {list(LANGUAGES)}")
    if source_lang == target_lang:
        raise ValueError(f"source and target language are both {source_lang!r}")
