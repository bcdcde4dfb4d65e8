"""Grounded answers: numbered sources in the prompt, the support check, and every way of not answering."""

from __future__ import annotations

import json

import pytest

from medtune.rag.answer import Answerer, ask
from medtune.rag.index import build_index, load_index
from medtune.rag.passages import Passage
from medtune.rag.retrieve import Retriever

PASSAGES = [
    Passage(id="noonan-1", title="Noonan syndrome", url="https://ghr.nlm.nih.gov/condition/noonan-syndrome", source="GHR", lang="en",
            text="Noonan syndrome is a condition that affects many areas of the body. It is characterized by mildly unusual facial "
                 "features, short stature, heart defects, bleeding problems, and skeletal malformations."),
    Passage(id="gout-1", title="Gout", url="https://www.niams.nih.gov/health-topics/gout", source="NIAMS", lang="en",
            text="Gout is a form of arthritis that causes sudden attacks of pain and swelling in the joints. It is caused by too much "
                 "uric acid in the blood, which forms crystals in a joint."),
    Passage(id="asthma-1", title="Asthma", url="https://www.nhlbi.nih.gov/health/asthma", source="NHLBI", lang="en",
            text="Asthma is a chronic lung disease that inflames and narrows the airways. Symptoms include wheezing, chest "
                 "tightness, shortness of breath and coughing."),
]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> Retriever:
    out = build_index(PASSAGES, tmp_path_factory.mktemp("index") / "idx", progress=False)
    return Retriever(load_index(out))


@pytest.fixture(scope="module")
def answerer(retriever) -> Answerer:
    return Answerer(retriever, k=2)


def test_prompt_numbers_the_retrieved_sources(answerer):
    prep = answerer.prepare("What are the signs of Noonan syndrome?")
    assert prep.final is None and prep.language == "en"
    assert [s.id for s in prep.sources][0] == "noonan-1"
    system, user = prep.messages
    assert system["role"] == "system" and "[1] Noonan syndrome\nNoonan syndrome is a condition" in system["content"]
    assert "[2] " in system["content"] and "Cite the sources" in system["content"]
    assert user == {"role": "user", "content": "What are the signs of Noonan syndrome?"}


def test_answer_taken_from_the_sources_is_grounded_and_lists_urls(answerer):
    prep = answerer.prepare("What are the signs of Noonan syndrome?")
    generated = "Noonan syndrome is characterized by unusual facial features, short stature and heart defects [1]."
    ans = answerer.finish(prep, generated)
    assert ans.grounded and ans.reason is None
    assert ans.body == generated  # what a server streamed is not rewritten
    assert ans.support[0]["source"] == 1 and ans.support[0]["score"] >= answerer.min_support
    assert "[1] Noonan syndrome — https://ghr.nlm.nih.gov/condition/noonan-syndrome" in ans.tail
    assert "\n\nSupported by [1].\n\n" in ans.tail
    assert ans.text.startswith(generated) and ans.text.rstrip().endswith(ans.safety["notice"])
    d = ans.to_dict()
    assert d["sources"][0]["url"].startswith("https://ghr.nlm.nih.gov") and "text" not in d["sources"][0]


def test_invented_answer_is_flagged_with_what_the_source_says(answerer):
    prep = answerer.prepare("What are the signs of Noonan syndrome?")
    ans = answerer.finish(prep, "The best treatment is to drink orange juice every morning and to sleep on the left side.")
    assert not ans.grounded and ans.reason == "unsupported" and "Supported by" not in ans.tail
    assert answerer.rules.message("unsupported", "en") in ans.tail
    assert "[1] Noonan syndrome is a condition that affects many areas of the body." in ans.tail


def test_citation_of_a_missing_source_is_reported(answerer):
    prep = answerer.prepare("What are the signs of Noonan syndrome?")
    ans = answerer.finish(prep, "Noonan syndrome causes short stature and heart defects [1] [7].")
    assert "[7]" in ans.tail.split(answerer.rules.message("bad_citation", "en"))[1].splitlines()[0]


def test_off_topic_question_gets_no_sources_instead_of_an_answer(answerer):
    prep = answerer.prepare("What is the best pizza recipe with pineapple?")
    assert prep.final is not None and prep.messages == []
    assert prep.final.reason == "no_sources" and not prep.final.grounded
    assert prep.final.body == answerer.rules.message("no_sources", "en")


def test_dose_change_for_a_named_patient_is_refused_without_generating(answerer):
    called = []
    ans = answerer.answer("Should I increase John's insulin to 20 units tonight?", lambda m: called.append(m) or "x")
    assert called == [] and ans.reason == "refused" and ans.body == answerer.rules.check("Should I increase John's insulin to 20 units tonight?").refusal


def test_emergency_advice_comes_first(answerer):
    q = "I have crushing chest pain right now and my left arm is numb"
    ans = answerer.answer(q, lambda m: "Asthma symptoms include chest tightness [1].")
    verdict = answerer.rules.check(q)
    assert verdict.emergency is not None and ans.text.startswith(verdict.emergency.message)


def test_spanish_question_is_answered_in_spanish_words(answerer):
    prep = answerer.prepare("¿Cuáles son los síntomas del síndrome de Noonan?")
    assert prep.language == "es" and "Responde en español" in prep.messages[0]["content"]
    ans = answerer.finish(prep, "El síndrome de Noonan causa baja estatura [1].")
    assert answerer.rules.message("sources_heading", "es") in ans.tail and answerer.rules.notice("es") in ans.tail


def test_without_an_index_the_answer_says_it_is_not_grounded():
    a = Answerer(None)
    ans = a.answer("What causes gout?", lambda m: "Gout is caused by uric acid.")
    assert ans.reason == "no_index" and not ans.grounded and a.rules.message("ungrounded", "en") in ans.tail


def test_ask_end_to_end_with_a_model(tiny_llama, tmp_path):
    out = build_index(PASSAGES, tmp_path / "idx", progress=False)
    ans = ask("What are the symptoms of asthma?", index=out, model=str(tiny_llama), k=2, max_new_tokens=8)
    assert ans.sources[0].url == "https://www.nhlbi.nih.gov/health/asthma"
    assert "https://www.nhlbi.nih.gov/health/asthma" in ans.text
    assert json.loads(json.dumps(ans.to_dict()))["question"] == "What are the symptoms of asthma?"
