"""Text-generation metrics: ROUGE (rouge-score) and BLEU / chrF (sacrebleu).

All scores are on a 0-100 scale. ROUGE is the F-measure averaged over examples;
BLEU and chrF are corpus-level, as sacrebleu defines them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from medtune.sentences import base_language, split_sentences

ALLOWED_METRICS = ("rouge", "bleu", "chrf")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class UnicodeWordTokenizer:
    """Lowercase and split on Unicode word characters.

    rouge-score's default tokenizer keeps only [a-z0-9], so "médico" becomes
    "m" + "dico" and "é" disappears: Spanish and Portuguese scores would be
    wrong. NFC normalisation makes composed and decomposed accents match.
    """

    _WORD_RE = re.compile(r"\w+")

    def tokenize(self, text: str) -> list[str]:
        return self._WORD_RE.findall(unicodedata.normalize("NFC", text).lower())


def _one_sentence_per_line(text: str, language: str) -> str:
    # rougeLsum reads sentences from newlines.
    return "\n".join(split_sentences(text, language))


def _rouge(predictions: Sequence[str], references: Sequence[str], language: str) -> dict[str, float]:
    # Imported here: rouge_score pulls in all of nltk (~3 s of import time).
    from rouge_score import rouge_scorer

    if language == "en":
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    else:
        # No Porter stemmer for non-English text: it would mangle the words.
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=UnicodeWordTokenizer())

    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(
            _one_sentence_per_line(ref, language), _one_sentence_per_line(pred, language)
        )
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def text_metrics(
    predictions: list[str],
    references: list[str],
    metrics: Sequence[str] = ("rouge", "bleu", "chrf"),
    language: str = "en",
) -> dict[str, float]:
    """Score predictions against one reference each.

    Returns a subset of ``rouge1, rouge2, rougeL, rougeLsum, bleu, chrf``
    (0-100) depending on ``metrics``. ``language`` is an ISO code ("en", "es",
    "pt", "pt-BR", ...): it selects stemming/tokenisation for ROUGE and the
    sentence splitter for rougeLsum.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in ALLOWED_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed values: {list(ALLOWED_METRICS)}")
    if not metrics:
        raise ValueError(f"no metric requested; allowed values: {list(ALLOWED_METRICS)}")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references differ in length: {len(predictions)} != {len(references)}"
        )
    if not predictions:
        raise ValueError("predictions and references are empty")

    language = base_language(language)
    result: dict[str, float] = {}
    if "rouge" in metrics:
        result.update(_rouge(predictions, references, language))
    if "bleu" in metrics or "chrf" in metrics:
        from sacrebleu.metrics import BLEU, CHRF

        refs = [list(references)]  # sacrebleu takes a list of reference streams
        if "bleu" in metrics:
            # trg_lang only changes the tokenizer for zh/ja/ko; 13a otherwise.
            result["bleu"] = float(BLEU(trg_lang=language).corpus_score(list(predictions), refs).score)
        if "chrf" in metrics:
            result["chrf"] = float(CHRF().corpus_score(list(predictions), refs).score)
    return result
