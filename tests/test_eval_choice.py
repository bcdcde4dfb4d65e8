"""Multiple-choice scoring: log-likelihoods, predictions, macro-F1, intervals, prompts, few-shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from medtune.eval.choice_metrics import macro_f1, predictions, summarize, with_interval
from medtune.eval.loglik import OptionScorer, Request
from medtune.eval.tasks import TaskError, choice_request, fewshot_examples
from medtune.records import QARecord

REQUESTS = [
    Request("Question: What are the symptoms of asthma ?\nAnswer:", (" Pain and fever .", " Rest", " medicines and rest and more")),
    Request("Question: How to treat gout ?\nAnswer: ", (" Rest and medicines .", " fever")),  # trailing space moves to the options
    Request("gout", (" Rest .", " a", " b", " c c c c")),
]


def _reference_causal(model, tokenizer, context: str, option: str) -> float:
    """One option, one forward pass over prompt + option, full logits: the textbook computation."""
    if context.endswith(" "):
        context, option = context.rstrip(), " " + option
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    whole = tokenizer(context + option, add_special_tokens=False).input_ids
    cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    logp = model(ids).logits.log_softmax(-1)[0]
    return sum(logp[len(ctx) - 1 + k, t].item() for k, t in enumerate(cont))


@pytest.mark.parametrize("batch_tokens", [4096, 8])  # all questions in one pass / one question per pass
def test_causal_scores_equal_one_forward_per_option(tiny_llama, batch_tokens):
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    got = OptionScorer(model, tok, batch_tokens=batch_tokens).score(REQUESTS, progress=False)
    with torch.inference_mode():
        want = [[_reference_causal(model, tok, r.context, o) for o in r.options] for r in REQUESTS]
    assert [len(g) for g in got] == [3, 2, 4]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-5, atol=1e-4)


def test_seq2seq_scores_equal_decoder_loss(tiny_t5):
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5), AutoTokenizer.from_pretrained(tiny_t5)
    got = OptionScorer(model, tok).score(REQUESTS[:1], progress=False)[0]
    with torch.inference_mode():
        enc = tok(REQUESTS[0].context, add_special_tokens=False, return_tensors="pt").input_ids
        for option, score in zip(REQUESTS[0].options, got):
            labels = tok(option, add_special_tokens=False, return_tensors="pt").input_ids
            mean_nll = model(input_ids=enc, labels=labels).loss.item()
            assert score == pytest.approx(-mean_nll * labels.shape[1], rel=1e-5)


def test_option_without_tokens_is_an_error(tiny_llama):
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ValueError, match="adds no token"):
        OptionScorer(model, tok).score([Request("Answer:", (" yes", ""))], progress=False)


def test_predictions_by_likelihood_and_per_character():
    # Item 1: option 0 is likelier, but per character option 1 wins (-6/8 > -2/2).
    # Item 2: both rules agree on option 2.
    raw, norm = predictions([[-2.0, -6.0], [-5.0, -4.0, -1.0]], [(" a", " abcdefg"), ("x", "y", "z")])
    assert raw == [0, 2] and norm == [1, 2]


def test_macro_f1_hand_computed():
    gold, pred = np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])  # a model that always answers "A"
    # A: precision 2/4, recall 1 -> F1 2/3; B: F1 0 -> macro 1/3, while accuracy is 1/2.
    assert macro_f1(gold, pred) == pytest.approx(1 / 3)
    assert macro_f1(gold, pred) == pytest.approx(f1_score(gold, pred, average="macro"))


def test_summary_intervals_and_categories():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 4, 400).tolist()
    pred = [g if rng.random() < 0.6 else (g + 1) % 4 for g in gold]
    cats = ["medicine" if i % 2 else "nursing" for i in range(400)]
    s = summarize(gold, pred, pred, cats, seed=0)
    acc = s["accuracy"]
    assert acc["value"] == pytest.approx(np.mean(np.array(gold) == np.array(pred)))
    low, high = acc["ci95"]
    assert low < acc["value"] < high and 0.05 < high - low < 0.15  # ~ +-1.96 * sqrt(.6 * .4 / 400) = +-0.048
    assert summarize(gold, pred, pred, cats, seed=0) == s  # seeded: the same intervals every time
    assert set(s["by_category"]) == {"medicine", "nursing"} and sum(c["n"] for c in s["by_category"].values()) == 400
    assert with_interval(macro_f1, np.array([1]), np.array([1]))["ci95"] == [1.0, 1.0]


ITEM = QARecord("¿Qué hueso es el más largo?", "Fémur", id="q1", options=("Fémur", "Tibia", "Radio"), answer_index=0, language="es")
SHOT = QARecord("¿Cuántas cámaras tiene el corazón?", "Cuatro", id="q2", options=("Dos", "Cuatro"), answer_index=1, language="es")


def test_cloze_and_letter_prompts():
    cloze = choice_request(ITEM, "cloze", "es")
    assert cloze.context == "Pregunta: ¿Qué hueso es el más largo?\nRespuesta:"
    assert cloze.options == (" Fémur", " Tibia", " Radio")
    letters = choice_request(ITEM, "letters", "en", [SHOT])
    assert letters.context == (
        "Question: ¿Cuántas cámaras tiene el corazón?\nA. Dos\nB. Cuatro\nAnswer: B\n\n"
        "Question: ¿Qué hueso es el más largo?\nA. Fémur\nB. Tibia\nC. Radio\nAnswer:"
    )
    assert letters.options == (" A", " B", " C")
    with_passage = choice_request(QARecord("Does it work?", "yes", context="We tried it.", options=("yes", "no"), answer_index=0), "cloze", "en")
    assert with_passage.context == "Abstract: We tried it.\nQuestion: Does it work?\nAnswer:"


def test_fewshot_examples_never_show_the_item_and_prefer_its_category():
    pool = [QARecord(f"q{i}", "a", id=f"id{i}", category="anatomy" if i < 3 else "genetics", options=("a", "b"), answer_index=0) for i in range(8)]
    item = pool[0]
    shots = fewshot_examples(item, pool, 2)
    assert len(shots) == 2 and item not in shots and all(s.category == "anatomy" for s in shots)
    assert fewshot_examples(item, pool, 2) == shots  # seeded
    mixed = fewshot_examples(item, pool, 4)  # not enough anatomy questions: any category
    assert len(mixed) == 4 and item not in mixed
    assert fewshot_examples(item, pool, 0) == []
    with pytest.raises(TaskError, match="8-shot needs 8"):
        fewshot_examples(item, pool, 8)
