"""Deduplication and the seeded split grouped by focus."""

from medtune.data import focus_overlap, group_key, normalize, split_indices, unique_indices
from medtune.recipe import SplitConfig
from medtune.records import QARecord


def corpus(n_focus: int = 60, per_focus: int = 4) -> list[QARecord]:
    return [
        QARecord(f"Question {q} about disease {f}?", f"Answer {q} for {f}.", id=f"{f}-{q}", focus=f"Disease {f}")
        for f in range(n_focus)
        for q in range(per_focus)
    ]


def test_normalize() -> None:
    assert normalize("  What IS\u00a0Flu ?\n") == "what is flu ?"
    assert normalize(None) == ""


def test_dedup_counts_exact_pairs_only() -> None:
    records = [
        QARecord("What is flu?", "A virus."),
        QARecord("what is  FLU?", "a virus."),  # same after normalising: removed
        QARecord("What is flu?", "An infection."),  # other answer: kept
        QARecord("What is flu?", None),
        QARecord("WHAT IS FLU?", None),  # both unanswered: a duplicate too
    ]
    keep = unique_indices(records)
    assert keep == [0, 2, 3]
    assert len(records) - len(keep) == 2


def test_split_has_no_focus_leakage_and_covers_everything() -> None:
    records = corpus()
    parts = split_indices(records, SplitConfig(validation=0.1, test=0.2))
    assert sorted(i for p in parts.values() for i in p) == list(range(len(records)))
    assert focus_overlap(records, parts) == 0
    focuses = {name: {records[i].focus for i in idx} for name, idx in parts.items()}
    # Fractions are fractions of groups: 60 focus groups -> 12 test, 6 validation.
    assert (len(focuses["test"]), len(focuses["validation"]), len(focuses["train"])) == (12, 6, 42)
    assert (len(parts["test"]), len(parts["validation"])) == (48, 24)


def test_split_is_reproducible_by_seed() -> None:
    records = corpus()
    a = split_indices(records, SplitConfig(seed=1, validation=0.1, test=0.1))
    assert a == split_indices(records, SplitConfig(seed=1, validation=0.1, test=0.1))
    assert a != split_indices(records, SplitConfig(seed=2, validation=0.1, test=0.1))


def test_records_without_focus_are_grouped_by_question() -> None:
    records = [QARecord("Same question?", f"answer {i}") for i in range(10)] + corpus(20, 2)
    assert group_key(records[0]) == group_key(QARecord(" same QUESTION? ", "x"))
    for seed in range(5):
        parts = split_indices(records, SplitConfig(seed=seed, validation=0.2, test=0.2))
        assert focus_overlap(records, parts) == 0
        assert sum(set(range(10)) <= set(p) for p in parts.values()) == 1


def test_group_by_none_is_a_plain_seeded_split() -> None:
    records = corpus(5, 40)  # only 5 focus groups, 200 records
    parts = split_indices(records, SplitConfig(group_by="none", validation=0.1, test=0.1))
    assert {k: len(v) for k, v in parts.items()} == {"train": 160, "validation": 20, "test": 20}
    assert focus_overlap(records, parts) > 0  # reported, since nothing keeps focuses apart


def test_zero_fractions() -> None:
    parts = split_indices(corpus(10, 1), SplitConfig(validation=0, test=0.2))
    assert (len(parts["train"]), len(parts["validation"]), len(parts["test"])) == (8, 0, 2)
