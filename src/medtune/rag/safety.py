"""The medical safety layer: emergencies, refused dose changes and the not-medical-advice notice.

Every rule and every user-facing message lives in `safety_rules.yaml` beside this module (its
header explains how patterns and cues combine); this module validates that file and applies it.
`SafetyRules.check_conversation(messages)` says, in the language of the last user message, which
emergency advice must open the answer, whether the conversation asks for a dose change for an
identified person (refused), and the notice that closes every answer; `check(text)` does the same
for a single question. Text is read as `medtune.rag.normalize` prepares it, so invisible
characters, look-alike letters and spelled-out or digit-for-letter words do not hide a request.

What is read. User, system and developer messages: they are all the client's words, and a
request moved from the user turn into a system message, or split over two turns, is the same
request. An emergency counts in any of them ("I have crushing chest pain" three turns ago still
gets the advice); a dose change counts within a message and across the messages joined in order
("I use an inhaler for my asthma." then "Should I double the dose?"). A dose change asked
anywhere in the conversation refuses every later answer: the model would read that request too.
Assistant messages are not read: a client can write anything there, but a real earlier answer
routinely discusses doses and emergencies in general terms (and our own refusal names "changing
the dose"), so reading them would refuse benign follow-ups, and the server only ever generates a
new turn after a user message. One exception: a reply that only assents ("yes", "go ahead",
"sí", "pode") adopts the assistant's question before it, so that assistant message is read as
the user's.

How much is read: the last `MAX_CHARS` characters of the conversation (`window`); the caller
generates from that same window, so the model never reads text the rules did not.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medtune.io import read_yaml_mapping
from medtune.rag.language import LANGUAGES, Language, detect_language
from medtune.rag.normalize import clean, normalize, variants

DEFAULT_RULES = Path(__file__).with_name("safety_rules.yaml")
REQUIRED_MESSAGES = ("notice", "no_sources", "unsupported", "ungrounded", "supported_by", "bad_citation", "sources_heading")
# The most characters of a conversation the rules read, and so the most a grounded prompt may
# hold. Far more than a question and its context need (a served model reads a few thousand
# tokens); it keeps one check under a second while the server accepts bodies of up to 1 MB.
MAX_CHARS = 64_000
CHECKED_ROLES = ("user", "system", "developer")
# A reply made only of these words adopts the assistant's question before it (see the module doc).
_ASSENT = frozenset("yes yeah yep sure please go on ahead continue do it tell me sounds good "
                    "si claro dale vale adelante sigue por favor sim pode manda continua isso".split())


def _compile(pattern: str) -> re.Pattern:
    return re.compile(rf"\b(?:{normalize(pattern)})\b", re.IGNORECASE)


# --- the file's schema ---------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Texts(_Strict):
    """One message in every language."""

    en: str = Field(min_length=1)
    es: str = Field(min_length=1)
    pt: str = Field(min_length=1)


class Patterns(_Strict):
    """Regexes per language; each must compile and every language needs at least one."""

    en: list[str] = Field(min_length=1)
    es: list[str] = Field(min_length=1)
    pt: list[str] = Field(min_length=1)

    @field_validator("en", "es", "pt")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                _compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a valid regex: {exc}") from None
        return patterns


class Cues(_Strict):
    personal: Patterns
    urgency: Patterns
    past: Patterns


class EmergencyRule(_Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    category: str = Field(min_length=1)
    severity: Literal["critical", "urgent"]
    trigger: Literal["always", "in_context"] = "in_context"
    message: str
    patterns: Patterns


class DoseChangeRule(_Strict):
    message: str
    near: int = Field(gt=0, description="most characters between a change and a medicine/dose word")
    request: Patterns
    change: Patterns
    medication: Patterns
    person: Patterns


class RulesFile(_Strict):
    version: Literal[1]
    messages: dict[str, Texts]
    cues: Cues
    emergencies: list[EmergencyRule] = Field(min_length=1)
    dose_change: DoseChangeRule

    @model_validator(mode="after")
    def _consistent(self) -> RulesFile:
        missing = [k for k in REQUIRED_MESSAGES if k not in self.messages]
        if missing:
            raise ValueError(f"messages: missing {', '.join(missing)}")
        seen: set[str] = set()
        for rule in self.emergencies:
            if rule.id in seen:
                raise ValueError(f"emergencies: duplicate id {rule.id!r}")
            seen.add(rule.id)
            if rule.message not in self.messages:
                raise ValueError(f"emergencies[{rule.id}].message: no message {rule.message!r} in messages")
        if self.dose_change.message not in self.messages:
            raise ValueError(f"dose_change.message: no message {self.dose_change.message!r} in messages")
        return self


def _where(loc: tuple, data: dict) -> str:
    """A pydantic error location with emergency rules named by id: emergencies[chest_pain].patterns.pt."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int) and i > 0 and loc[i - 1] == "emergencies":
            rules = data.get("emergencies") or []
            rid = rules[part].get("id") if part < len(rules) and isinstance(rules[part], dict) else None
            parts[-1] += f"[{rid or part}]"
        else:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


