"""Shared fixtures: a small QA file in the real JSONL shape and a tiny random T5 that reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

DISEASES = ["asthma", "gout", "anemia", "psoriasis", "migraine", "glaucoma", "measles", "rickets", "scurvy", "lupus"]


def qa_rows() -> list[dict]:
    from medtune.testing import qa_rows

    return qa_rows(DISEASES)


@pytest.fixture(scope="session")
def qa_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_rows()))
    return path


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    from medtune.testing import make_t5

    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])]
    return make_t5(tmp_path_factory.mktemp("models") / "tiny-t5", texts * 5, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from medtune.testing import make_llama

    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])]
    return make_llama(tmp_path_factory.mktemp("models") / "tiny-llama", texts * 5, vocab_size=300)


@pytest.fixture
def causal_recipe_dict(recipe_dict, tiny_llama) -> dict:
    """The same run on a tiny causal LM with LoRA (no chat template, no pad token: medtune adds both)."""
    recipe_dict["model"] = str(tiny_llama)
    recipe_dict["prompt"] = {"template": "{question}", "system": "You answer medical questions."}
    recipe_dict["train"] |= {"method": "lora", "max_length": 64, "learning_rate": 5e-3,
                             "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    return recipe_dict


@pytest.fixture
def recipe_dict(qa_jsonl, tiny_t5, tmp_path) -> dict:
    """A complete seq2seq recipe over the fixtures, small enough to train in seconds."""
    return {
        "name": "tiny",
        "model": str(tiny_t5),
        "data": {
            "sources": [{"loader": "jsonl", "path": str(qa_jsonl), "language": "en"}],
            "split": {"validation": 0.2, "test": 0.2, "seed": 0},
        },
        "prompt": {"template": "Please answer this question: {question}"},
        "train": {"epochs": 1, "max_steps": 6, "learning_rate": 3e-3, "batch_size": 4, "eval_batch_size": 4,
                  "logging_steps": 1, "save_steps": 3, "max_source_length": 32, "max_target_length": 32},
        "eval": {"max_samples": 8, "batch_size": 4, "generation": {"max_new_tokens": 8}},
        "tracking": {"backend": "none"},
        "output_dir": str(tmp_path / "runs"),
    }


def passages():
    """Three passages in the published sources' words, with their real URLs: a grounding fixture."""
    from medtune.rag.passages import Passage

    return [
        Passage(id="noonan-1", title="Noonan syndrome", url="https://ghr.nlm.nih.gov/condition/noonan-syndrome", source="GHR",
                lang="en", text="Noonan syndrome is a condition that affects many areas of the body. It is characterized by "
                                "mildly unusual facial features, short stature, heart defects, bleeding problems, and "
                                "skeletal malformations."),
        Passage(id="gout-1", title="Gout", url="https://www.niams.nih.gov/health-topics/gout", source="NIAMS", lang="en",
                text="Gout is a form of arthritis that causes sudden attacks of pain and swelling in the joints. It is caused "
                     "by too much uric acid in the blood, which forms crystals in a joint."),
        Passage(id="asthma-1", title="Asthma", url="https://www.nhlbi.nih.gov/health/asthma", source="NHLBI", lang="en",
                text="Asthma is a chronic lung disease that inflames and narrows the airways. Symptoms include wheezing, chest "
                     "tightness, shortness of breath and coughing."),
    ]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """A retrieval index over `passages()` (the default embedder), for the server's tests."""
    index = pytest.importorskip("medtune.rag.index")
    return str(index.build_index(passages(), tmp_path_factory.mktemp("serve-index") / "idx", progress=False))


