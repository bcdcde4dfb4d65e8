"""Machine translation of QA data: quality flags, the disk cache, resume after a kill, the real model path
(T5, a causal LM, and tiny random Marian and NLLB models with their real tokenizer classes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import qa_rows

from medtune.data import load_source
from medtune.data.generation import GenerationCache
from medtune.data.translate import (
    missing_numbers,
    missing_units,
    quality_flags,
    translate_file,
)
from medtune.models import ModelNotAvailable
from medtune.recipe import SourceConfig

# MarianTokenizer's optional punctuation normaliser
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Canned:
    """A deterministic translator: known sentences from a table, others prefixed with "ES ";
    it remembers every sentence it was asked for."""

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table, self.seen, self.calls = table or {}, [], 0

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls += 1
        self.seen += texts
        return [self.table.get(t, f"ES {t}") for t in texts]


def test_numbers_and_units_survive_decimal_commas_and_thousands_separators():
    assert missing_numbers("Take 2.5 mg, up to 1,000 IU in 24 h.", "Tome 2,5 mg, hasta 1.000 UI en 24 h.") == []
    assert missing_numbers("1,234.5 mL", "1.234,5 ml") == []
    assert missing_numbers("2.5 mg", "25 mg") == ["2.5"]
    assert missing_numbers("on 28/01/2019", "el 28/1/2019") == []  # 01 and 1 are the same number
    assert missing_units("5 mg/dL and 37 °C, 10%", "5 mg/dl y 37 °C, 10 %") == []
    assert missing_units("5 mg/dL and 40 IU", "5 miligramos por decilitro y 40 UI") == ["5 mg/dL"]
    assert missing_units("0.6 mg once, at most 1.2 mg a day", "0,6 g una vez, como máximo 1,2 mg al día") == ["0.6 mg"]
    assert quality_flags("Give 40 mg twice a day to adults.", "Dé dos veces.", 0.5) == (["numbers", "units", "short"], ["40", "40 mg"])
    assert quality_flags("Gout is a form of arthritis.", "Gout is a form of arthritis.", 0.5) == (["identical"], [])
    assert quality_flags("Aspirin", "Aspirin", 0.5) == ([], [])  # a name stays a name
    assert quality_flags("Gout is a form of arthritis.", "  ", 0.5) == (["empty"], [])


def test_translation_flags_keeps_ids_and_reads_back(tmp_path):
    source = write_jsonl(tmp_path / "en.jsonl", [
        {"id": "ok", "question": "What is gout?", "answer": "Gout is arthritis. Take 2.5 mg of colchicine daily.", "focus": "gout"},
        {"id": "number", "question": "How much?", "answer": "Take 500 mg every 8 hours."},
        {"id": "short", "question": "Why?", "answer": "Because uric acid builds up in the joints over many years."},
        {"id": "same", "question": "What is lupus?", "answer": None},
    ])
    canned = Canned({
        "Take 2.5 mg of colchicine daily.": "Tome 2,5 mg de colchicina al día.",
        "Take 500 mg every 8 hours.": "Tome mg cada ocho horas.",
        "Because uric acid builds up in the joints over many years.": "Por ácido úrico.",
        "What is lupus?": "What is lupus?",
    })
    out = tmp_path / "es.jsonl"
    report = translate_file(source, out, "es", model="canned-mt", cache_dir=tmp_path / "cache", generate=canned, progress=False)

    assert report["records"] == report["written"] == 4
    assert report["flagged"] == 3 and report["flags"] == {"identical": 1, "numbers": 1, "short": 1, "units": 1}
    # 4 questions + 2 + 1 + 1 answer sentences, all distinct, one generate call per batch of 16
    assert report["sentences"] == {"items": 8, "unique": 8, "cached": 0, "generated": 8} and canned.calls == 1
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["ok"]["answer"] == "ES Gout is arthritis. Tome 2,5 mg de colchicina al día."
    assert rows["ok"]["focus"] == "gout" and rows["ok"]["mt_flags"] == []
    assert rows["number"]["mt_flags"] == ["numbers", "units"] and rows["number"]["mt_missing"] == ["500", "8", "500 mg"]
    assert rows["same"]["answer"] is None and rows["same"]["mt_flags"] == ["identical"]
    assert all(r["language"] == "es" and r["machine_translated"] and r["translated_from"] == "en"
               and r["source_id"] == r["id"] and r["mt_model"] == "canned-mt" for r in rows.values())

    records, load_report = load_source(SourceConfig(loader="jsonl", path=str(out), language="es"))
    assert [r.id for r in records] == ["ok", "number", "short", "same"] and load_report.skipped == []
    assert records[0].question == "ES What is gout?" and records[0].language == "es" and records[3].answer is None

    dropped = translate_file(source, tmp_path / "kept.jsonl", "es", model="canned-mt", cache_dir=tmp_path / "cache",
                             generate=canned, drop_flagged=True, progress=False)
    assert dropped["written"] == 1 and dropped["dropped"] == 3
    assert [json.loads(line)["id"] for line in (tmp_path / "kept.jsonl").read_text().splitlines()] == ["ok"]


def test_rerun_is_served_from_the_cache(qa_jsonl, tmp_path):
    first, second = Canned(), Canned()
    a = translate_file(qa_jsonl, tmp_path / "a.jsonl", "pt", model="m", cache_dir=tmp_path / "c", generate=first, batch_size=8, progress=False)
    b = translate_file(qa_jsonl, tmp_path / "b.jsonl", "pt", model="m", cache_dir=tmp_path / "c", generate=second, batch_size=8, progress=False)
    assert a["sentences"]["generated"] == 80 and first.calls == 10  # 40 questions + 40 one-sentence answers
    assert b["sentences"] == {"items": 80, "unique": 80, "cached": 80, "generated": 0} and second.calls == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # another target language or model is another cache entry
    other = Canned()
    translate_file(qa_jsonl, tmp_path / "c.jsonl", "es", model="m", cache_dir=tmp_path / "c", generate=other, progress=False)
    assert len(other.seen) == 80


RESUMABLE = """
import sys, time
from medtune.data.translate import translate_file