# --- applying the rules --------------------------------------------------------------------


@dataclass(frozen=True)
class Emergency:
    id: str
    category: str
    severity: str
    message: str  # the advice, in the verdict's language


@dataclass(frozen=True)
class SafetyVerdict:
    language: Language
    notice: str
    emergency: Emergency | None = None
    refusal: str | None = None  # set when the text asks to change a dose for an identified person

    def to_dict(self) -> dict:
        return asdict(self)


class SafetyRules:
    """A validated rules file, compiled; build it with `load_rules`."""

    def __init__(self, spec: RulesFile, source: str = "rules"):
        self.spec = spec
        self.source = source

        def compiled(patterns: Patterns) -> dict[str, list[re.Pattern]]:
            return {lang: [_compile(p) for p in getattr(patterns, lang)] for lang in LANGUAGES}

        self._personal = compiled(spec.cues.personal)
        self._urgency = compiled(spec.cues.urgency)
        self._past = compiled(spec.cues.past)
        self._emergencies = [(rule, compiled(rule.patterns)) for rule in spec.emergencies]
        dose = spec.dose_change
        self._request, self._change = compiled(dose.request), compiled(dose.change)
        self._medication, self._person = compiled(dose.medication), compiled(dose.person)

    def message(self, key: str, language: str) -> str:
        if key not in self.spec.messages:
            raise KeyError(f"{self.source}: no message {key!r}; known: {', '.join(sorted(self.spec.messages))}")
        return getattr(self.spec.messages[key], _language(language))

    def notice(self, language: str) -> str:
        return self.message("notice", language)

    def check(self, text: str, language: str | None = None) -> SafetyVerdict:
        """One question, checked as a conversation of one user message."""
        return self.check_conversation([{"role": "user", "content": text}], language)

    def check_conversation(self, messages: list[dict], language: str | None = None) -> SafetyVerdict:
        """The verdict on `window(messages)`; reply language from the last user message unless given."""
        messages = window(messages)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        lang = _language(language) if language else detect_language(clean(last_user))
        texts = [normalize(m["content"]) for m in _read(messages)]
        readings = [variants(t) for t in texts]
        # Every language's patterns are tried (with its own cues), so a misdetected language
        # still triggers; the messages are in the detected one. Rules in file order: the first
        # that fires in any message wins.
        rule = next((r for r, patterns in self._emergencies
                     if any(self._fires(r, patterns, v) for vs in readings for v in vs)), None)
        emergency = Emergency(rule.id, rule.category, rule.severity, self.message(rule.message, lang)) if rule else None
        joined = " ".join(texts)  # holds every message, so a change within one is found here too
        refused = any(self._dose_change(one, v) for v in variants(joined) for one in LANGUAGES)
        return SafetyVerdict(
            language=lang,
            notice=self.notice(lang),
            emergency=emergency,
            refusal=self.message(self.spec.dose_change.message, lang) if refused else None,
        )

    def _fires(self, rule: EmergencyRule, patterns: dict[str, list[re.Pattern]], norm: str) -> bool:
        for lang in LANGUAGES:
            if not _any(patterns[lang], norm):
                continue
            if rule.trigger == "always":
                return True
            urgent = _any(self._urgency[lang], norm)
            # A situation (someone, now) that is not history; urgency beats a past cue
            # ("had a stroke in 2010 and now her face is drooping").
            if (urgent or _any(self._personal[lang], norm)) and (urgent or not _any(self._past[lang], norm)):
                return True
        return False

    def _dose_change(self, lang: str, norm: str) -> bool:
        if not (_any(self._request[lang], norm) and _any(self._person[lang], norm)):
            return False
        # The change must be about a medicine: "lower back pain ... medication" is not a dose change.
        changes = [m.span() for p in self._change[lang] for m in p.finditer(norm)]
        medicines = [m.span() for p in self._medication[lang] for m in p.finditer(norm)]
        return _near(changes, medicines, self.spec.dose_change.near)


