"""Synthetic QA from passages: parsing, deduplication, the support filter, provenance, the real model path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from medtune.data import load_source
from medtune.data.synth import (
    PROMPTS,
    parse_pairs,
    provenance_path,
    support,
    synthesize,
)
from medtune.recipe import SourceConfig

# Passages in the Spanish clinical text export's shape (raw_text, document_id as a float, topic).
CASES = {
    "good": "Varón de 70 años, minero jubilado, con hematuria macroscópica. Se diagnostica carcinoma urotelial de vejiga y se realiza resección transuretral.",
    "malformed": "Mujer de 45 años con dolor abdominal de una semana de evolución. La ecografía muestra colelitiasis sin signos de colecistitis aguda.",
    "dup": "Paciente de 60 años con fiebre y tos productiva. La radiografía de tórax muestra una neumonía en el lóbulo inferior derecho.",
    "near": "Niño de 8 años con asma bronquial que acude por crisis. Se trata con salbutamol inhalado y corticoides orales con buena respuesta.",
    "unsupported": "Varón de 77 años sin antecedentes de interés que consulta por debilidad muscular proximal y eritema en heliotropo en los párpados.",
    "extra": "Mujer de 30 años embarazada de 12 semanas con náuseas y vómitos. Se pauta dieta fraccionada y doxilamina con piridoxina.",
}
OUTPUTS = {
    "good": "Pregunta: ¿Qué diagnóstico se hizo?\nRespuesta: Carcinoma urotelial de vejiga.\n\n"
            "Pregunta: ¿Qué tratamiento se realizó?\nRespuesta: Resección transuretral.",
    "malformed": "La paciente tiene colelitiasis.",
    "dup": "Pregunta: ¿Qué muestra la radiografía?\nRespuesta: Una neumonía en el lóbulo inferior derecho.\n"
           "Pregunta: ¿qué muestra la radiografía ?\nRespuesta: Neumonía.",
    "near": '[{"pregunta": "¿Con qué se trata la crisis de asma?", "respuesta": "Con salbutamol inhalado y corticoides orales."},'
            ' {"pregunta": "¿Y con qué se trata la crisis de asma?", "respuesta": "Salbutamol inhalado."}]',
    "unsupported": "Pregunta: ¿Qué tratamiento recibe?\nRespuesta: Metotrexato semanal y rituximab intravenoso.\n"
                   "Pregunta: ¿Qué edad tiene?\nRespuesta: Sí.",
    "extra": "1. Pregunta: ¿De cuántas semanas está embarazada?\nRespuesta: De 12 semanas.\n"
             "2. Pregunta: ¿Qué síntomas tiene?\nRespuesta: Náuseas y vómitos.\n"
             "3. Pregunta: ¿Qué se pauta?\nRespuesta: Dieta fraccionada y doxilamina con piridoxina.",
}


def assert_every_generation_counted(report: dict, outputs: list[str], per_passage: int) -> None:
    """Counts recomputed from the generations themselves: each is malformed (no pair) or parsed; of its pairs, those
    beyond `per_passage` are extra, and each of the others is a record or exactly one drop reason."""
    n_pairs = [len(parse_pairs(o)) for o in outputs]
    dropped = report["dropped"]
    assert report["generations"]["items"] == report["passages"] == len(outputs)
    assert dropped.get("malformed", 0) == n_pairs.count(0)
    assert report["pairs_parsed"] == sum(n_pairs)
    assert dropped.get("extra_pairs", 0) == sum(max(0, n - per_passage) for n in n_pairs)
    judged = {k: v for k, v in dropped.items() if k not in ("malformed", "extra_pairs")}
    assert all(v > 0 for v in dropped.values())
    assert report["records"] + sum(judged.values()) == sum(min(n, per_passage) for n in n_pairs)


class Canned:
    """A deterministic generator: the canned output for the passage named in each prompt."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.prompts += prompts
        return [next(OUTPUTS[k] for k, text in CASES.items() if text in p) for p in prompts]


@pytest.fixture
def clinical_jsonl(tmp_path) -> Path:
    rows = [{"raw_text": text, "topic": "", "source": "3", "country": "es", "document_id": float(i)} for i, text in enumerate(CASES.values())]
    rows.insert(1, {"raw_text": " Biopsia muscular normal .", "document_id": 99.0})  # too short
    rows.append(dict(rows[0]))  # a repeated passage
    path = tmp_path / "cases_es.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_parse_labelled_json_and_malformed_generations():
    assert parse_pairs("Pregunta: ¿Qué edad tiene?\nRespuesta: 49 años.") == [("¿Qué edad tiene?", "49 años.")]
    assert parse_pairs("1. **Question 1:** What is X?\n**Answer 1:** X is Y.\n\nNote: made up") == [("What is X?", "X is Y.")]
    assert parse_pairs("Pergunta: Qual a dose? Resposta: 5 mg.") == [("Qual a dose?", "5 mg.")]
    assert parse_pairs("P: ¿Cuál?\nR: Esta.") == [("¿Cuál?", "Esta.")]
    assert parse_pairs('Sure: {"question": "Q?", "answer": "A."}') == [("Q?", "A.")]
    assert parse_pairs("Question: with no answer?") == []
    assert parse_pairs("Answer: with no question.") == []
    assert parse_pairs("just prose, no labels") == []
    assert parse_pairs('{"question": "missing answer key"}') == []


