"""Grounded answers: retrieve trusted passages, generate from them as numbered sources, cite them,
and say so when the sources do not support an answer instead of passing the model's text off as fact.

The flow is split in two so that a server can stream: `prepare` runs the safety check and the
retrieval and builds the chat messages; the caller generates (batched, streamed, any backend);
`finish` checks the generated text against the sources and builds the tail (sources, warnings,
notice). `answer` does all three with one `generate` function.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from medtune.sentences import split_sentences
from medtune import DEFAULT_MODEL
from medtune.rag.retrieve import Hit, Retriever
from medtune.rag.safety import SafetyRules, SafetyVerdict, load_rules

# What the model is told, per language. Sources are numbered so that the answer can cite them.
_INSTRUCTIONS = {
    "en": "Answer the question using only the numbered sources below. Cite the sources you use as [1], [2]. "
          "If the sources do not contain the answer, say that you do not know. Answer in English.",
    "es": "Responde a la pregunta usando solo las fuentes numeradas de abajo. Cita las fuentes que uses como [1], [2]. "
          "Si las fuentes no contienen la respuesta, di que no lo sabes. Responde en español.",
    "pt": "Responda à pergunta usando apenas as fontes numeradas abaixo. Cite as fontes que usar como [1], [2]. "
          "Se as fontes não contiverem a resposta, diga que não sabe. Responda em português.",
}
_CITATION = re.compile(r"\[(\d+)\]")


@dataclass(frozen=True)
class Source:
    n: int  # the number the answer cites, [n]
    id: str
    title: str
    url: str
    text: str
    score: float

    @classmethod
    def from_hit(cls, n: int, hit: Hit) -> Source:
        return cls(n, hit.id, hit.title, hit.url, hit.text, float(hit.score))


@dataclass
class GroundedAnswer:
    question: str
    language: str
    prefix: str  # emergency advice, shown before anything else
    body: str  # the generated answer, unchanged (what a server has streamed)
    tail: str  # sources, support warning, notice
    sources: list[Source]
    grounded: bool
    reason: str | None  # why not grounded: refused | no_sources | unsupported | no_index
    support: list[dict] = field(default_factory=list)  # per answer sentence: text, score, best source n
    safety: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        return self.prefix + self.body + self.tail

    def to_dict(self) -> dict:
        return {
            "question": self.question, "language": self.language, "text": self.text, "answer": self.body,
            "grounded": self.grounded, "reason": self.reason,
            "sources": [{k: v for k, v in asdict(s).items() if k != "text"} for s in self.sources],
            "support": self.support, "safety": self.safety,
        }


@dataclass
class Prepared:
    question: str
    verdict: SafetyVerdict
    sources: list[Source]
    messages: list[dict]  # what to generate from; empty when `final` is set
    prefix: str
    final: GroundedAnswer | None  # set when no generation is needed

    @property
    def language(self) -> str:
        return self.verdict.language


class Answerer:
    """Safety check, retrieval, numbered-source prompt, and the support check of what the model wrote.

    `min_support` is the cosine (in the index's own embedding space) above which an answer sentence
    counts as backed by some sentence of the sources; an answer is grounded when at least
    `min_supported` of its sentences are.
    """

    def __init__(self, retriever: Retriever | None = None, rules: SafetyRules | None = None, *, k: int = 4,
                 min_support: float = 0.6, min_supported: float = 0.5):
        self.retriever, self.rules, self.k = retriever, rules or load_rules(), k
        self.min_support, self.min_supported = min_support, min_supported

    def prepare(self, question: str, language: str | None = None) -> Prepared:
        verdict = self.rules.check(question, language)
        lang = verdict.language
        prefix = f"{verdict.emergency.message}\n\n" if verdict.emergency else ""

        def final(body: str, reason: str, sources: list[Source] = ()) -> Prepared:
            tail = self._sources_block(list(sources), lang) + f"\n\n{verdict.notice}"
            ans = GroundedAnswer(question, lang, prefix, body, tail, list(sources), False, reason, safety=verdict.to_dict())
            return Prepared(question, verdict, list(sources), [], prefix, ans)

        if verdict.refusal:
            return final(verdict.refusal, "refused")
        if self.retriever is None:  # plain model: no sources to cite, and the reader is told so
            messages = [{"role": "user", "content": question}]
            return Prepared(question, verdict, [], messages, prefix, None)
        hits = self.retriever.search(question, k=self.k)
        sources = [Source.from_hit(n, h) for n, h in enumerate(hits, 1)]
        if not hits or not self.retriever.confident(hits):
            # Nothing close enough in the trusted sources: say so rather than let the model improvise.
            return final(self.rules.message("no_sources", lang), "no_sources")
        numbered = "\n\n".join(f"[{s.n}] {s.title}\n{s.text}" for s in sources)
        messages = [{"role": "system", "content": f"{_INSTRUCTIONS[lang]}\n\n{numbered}"},
                    {"role": "user", "content": question}]
        return Prepared(question, verdict, sources, messages, prefix, None)

    def finish(self, prep: Prepared, generated: str) -> GroundedAnswer:
        if prep.final is not None:
            return prep.final
        lang, body = prep.language, generated.strip()
        if not prep.sources:
            tail = f"\n\n{self.rules.message('ungrounded', lang)}\n\n{prep.verdict.notice}"
            return GroundedAnswer(prep.question, lang, prep.prefix, body, tail, [], False, "no_index", safety=prep.verdict.to_dict())
        support = self._support(body, prep.sources, lang)
        supported = sum(s["score"] >= self.min_support for s in support)
        grounded = bool(support) and supported / len(support) >= self.min_supported
        cited = {int(n) for n in _CITATION.findall(body)}
        tail = ""
        if grounded:  # which sources back it, whether or not the model wrote its own [n]
            backing = sorted({s["source"] for s in support if s["score"] >= self.min_support})
            tail += f"\n\n{self.rules.message('supported_by', lang)} {', '.join(f'[{n}]' for n in backing)}."
        else:
            # Show what the best source says, cited, next to the warning: the reader still gets facts.
            best = prep.sources[0]
            excerpt = " ".join(split_sentences(best.text, lang)[:2])
            tail += f"\n\n{self.rules.message('unsupported', lang)}\n[{best.n}] {excerpt}"
        if bad := sorted(n for n in cited if not 1 <= n <= len(prep.sources)):
            tail += f"\n\n{self.rules.message('bad_citation', lang)} {', '.join(f'[{n}]' for n in bad)}"
        tail += self._sources_block(prep.sources, lang) + f"\n\n{prep.verdict.notice}"
        return GroundedAnswer(prep.question, lang, prep.prefix, body, tail, prep.sources, grounded,
                              None if grounded else "unsupported", support, prep.verdict.to_dict())

    def answer(self, question: str, generate: Callable[[list[dict]], str], language: str | None = None) -> GroundedAnswer:
        prep = self.prepare(question, language)
        return prep.final or self.finish(prep, generate(prep.messages))

    def _support(self, body: str, sources: list[Source], lang: str) -> list[dict]:
        """Each answer sentence's best cosine against the sources' sentences (citation markers removed)."""
        sentences = [s for s in (_CITATION.sub("", x).strip() for x in split_sentences(body, lang)) if len(s.split()) >= 3]
        if not sentences:
            return []
        source_sentences, owner = [], []
        for src in sources:
            for s in split_sentences(src.text, lang):
                source_sentences.append(s)
                owner.append(src.n)
        vectors = self.retriever.embedder.encode(sentences + source_sentences)  # normalized: dot = cosine
        sims = vectors[: len(sentences)] @ vectors[len(sentences) :].T
        best = np.argmax(sims, axis=1)
        return [{"sentence": s, "score": round(float(sims[i, best[i]]), 4), "source": owner[best[i]]} for i, s in enumerate(sentences)]

    def _sources_block(self, sources: list[Source], lang: str) -> str:
        if not sources:
            return ""
        lines = [f"[{s.n}] {s.title} — {s.url}" if s.url else f"[{s.n}] {s.title}" for s in sources]
        return f"\n\n{self.rules.message('sources_heading', lang)}:\n" + "\n".join(lines)


def retrieve(question: str, index_dir, *, k: int = 5) -> list[dict]:
    """Ranked passages for `question` as JSON-able dicts: id, score, title, url, source, lang, text."""
    from medtune.rag.index import load_index

    hits = Retriever(load_index(index_dir)).search(question, k=k)
    return [{"id": h.id, "score": float(h.score), "title": h.title, "url": h.url, "source": h.source, "lang": h.lang, "text": h.text}
            for h in hits]


def ask(question: str, *, index=None, model: str = DEFAULT_MODEL, k: int = 4,
        language: str | None = None, max_new_tokens: int = 256) -> GroundedAnswer:
    """Retrieve from `index` (if given), answer with `model` (run dir, model dir or hub id), check and cite."""
    from medtune.predict import Predictor
    from medtune.rag.index import load_index

    retriever = Retriever(load_index(index)) if index else None

    def generate(messages: list[dict]) -> str:  # loads the model only when there is something to generate
        return Predictor.from_pretrained(model).generate_chat([messages], max_new_tokens=max_new_tokens)[0]

    return Answerer(retriever, k=k).answer(question, generate, language)
