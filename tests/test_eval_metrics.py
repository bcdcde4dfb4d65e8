import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import CHRF

from medtune.eval import text_metrics
from medtune.eval.metrics import UnicodeWordTokenizer

ROUGE_KEYS = {"rouge1", "rouge2", "rougeL", "rougeLsum"}


def test_identical_texts_score_100():
    texts = [
        "The patient should take ibuprofen twice a day. Rest is advised.",
        "Hypertension is treated with lifestyle changes and medication.",
    ]
    scores = text_metrics(texts, list(texts))
    assert set(scores) == ROUGE_KEYS | {"bleu", "chrf"}
    for key, value in scores.items():
        assert value == pytest.approx(100.0), key


def test_rouge1_hand_computed():
    # reference tokens: the patient has a fever   (5)
    # prediction tokens:    patient has   fever   (3), all 3 in the reference
    # P = 3/3, R = 3/5, F = 2*P*R/(P+R) = 2*0.6/1.6 = 0.75 -> 75.0
    # bigrams: ref {the patient, patient has, has a, a fever}, pred {patient has, has fever}
    # overlap 1 -> P = 1/2, R = 1/4, F = 2*(1/8)/(3/4) = 1/3 -> 33.33
    scores = text_metrics(["patient has fever"], ["the patient has a fever"], metrics=("rouge",))
    assert set(scores) == ROUGE_KEYS
    assert scores["rouge1"] == pytest.approx(75.0)
    assert scores["rouge2"] == pytest.approx(100 / 3)
    assert scores["rougeL"] == pytest.approx(75.0)


def test_rouge_is_averaged_over_examples():
    # example 1: 100, example 2: no overlap -> 0; mean 50
    scores = text_metrics(["fever", "cough"], ["fever", "rash"], metrics=("rouge",))
    assert scores["rouge1"] == pytest.approx(50.0)


def test_english_stemming():
    pred, ref = ["two treatments were given"], ["two treatment was given"]
    # stemmed: treatment(s) -> treatment, were/was stay different: 3 of 4 tokens match
    assert text_metrics(pred, ref, metrics=("rouge",))["rouge1"] == pytest.approx(75.0)
    # without a stemmer (non-English path) "treatments" != "treatment": 2 of 4
    assert text_metrics(pred, ref, metrics=("rouge",), language="es")["rouge1"] == pytest.approx(50.0)


def test_spanish_accented_words_match():
    scores = text_metrics(["diagnóstico médico"], ["diagnóstico médico"], metrics=("rouge",), language="es")
    assert all(v == pytest.approx(100.0) for v in scores.values())
    assert UnicodeWordTokenizer().tokenize("Diagnóstico MÉDICO, ¿sí?") == ["diagnóstico", "médico", "sí"]


def test_accented_tokens_not_dropped_unlike_default_tokenizer():
    pred, ref = "é grave", "é leve"
    # ours: tokens [é, grave] vs [é, leve] -> 1 of 2 match -> 50
    ours = text_metrics([pred], [ref], metrics=("rouge",), language="pt")["rouge1"]
    assert ours == pytest.approx(50.0)
    # rouge-score's default tokenizer keeps only [a-z0-9]: "é" vanishes -> [grave] vs [leve] -> 0
    default = rouge_scorer.RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure * 100
    assert default == pytest.approx(0.0)


def test_default_tokenizer_would_inflate_different_accented_words():
    # default: "médico" -> [m, dico], "médica" -> [m, dica]: the stray "m" matches (50).
    # ours: [médico] vs [médica] -> 0
    default = rouge_scorer.RougeScorer(["rouge1"]).score("médica", "médico")["rouge1"].fmeasure
    assert default == pytest.approx(0.5)
    assert text_metrics(["médico"], ["médica"], metrics=("rouge",), language="es")["rouge1"] == 0.0


def test_decomposed_accents_match_composed():
    decomposed = "diagno\u0301stico"  # o + combining acute accent
    scores = text_metrics([decomposed], ["diagnóstico"], metrics=("rouge",), language="es")
    assert scores["rouge1"] == pytest.approx(100.0)


def test_rougelsum_rewards_reordered_sentences():
    # Same two sentences (5 + 4 = 9 tokens) in swapped order. rougeL takes one
    # LCS over the whole text: "the patient has a fever" = 5 of 9 -> P = R = F = 55.56.
    # rougeLsum takes the union LCS per reference sentence: 9 of 9 -> 100.
    # Equal scores would mean the pysbd sentence split was not applied.
    ref = "The patient has a fever. She was given paracetamol."
    pred = "She was given paracetamol. The patient has a fever."
    for language in ("en", "es"):
        scores = text_metrics([pred], [ref], metrics=("rouge",), language=language)
        assert scores["rouge1"] == pytest.approx(100.0)
        assert scores["rougeLsum"] == pytest.approx(100.0)
        assert scores["rougeL"] < scores["rougeLsum"]
        assert scores["rougeL"] == pytest.approx(100 * 5 / 9)


def test_bleu_and_chrf_sanity():
    ref = ["The patient was prescribed amoxicillin for seven days."]
    close = ["The patient was prescribed amoxicilin for seven days."]  # one typo
    unrelated = ["Quarterly revenue grew by twelve percent."]
    close_scores = text_metrics(close, ref, metrics=("bleu", "chrf"))
    far_scores = text_metrics(unrelated, ref, metrics=("bleu", "chrf"))
    assert set(close_scores) == {"bleu", "chrf"}
    assert 50.0 < close_scores["chrf"] < 100.0
    assert far_scores["chrf"] < 20.0
    assert 0.0 < close_scores["bleu"] < 100.0
    assert far_scores["bleu"] < 10.0  # only "." matches; sacrebleu's exp smoothing keeps it above 0
    assert close_scores["bleu"] > 3 * far_scores["bleu"]
    # corpus-level sacrebleu chrF, unchanged defaults
    assert close_scores["chrf"] == pytest.approx(CHRF().corpus_score(close, [ref]).score)


def test_metric_selection():
    assert set(text_metrics(["a b"], ["a b"], metrics=("chrf",))) == {"chrf"}
    assert set(text_metrics(["a b"], ["a b"], metrics="bleu")) == {"bleu"}


@pytest.mark.parametrize(
    "preds, refs, kwargs, match",
    [
        (["a"], ["a", "b"], {}, "differ in length"),
        ([], [], {}, "empty"),
        (["a"], ["a"], {"metrics": ("rouge", "meteor")}, "allowed values"),
        (["a"], ["a"], {"metrics": ()}, "allowed values"),
    ],
)
def test_validation_errors(preds, refs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        text_metrics(preds, refs, **kwargs)


def test_unknown_metric_error_names_allowed_values():
    with pytest.raises(ValueError) as err:
        text_metrics(["a"], ["a"], metrics=("bertscore",))
    assert "bertscore" in str(err.value)
    for name in ("rouge", "bleu", "chrf"):
        assert name in str(err.value)