def slow(texts):
    time.sleep(0.25)
    return ["ES " + t for t in texts]

translate_file(sys.argv[1], sys.argv[2], "es", model="slow-mt", cache_dir=sys.argv[3], generate=slow, batch_size=4, progress=False)
"""


def test_resume_after_sigkill_redoes_nothing_and_matches_an_uninterrupted_run(tmp_path):
    # 10 records x (1 question + 3 answer sentences) = 40 distinct sentences, 10 batches of 4
    rows = [{"id": f"r{i}", "question": f"What is condition {i}?",
             "answer": f"Condition {i} is rare. It affects {i + 1} in 10,000 people. Treatment takes {i + 2} weeks."}
            for i in range(10)]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    out, cache_dir = tmp_path / "es.jsonl", tmp_path / "cache"
    cache_path = cache_dir / "translate" / "slow-mt-en-es.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", RESUMABLE, str(source), str(out), str(cache_dir)])
    try:
        deadline = time.monotonic() + 60
        while not (cache_path.exists() and cache_path.read_text().count("\n") >= 8):
            assert proc.poll() is None and time.monotonic() < deadline, "translation ended or stalled before the kill"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()  # nothing half-written
    done = {v.removeprefix("ES ") for v in GenerationCache(cache_path).entries.values()}
    assert 8 <= len(done) < 40

    rerun = Canned()
    report = translate_file(source, out, "es", model="slow-mt", cache_dir=cache_dir, generate=rerun, batch_size=4, progress=False)
    assert not done & set(rerun.seen) and len(rerun.seen) == 40 - len(done)
    assert report["sentences"]["cached"] == len(done) and report["written"] == 10

    fresh = tmp_path / "fresh.jsonl"
    translate_file(source, fresh, "es", model="slow-mt", cache_dir=tmp_path / "fresh-cache", generate=Canned(), batch_size=4, progress=False)
    assert out.read_bytes() == fresh.read_bytes()


def test_a_torn_cache_line_is_cut_off(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"k": "a", "v": "uno"}\n{"k": "b", "v": "do')
    cache = GenerationCache(path)
    assert cache.entries == {"a": "uno"} and cache.torn == 1
    cache.put_many({"b": "dos"})
    assert GenerationCache(path).entries == {"a": "uno", "b": "dos"}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_t5"])
def test_real_models_end_to_end(fixture, request, qa_jsonl, tmp_path, monkeypatch):
    model = str(request.getfixturevalue(fixture))
    rows = [json.loads(line) for line in qa_jsonl.read_text().splitlines()[:3]]
    source = write_jsonl(tmp_path / "en.jsonl", rows)
    kw = {"model": model, "cache_dir": tmp_path / "c", "batch_size": 4, "generation": {"max_new_tokens": 6}, "progress": False}
    report = translate_file(source, tmp_path / "es.jsonl", "es", **kw)
    assert report["kind"] == ("llm" if fixture == "tiny_llama" else "seq2seq")
    assert report["written"] == 3 and report["sentences"]["generated"] == 6
    assert sum(report["flags"].values()) >= report["flagged"] > 0  # a random model's gibberish is flagged, not dropped
    from medtune.predict import Predictor

    def no_loading(*args, **kwargs):
        raise AssertionError("a fully cached rerun loads no model")

    monkeypatch.setattr(Predictor, "from_pretrained", no_loading)
    again = translate_file(source, tmp_path / "es2.jsonl", "es", **kw)
    assert again["sentences"]["generated"] == 0
    assert (tmp_path / "es.jsonl").read_bytes() == (tmp_path / "es2.jsonl").read_bytes()


@pytest.fixture(scope="module")
def mt_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random translation models: one-pair and multi-target (>>es<< or >>spa<<) Marian, and NLLB-200."""
    from medtune.testing import make_marian, make_nllb

    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])] * 5
    root = tmp_path_factory.mktemp("mt-models")
    return {
        "marian": make_marian(root / "opus-mt-en-es", texts),
        "marian-multi": make_marian(root / "opus-mt-en-ROMANCE", texts, targets=("es", "pt")),
        "marian-multi-iso3": make_marian(root / "opus-mt-tc-big-en-roa", texts, targets=("spa", "por")),
        "nllb": make_nllb(root / "nllb-200", texts),
    }