def test_support_counts_content_words_found_in_the_passage():
    passage = "Paciente con fractura vertebral y dolor lumbar."
    assert support("Fracturas vertebrales.", passage) == 1.0  # inflections match by their first five letters
    assert support("La paciente presenta fracturas vertebrales", passage) == 0.75  # "presenta" is not in it
    assert support("Sí.", passage) is None  # nothing to check: counted as uninformative


def test_synthesize_counts_every_pair_it_does_not_keep(clinical_jsonl, tmp_path):
    out = tmp_path / "synth.jsonl"
    canned = Canned()
    report = synthesize(clinical_jsonl, out, model="canned-llm", language="es", per_passage=2,
                        cache_dir=tmp_path / "cache", generate=canned, progress=False)

    assert report["passages"] == 6 and report["passages_skipped"] == {"too_short": 1}
    # the repeated report is dropped by the passage reader, as `index build` drops it, and counted there
    assert [(r["row"], r["reason"]) for r in report["skipped_rows"]] == [(8, "repeats document '0' of line 1 word for word")]
    assert len(canned.prompts) == 6 and all(p.startswith(PROMPTS["es"][:20]) for p in canned.prompts)
    assert report["pairs_parsed"] == 11
    assert report["dropped"] == {"duplicate": 1, "extra_pairs": 1, "malformed": 1, "near_duplicate": 1,
                                 "uninformative": 1, "unsupported": 1}
    assert report["records"] == 6
    assert_every_generation_counted(report, Canned()(canned.prompts), per_passage=2)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["0#1", "0#2", "2#1", "3#1", "5#1", "5#2"]
    assert rows[0] | {"context": ""} == {
        "question": "¿Qué diagnóstico se hizo?", "answer": "Carcinoma urotelial de vejiga.", "id": "0#1",
        "source": "cases_es.jsonl", "url": "", "focus": "0", "qtype": "", "language": "es", "category": "",
        "context": "", "options": [], "answer_index": None, "rejected": None, "synthetic": True,
    }
    assert rows[0]["context"] == CASES["good"] and rows[3]["context"] == CASES["near"]
    records, _ = load_source(SourceConfig(loader="jsonl", path=str(out), language="es"))
    assert [r.question for r in records] == [r["question"] for r in rows] and records[0].context == CASES["good"]

    prov = json.loads(provenance_path(out).read_text())
    assert provenance_path(out).name == "synth.provenance.json"
    assert prov["model"] == "canned-llm" and prov["per_passage"] == 2 and prov["prompts"] == {"es": PROMPTS["es"]}
    assert prov["generation"] == {"max_new_tokens": 256, "num_beams": 1, "do_sample": False}
    assert prov["source"]["sha256"] == hashlib.sha256(clinical_jsonl.read_bytes()).hexdigest()
    assert prov["counts"]["records"] == 6 and prov["counts"]["dropped"]["unsupported"] == 1 and prov["created"]

    again = Canned()
    rerun = synthesize(clinical_jsonl, tmp_path / "again.jsonl", model="canned-llm", language="es", per_passage=2,
                       cache_dir=tmp_path / "cache", generate=again, progress=False)
    assert again.prompts == [] and rerun["generations"]["cached"] == 6
    assert (tmp_path / "again.jsonl").read_bytes() == out.read_bytes()

    # Three per passage: no pair is extra now, and the 3rd of "extra" is judged (and kept) instead.
    canned = Canned()
    three = synthesize(clinical_jsonl, tmp_path / "three.jsonl", model="canned-llm", language="es", per_passage=3,
                       cache_dir=tmp_path / "cache", generate=canned, progress=False)
    assert three["pairs_parsed"] == 11 and three["records"] == 7
    assert three["dropped"] == {"duplicate": 1, "malformed": 1, "near_duplicate": 1, "uninformative": 1, "unsupported": 1}
    assert_every_generation_counted(three, Canned()(canned.prompts), per_passage=3)


def test_qa_answers_as_passages_with_the_tiny_model(qa_jsonl, tiny_llama, tmp_path):
    out = tmp_path / "synth.jsonl"
    report = synthesize(qa_jsonl, out, model=str(tiny_llama), min_chars=20, max_passages=2, batch_size=2,
                        generation={"max_new_tokens": 8}, cache_dir=tmp_path / "cache", progress=False)
    assert report["passages"] == 2 and report["passages_skipped"] == {"over_limit": 38}
    assert report["generations"] == {"items": 2, "unique": 2, "cached": 0, "generated": 2}
    # Every generation is counted, from what the model wrote (read back from the cache) ...
    outputs = [json.loads(line)["v"] for line in Path(report["cache"]).read_text().splitlines()]
    assert len(outputs) == 2 and all(outputs)
    assert_every_generation_counted(report, outputs, per_passage=1)
    # ... which, from a random model, is gibberish with no "Question:"/"Answer:" labels: two malformed generations.
    assert not any(label in o.lower() for o in outputs for label in ("question", "answer"))
    assert report["dropped"] == {"malformed": 2} and report["records"] == report["pairs_parsed"] == 0
    assert out.read_text() == "" and json.loads(provenance_path(out).read_text())["prompts"] == {"en": PROMPTS["en"]}


def test_bad_arguments_are_refused(clinical_jsonl, tmp_path):
    with pytest.raises(ValueError, match="no prompt for language 'fr'"):
        synthesize(clinical_jsonl, tmp_path / "o.jsonl", language="fr", generate=Canned(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match="per_passage must be at least 1"):
        synthesize(clinical_jsonl, tmp_path / "o.jsonl", per_passage=0, generate=Canned(), cache_dir=tmp_path)