def _near(a: list[tuple[int, int]], b: list[tuple[int, int]], near: int) -> bool:
    """Whether a span of `a` and a span of `b` overlap or lie at most `near` characters apart.

    One sweep in order of start, not every pair: a span need only be compared with the span of
    the other list that reaches furthest among those starting no later, as any other one is at
    least as far from it. One comparison per span, where all pairs took minutes on a long text.
    """
    reach = [-1 - near, -1 - near]  # furthest end so far in a, in b: "nothing yet" is never near
    for start, end, side in sorted([(s, e, 0) for s, e in a] + [(s, e, 1) for s, e in b]):
        if start - min(reach[1 - side], end) <= near:
            return True
        reach[side] = max(reach[side], end)
    return False


def window(messages: list[dict], limit: int = MAX_CHARS) -> list[dict]:
    """The latest messages holding at most `limit` characters: older ones dropped, and the oldest
    one kept cut to its end (a long question ends with what it asks)."""
    kept, left = [], limit
    for m in reversed(messages):
        if left <= 0:
            break
        content = m["content"] if len(m["content"]) <= left else m["content"][-left:]
        kept.append({**m, "content": content})
        left -= len(content)
    return kept[::-1]


def _read(messages: list[dict]) -> list[dict]:
    """The messages the rules read: the client's own, and an assistant turn its reply assents to."""
    read = [m for m in messages if m["role"] in CHECKED_ROLES]
    if len(messages) > 1 and messages[-2]["role"] == "assistant" and _assents(messages[-1]):
        read.append(messages[-2])
    return read


def _assents(message: dict) -> bool:
    words = re.findall(r"\w+", normalize(message["content"]).lower())
    return message["role"] == "user" and 0 < len(words) <= 5 and set(words) <= _ASSENT


def _any(patterns: list[re.Pattern], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def _language(language: str) -> Language:
    if language not in LANGUAGES:
        raise ValueError(f"language {language!r} is not supported; use one of {', '.join(LANGUAGES)}")
    return language  # type: ignore[return-value]


def load_rules(path: str | Path | None = None) -> SafetyRules:
    """The packaged rules, or those of `path`; a malformed file raises ValueError naming the file and field."""
    if path is None:
        return _packaged_rules()
    return _load(Path(path))


@lru_cache(maxsize=1)
def _packaged_rules() -> SafetyRules:
    return _load(DEFAULT_RULES)


def _load(path: Path) -> SafetyRules:
    data = read_yaml_mapping(path, "safety rules file")
    try:
        spec = RulesFile.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            problems.append(f"  {_where(e['loc'], data)}: {msg}")
        raise ValueError(
            f"{path}: invalid safety rules ({err.error_count()} problem(s))\n" + "\n".join(problems)
        ) from None
    return SafetyRules(spec, source=str(path))