def record_generate(monkeypatch, model_class) -> list[dict]:
    """Every `model_class.generate` call from now on: its input ids, other arguments and output ids."""
    original, calls = model_class.generate, []

    def generate(self, input_ids=None, **kwargs):
        out = original(self, input_ids=input_ids, **kwargs)
        calls.append({"input_ids": input_ids, "kwargs": kwargs, "output_ids": out})
        return out

    monkeypatch.setattr(model_class, "generate", generate)
    return calls


def translate_three(model: Path, tmp_path: Path, source_lang: str, target_lang: str) -> None:
    """Translate 3 QA rows (6 sentences) with `model` and check the report and the rows' provenance."""
    rows = qa_rows()[:3]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    report = translate_file(source, tmp_path / "out.jsonl", target_lang, model=str(model), source_lang=source_lang,
                            cache_dir=tmp_path / "c", batch_size=4, generation={"max_new_tokens": 6}, progress=False)
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert report["kind"] == "seq2seq" and report["written"] == 3 and report["sentences"]["generated"] == 6
    assert [r["source_id"] for r in out] == [r["id"] for r in out] == [r["id"] for r in rows]
    assert all(r["language"] == target_lang and r["translated_from"] == source_lang and r["machine_translated"]
               and r["mt_model"] == str(model) for r in out)


@pytest.mark.parametrize(("source_lang", "target_lang", "source_code", "target_code"),
                         [("en", "es", "eng_Latn", "spa_Latn"), ("pt", "es", "por_Latn", "spa_Latn"), ("en", "pt", "eng_Latn", "por_Latn")])
def test_nllb_gets_its_language_codes(mt_models, tmp_path, monkeypatch, source_lang, target_lang, source_code, target_code):
    from transformers import AutoTokenizer, M2M100ForConditionalGeneration

    vocab = AutoTokenizer.from_pretrained(mt_models["nllb"]).get_vocab()
    calls = record_generate(monkeypatch, M2M100ForConditionalGeneration)
    translate_three(mt_models["nllb"], tmp_path, source_lang, target_lang)
    assert len(calls) == 2  # 6 sentences in batches of 4
    for call in calls:
        # NLLB's source format is `src_lang_code tokens </s>` (padding on the right)
        assert call["input_ids"][:, 0].tolist() == [vocab[source_code]] * len(call["input_ids"])
        assert call["kwargs"]["forced_bos_token_id"] == vocab[target_code]
        # the decoder starts with </s>, then the forced target language code
        assert call["output_ids"][:, 1].tolist() == [vocab[target_code]] * len(call["output_ids"])


@pytest.mark.parametrize(("model", "target_lang", "first_token"),
                         [("marian-multi", "es", ">>es<<"), ("marian-multi", "pt", ">>pt<<"), ("marian-multi-iso3", "pt", ">>por<<"),
                          ("marian", "es", "▁")])
def test_marian_inputs_start_with_the_target_token_on_multi_target_models_only(mt_models, tmp_path, monkeypatch, model, target_lang, first_token):
    from transformers import AutoTokenizer, MarianMTModel

    tokenizer = AutoTokenizer.from_pretrained(mt_models[model])
    calls = record_generate(monkeypatch, MarianMTModel)
    translate_three(mt_models[model], tmp_path, "en", target_lang)
    inputs = [tokenizer.convert_ids_to_tokens(ids) for call in calls for ids in call["input_ids"]]
    assert len(inputs) == 6 and all(tokens[0].startswith(first_token) for tokens in inputs)
    # a one-pair model gets no prefix (it would read `>>es<<` as <unk>), and none gets forced tokens
    assert not any(tokenizer.unk_token in tokens for tokens in inputs)
    assert not any("forced_bos_token_id" in call["kwargs"] for call in calls)


def test_hub_translation_model_fails_fast_offline(qa_jsonl, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="hf download Helsinki-NLP/opus-mt-en-es"):
        translate_file(qa_jsonl, tmp_path / "es.jsonl", "es", model="Helsinki-NLP/opus-mt-en-es", cache_dir=tmp_path)
    assert time.monotonic() - start < 10


def test_bad_arguments_are_refused(qa_jsonl, tmp_path):
    with pytest.raises(ValueError, match="unsupported language 'fr'"):
        translate_file(qa_jsonl, tmp_path / "o.jsonl", "fr", generate=Canned(), cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"cannot translate field\(s\) \['url'\]"):
        translate_file(qa_jsonl, tmp_path / "o.jsonl", "es", fields=["url"], generate=Canned(), cache_dir=tmp_path)
