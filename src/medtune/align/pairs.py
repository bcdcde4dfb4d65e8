"""Preference pairs that mean something: (prompt, chosen, rejected) built from QA records.

chosen is always the record's reference answer; the rejected answer comes from a strategy:

  * `same_focus`: the answer to another question about the same focus (disease, drug): on topic,
    fluent and wrong for this question. A record whose focus has no other answer is skipped.
  * `corrupted`: the reference answer damaged in one of the recipe's `corruptions`, tried in order:
    `wrong_entity` puts another record's focus where the answer names its own (a fluent, factually
    wrong answer); `truncate` keeps only the first part of its sentences (or, for one sentence, words).
  * `sampled`: a generation of the starting model, which DPO then learns to rank below the reference.

Records that already carry a `rejected` answer (pair files) are used as they are. Every pair then
passes one check: a blank chosen, a blank rejected or a rejected equal to the chosen (ignoring case
and whitespace) teaches nothing and is dropped, counted by reason. The builders are pure and
deterministic: each record's random choices come from the seed, the strategy and the record alone.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import datasets

from medtune.data.report import DataError
from medtune.data.split import normalize
from medtune.recipe import PairsConfig
from medtune.records import QARecord, from_dataset

FROM_FILE = "file"  # strategy name of ready-made pairs

Generate = Callable[[list[str]], list[str]]  # questions -> answers of the starting model, in order


@dataclass(frozen=True)
class Pair:
    record: QARecord  # question = prompt, answer = chosen, rejected = the worse answer
    strategy: str  # how the rejected answer was made, e.g. "same_focus" or "corrupted:truncate"

    def to_row(self) -> dict[str, Any]:
        r = self.record
        return {"id": r.id, "prompt": r.question, "chosen": r.answer, "rejected": r.rejected, "strategy": self.strategy,
                "focus": r.focus, "language": r.language, "source": r.source}


@dataclass
class PairReport:
    records: int = 0  # QA records and ready-made pairs read
    pairs: Counter = field(default_factory=Counter)  # kept pairs per strategy
    not_applicable: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # strategy -> reason -> records
    degenerate: Counter = field(default_factory=Counter)  # dropped pairs per reason: blank_chosen, blank_rejected, identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "pairs": sum(self.pairs.values()),
            "by_strategy": dict(sorted(self.pairs.items())),
            "not_applicable": {s: dict(c) for s, c in sorted(self.not_applicable.items())},
            "degenerate": dict(sorted(self.degenerate.items())),
        }


def _rng(seed: int, strategy: str, record: QARecord) -> random.Random:
    # A string seed is hashed with SHA-512: the same choice on every run and machine, whatever the other records.
    return random.Random(f"{seed}|{strategy}|{record.id}|{record.question}")


def _pair(record: QARecord, rejected: str, strategy: str) -> Pair:
    return Pair(replace(record, rejected=rejected), strategy)


def same_focus_pairs(records: Sequence[QARecord], *, seed: int = 0) -> tuple[list[Pair], Counter]:
    """Rejected = the answer to another question with the same focus and a different answer."""
    by_focus: dict[str, list[QARecord]] = defaultdict(list)
    for r in records:
        if normalize(r.focus):
            by_focus[normalize(r.focus)].append(r)
    pairs, skipped = [], Counter()
    for r in records:
        if not normalize(r.focus):
            skipped["no focus"] += 1
            continue
        partners = [
            o for o in by_focus[normalize(r.focus)]
            if normalize(o.question) != normalize(r.question) and normalize(o.answer) != normalize(r.answer)
        ]
        if not partners:
            skipped["no same-focus partner"] += 1
            continue
        pairs.append(_pair(r, _rng(seed, "same_focus", r).choice(partners).answer, "same_focus"))
    return pairs, skipped


def focus_pools(records: Sequence[QARecord]) -> dict[str, list[str]]:
    """language -> its distinct foci (as first written), sorted: the entities `wrong_entity` may swap in."""
    by_language: dict[str, dict[str, str]] = defaultdict(dict)
    for r in records:
        if normalize(r.focus):
            by_language[r.language].setdefault(normalize(r.focus), r.focus.strip())
    return {language: [foci[k] for k in sorted(foci)] for language, foci in by_language.items()}


def wrong_entity(record: QARecord, foci: Sequence[str], rng: random.Random) -> tuple[str | None, str]:
    """The answer with every mention of its focus replaced by another of `foci` (distinct, in a fixed order), or why not."""
    focus = record.focus.strip()
    if not focus:
        return None, "no focus"
    mention = re.compile(rf"(?<!\w){re.escape(focus)}(?!\w)", re.IGNORECASE)
    if not mention.search(record.answer):
        return None, "focus not in answer"
    own = normalize(focus)
    if not any(normalize(f) != own for f in foci[:2]):  # foci are distinct: of any two, one is another focus
        return None, "no other focus"
    other = rng.choice(foci)
    while normalize(other) == own:  # drawing until it differs keeps each record O(1) on large pools
        other = rng.choice(foci)

    def swap(match: re.Match) -> str:  # "Gout is…" becomes "Asthma is…", not "asthma is…"
        return other[:1].upper() + other[1:] if match.group()[:1].isupper() else other

    return mention.sub(swap, record.answer), ""


def truncate(answer: str, keep_fraction: float) -> tuple[str | None, str]:
    """The first `keep_fraction` of the answer's sentences, or of its words when it has one sentence."""
    for parts in (re.split(r"(?<=[.!?])\s+", answer.strip()), answer.split()):
        if len(parts) > 1:
            return " ".join(parts[: max(1, int(len(parts) * keep_fraction))]), ""
    return None, "single word"


