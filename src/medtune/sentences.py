"""Sentence splitting per language, shared by data generation, metrics and grounded answers."""

from __future__ import annotations

import re
from functools import lru_cache

# pysbd has no Portuguese rules; Spanish is the closest supported language (shared abbreviations
# such as "Dr.", "Sr.", "pág."). Anything else unknown to pysbd falls back to English.
_PYSBD_FALLBACK = {"pt": "es", "gl": "es", "ca": "es"}


def base_language(language: str) -> str:
    """"pt-BR" / "es_MX" -> "pt" / "es"."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]


@lru_cache(maxsize=None)
def _segmenter(language: str):
    import pysbd

    lang = _PYSBD_FALLBACK.get(language, language)
    if lang not in pysbd.languages.LANGUAGE_CODES:
        lang = "en"
    return pysbd.Segmenter(language=lang, clean=False)


def split_sentences(text: str, language: str) -> list[str]:
    """Sentences of each line with pysbd's rules for the language (nltk's punkt, which rouge-score
    would use, needs data that is not available offline)."""
    sentences = (s.strip() for line in text.splitlines() for s in _segmenter(base_language(language)).segment(line))
    return [s for s in sentences if s]
