"""Consumer-style rewrites of questions: how people type a question into a chat box, not how a health
page titles it. Used as extra training anchors for a retrieval embedder, so that it learns to match
long, narrative, misspelled messages to the passages that answer them.

A rewrite of "What are the symptoms of Gout?" applies a random few of:
  * a story first: "my dad was told he has gout and ..."
  * lower case, and no question mark;
  * a second question about the same topic, from another record ("... also how is gout treated");
  * typos: a swapped, dropped or doubled letter in a longer word;
  * a closing plea: "any advice?", "thanks".
The stored question stays in the rewrite (possibly misspelled), as in real messages that embed one.
Seeded per record: the same data gives the same rewrites.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from medtune.records import QARecord

# {f}: the focus as written in the record. English, Spanish, Portuguese; other languages get the English set.
_OPENINGS = {
    "en": ("my {who} was just diagnosed with {f} and", "i have had {f} for a while now,", "my doctor mentioned {f} at my last visit,",
           "so my {who} has {f},", "im really worried about {f},", "a friend told me about {f},"),
    "es": ("a mi {who} le diagnosticaron {f} y", "tengo {f} desde hace tiempo,", "el médico me habló de {f},", "estoy preocupada por {f},"),
    "pt": ("minha {who} foi diagnosticada com {f} e", "tenho {f} há algum tempo,", "o médico falou de {f},", "estou preocupado com {f},"),
}
_NO_FOCUS = {"en": ("quick question,", "hi,", "i need some help,"), "es": ("una pregunta,", "hola,"), "pt": ("uma pergunta,", "olá,")}
_WHO = {"en": ("mom", "dad", "wife", "husband", "son", "daughter", "grandmother"), "es": ("madre", "abuela", "hija"),
        "pt": ("mãe", "avó", "filha")}
_ALSO = {"en": ("also", "and", "oh and"), "es": ("y también", "además"), "pt": ("e também", "além disso")}
_CLOSINGS = {"en": ("any advice?", "thanks", "please help", "should i be worried?"), "es": ("gracias", "¿algún consejo?"),
             "pt": ("obrigado", "algum conselho?")}


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + word[i + 1 :] if kind == "drop" else word[:i] + word[i] + word[i:]


def _bare(question: str) -> str:
    return question.strip().rstrip("?？ .").lstrip("¿").strip()


def rewrite(question: str, focus: str, lang: str, rng: random.Random, others: Sequence[str] = ()) -> str:
    """One consumer-style rewrite of `question`; `others` are other questions about the same focus."""
    lang = lang if lang in _OPENINGS else "en"
    text = _bare(question)
    if not text:
        return question
    lower = rng.random() < 0.7
    if lower:
        text = text.lower()
    if rng.random() < 0.6:
        opening = rng.choice(_OPENINGS[lang] if focus else _NO_FOCUS[lang]).format(who=rng.choice(_WHO[lang]), f=focus.lower())
        text = f"{opening} {text[0].lower() + text[1:]}"
    if others and rng.random() < 0.4:
        text = f"{text} {rng.choice(_ALSO[lang])} {_bare(rng.choice(others)).lower()}"
    words = text.split()
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    for i in rng.sample(long_words, k=min(len(long_words), rng.choice((0, 1, 1, 2)))):
        words[i] = _typo(words[i], rng)
    text = " ".join(words)
    if rng.random() < 0.3:
        text = f"{text}{'' if lower else '?'} {rng.choice(_CLOSINGS[lang])}"
    elif not lower:
        text += "?"
    return text


def consumer_rewrites(records: Sequence[QARecord], n: int, *, seed: int = 0) -> list[list[str]]:
    """`n` distinct rewrites per record (fewer when a short question allows fewer), in the records' order."""
    by_focus: dict[str, list[str]] = {}
    for r in records:
        if r.focus:
            by_focus.setdefault(r.focus, []).append(r.question)
    out = []
    for i, r in enumerate(records):
        rng = random.Random(f"{seed}:{i}:{r.question}")
        others = [q for q in by_focus.get(r.focus, ()) if q != r.question]
        made: list[str] = []
        for _ in range(4 * n):  # a few tries: two draws may make the same text
            if len(made) == n:
                break
            text = rewrite(r.question, r.focus, r.language, rng, others)
            if text not in made and text != r.question:
                made.append(text)
        out.append(made)
    return out