def corrupted_pairs(
    records: Sequence[QARecord], *, corruptions: Sequence[str] = ("wrong_entity", "truncate"), keep_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Pair], Counter]:
    """Rejected = the answer corrupted by the first of `corruptions` that applies to it."""
    pools = focus_pools(records)
    pairs, skipped = [], Counter()
    for r in records:
        rng = _rng(seed, "corrupted", r)
        why_not = []
        for kind in corruptions:
            text, why = wrong_entity(r, pools.get(r.language, []), rng) if kind == "wrong_entity" else truncate(r.answer, keep_fraction)
            if text is not None:
                pairs.append(_pair(r, text, f"corrupted:{kind}"))
                break
            why_not.append(f"{kind}: {why}")
        else:
            skipped["; ".join(why_not)] += 1
    return pairs, skipped


def sampled_pairs(records: Sequence[QARecord], generate: Generate) -> list[Pair]:
    """Rejected = the starting model's own answer to the question."""
    answers = generate([r.question for r in records])
    return [_pair(r, a, "sampled") for r, a in zip(records, answers, strict=True)]


def degenerate_reason(record: QARecord) -> str | None:
    """Why a pair teaches nothing, or None for a usable pair."""
    if not (record.answer or "").strip():
        return "blank_chosen"
    if not (record.rejected or "").strip():
        return "blank_rejected"
    if normalize(record.rejected) == normalize(record.answer):
        return "identical"
    return None


def build_pairs(records: Sequence[QARecord], cfg: PairsConfig, generate: Generate | None = None) -> tuple[list[Pair], PairReport]:
    """Ready-made pairs as they are, and the recipe's strategies over the QA records; degenerate pairs dropped."""
    report = PairReport(records=len(records))
    pairs = [Pair(r, FROM_FILE) for r in records if r.rejected is not None]
    qa = [r for r in records if r.rejected is None and r.answered]
    report.degenerate.update("blank_chosen" for r in records if r.rejected is None and not r.answered)
    for strategy in cfg.rejected:
        skipped: Counter = Counter()
        if strategy == "same_focus":
            built, skipped = same_focus_pairs(qa, seed=cfg.seed)
        elif strategy == "corrupted":
            built, skipped = corrupted_pairs(qa, corruptions=cfg.corruptions, keep_fraction=cfg.keep_fraction, seed=cfg.seed)
        else:
            if generate is None:
                raise ValueError("the sampled strategy needs the starting model's `generate`")
            built = sampled_pairs(qa, generate)
        pairs += built
        if skipped:
            report.not_applicable[strategy].update(skipped)
    kept = []
    for p in pairs:
        reason = degenerate_reason(p.record)
        if reason:
            report.degenerate[reason] += 1
        else:
            kept.append(p)
            report.pairs[p.strategy] += 1
    return kept, report


def pair_splits(splits: datasets.DatasetDict, cfg: PairsConfig, generate: Generate | None = None) -> tuple[dict[str, list[Pair]], dict]:
    """Pairs of the train and validation splits (each from its own records, so no focus crosses splits) and their reports."""
    pairs, report = {}, {}
    for name in ("train", "validation"):
        pairs[name], built = build_pairs(from_dataset(splits[name]), cfg, generate)
        report[name] = built.to_dict()
    if not pairs["train"]:
        raise DataError("training split", f"no usable preference pairs: {report['train']}")
    return pairs, report
