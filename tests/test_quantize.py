"""Quantization: int8/int4 saved, reloaded and generating; sizes, perplexity and the report; refusals."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece
import torch
from conftest import qa_rows
from safetensors import safe_open

from medtune.models import MODEL_CARD, cache_dir, load_adapter_model, load_quantized
from medtune.predict import Predictor
from medtune.quantize import QuantizeError, quantize
from medtune.models.quanto import WEIGHTS
from medtune.quantize.report import text_perplexity
from medtune.quantize.texts import load_texts

ANSWERS = [r["answer"] for r in qa_rows()]


@pytest.fixture(scope="module")
def llama128(tmp_path_factory) -> Path:
    """conftest's tiny Llama with 128-wide layers, so int4 groups of 128 inputs apply as on real models."""
    from medtune.testing import make_llama

    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])]
    return make_llama(tmp_path_factory.mktemp("models") / "llama128", texts * 5, vocab_size=300, hidden=128)


@pytest.fixture(scope="module", params=["int8", "int4", "int4-all"])
def quantized(request, llama128, tmp_path_factory) -> tuple[str, Path]:
    """int4 keeps v_proj, o_proj and down_proj in int8 by default; int4-all quantizes every Linear to int4."""
    keep = {"keep_int8": ()} if request.param == "int4-all" else {}
    out = quantize(llama128, request.param.split("-")[0], tmp_path_factory.mktemp("q") / request.param, eval_texts=ANSWERS[:20], **keep)
    return request.param, out


def test_saved_folder_reloads_and_generates(quantized):
    run, out = quantized
    method = run.split("-")[0]
    assert {WEIGHTS, "quanto_qmap.json", "config.json", MODEL_CARD, "quantize_report.json", "quantize_report.md"} <= {
        p.name for p in out.iterdir()}
    card = json.loads((out / MODEL_CARD).read_text())
    q = card["quantization"]
    assert (q["method"], q["bits"], q["library"]) == (method, {"int8": 8, "int4": 4}[method], "optimum-quanto")
    assert Path(q["source_model"]).name == "llama128" and q["embeddings_quantized"] is False
    assert q["int8_layers"] == {"int8": None, "int4": 3 * 2, "int4-all": 0}[run]  # 2 layers
    model, _ = load_quantized(out)
    layer = model.model.layers[0]
    kinds = {name: (module.weight_qtype.name, module.weight_group_size) for name, module in [
        ("q", layer.self_attn.q_proj), ("v", layer.self_attn.v_proj), ("o", layer.self_attn.o_proj),
        ("gate", layer.mlp.gate_proj), ("down", layer.mlp.down_proj)]}
    int8, int4 = ("qint8", None), ("qint4", 32)
    assert kinds == {"int8": dict.fromkeys(kinds, int8), "int4-all": dict.fromkeys(kinds, int4),
                     "int4": {"q": int4, "v": int8, "o": int8, "gate": int4, "down": int8}}[run]
    answers = Predictor.from_pretrained(out).predict(["What causes gout ?", "How to treat asthma ?"], max_new_tokens=4, num_beams=1)
    assert len(answers) == 2 and all(answers)  # under torch.inference_mode, as Predictor.generate runs


def test_linear_weights_shrink_by_the_bit_width(quantized, llama128):
    """Linear weights: 32 bits -> 8 (+ one fp32 scale per row) or 4 (+ fp32 scale and shift per 32 inputs)."""
    run, out = quantized
    ratio = _layer_weight_bytes(llama128 / "model.safetensors") / _layer_weight_bytes(out / WEIGHTS)
    int8, int4 = 4 * 128 / (128 + 4), 4 * 32 / (16 + 8)  # int8: rows of 128 or 256 inputs
    low, high = {"int8": (int8, 4.0), "int4": (int8 * 1.1, int4 * 0.9), "int4-all": (int4, 5.4)}[run]
    assert low * 0.99 <= ratio <= high, ratio
    report = json.loads((out / "quantize_report.json").read_text())
    # Embeddings stay fp32, so the whole file shrinks less than the Linear layers.
    assert {"int8": 2.5, "int4": 2.7, "int4-all": 3.2}[run] < report["comparison"]["size_ratio"] < ratio


def test_int4_with_int8_layers_in_bf16_reloads_and_runs(llama128, qa_jsonl, tmp_path):
    """bf16 int8 layers run torch's int8 x bf16 CPU kernel, which crashed the process on weights loaded at
    unaligned offsets: a fresh process, so a crash is a failure here rather than the end of the test run."""
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "medtune.cli", "quantize", str(llama128), "--method", "int4", "--dtype", "bfloat16",
           "--keep-int8", "v_proj,down_proj", "--out", str(out), "--eval-data", str(qa_jsonl), "--eval-samples", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "quantize_report.json").read_text())
    assert report["quantization"]["int8_layers"] == 2 * 2 and report["quantized"]["dtype"] == "bfloat16"
    assert abs(report["comparison"]["perplexity_change_pct"]) < 3.0


def _layer_weight_bytes(path: Path) -> int:
    """Bytes of the transformer blocks' Linear weights (quantized: data, scales, shifts) in a safetensors file."""
    with safe_open(path, "pt") as f:
        names = [k for k in f.keys() if ".layers." in k and "norm" not in k and not k.endswith(("input_scale", "output_scale"))]  # noqa: SIM118
        return sum(f.get_tensor(k).nbytes for k in names)


def test_perplexity_stays_close_to_the_source(quantized):
    run, out = quantized
    report = json.loads((out / "quantize_report.json").read_text())
    src, q = report["source"], report["quantized"]
    assert src["tokens"] == q["tokens"] > 150 and src["texts"] == q["texts"] == 20
    assert abs(report["comparison"]["perplexity_change_pct"]) < {"int8": 0.5, "int4": 3.0, "int4-all": 3.0}[run]


def test_report_numbers_are_consistent(quantized):
    _, out = quantized
    report = json.loads((out / "quantize_report.json").read_text())
    src, q, c = report["source"], report["quantized"], report["comparison"]
    weight_files = sum(p.stat().st_size for p in out.iterdir() if p.suffix == ".safetensors")
    assert q["weight_file_bytes"] == weight_files
    assert c["size_ratio"] == pytest.approx(src["weight_file_bytes"] / q["weight_file_bytes"])
    assert c["parameter_bytes_ratio"] == pytest.approx(src["parameter_bytes"] / q["parameter_bytes"])
    assert c["perplexity_change_pct"] == pytest.approx(100 * (q["perplexity"] / src["perplexity"] - 1))
    assert q["weight_file_bytes"] == pytest.approx(q["parameter_bytes"], rel=0.02)  # the file is the tensors
    md = (out / "quantize_report.md").read_text()
    assert f"{c['size_ratio']:.2f}× smaller" in md and f"{c['perplexity_change_pct']:+.2f}%" in md


def test_gptq_refused_without_cuda_before_loading(llama128, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("medtune.quantize.convert.resolve_model", no_loading)
    monkeypatch.setattr("medtune.quantize.convert.load_texts", no_loading)
    with pytest.raises(QuantizeError, match="--method gptq .* needs a CUDA GPU .* --method int4"):
        quantize(llama128, "gptq", tmp_path / "out", calibration=str(tmp_path / "calib.jsonl"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method, bits", [("bnb4", 4), ("bnb8", 8)])
def test_bitsandbytes_quantizes_on_the_cpu(method, bits, llama128, tmp_path):
    """bitsandbytes' CPU kernels: the folder saves, loads back here and keeps the model's perplexity."""
    from medtune.models import load_quantized

    out = quantize(llama128, method, tmp_path / method, eval_texts=ANSWERS[:12])
    report = json.loads((out / "quantize_report.json").read_text())
    c = report["comparison"]
    assert report["quantization"]["format"] == "transformers" and report["bits"] == bits
    assert report["quantization"]["dtype"] == "float32"  # CPU compute
    assert c["size_ratio"] > 1.5 and abs(c["perplexity_change_pct"]) < 10
    model, _ = load_quantized(out)
    import bitsandbytes as bnb

    linear = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert any(isinstance(m, linear) for m in model.modules())


def test_unknown_method_lists_the_methods(llama128, tmp_path):
    with pytest.raises(QuantizeError) as err:
        quantize(llama128, "int3", tmp_path / "out")
    assert "unknown quantization method 'int3'" in str(err.value)
    assert all(f"  {m}" in str(err.value) for m in ("int8", "int4", "gptq", "bnb4", "bnb8", "gguf"))


def test_existing_output_folder_is_refused(llama128, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(QuantizeError, match="already exists and is not empty"):
        quantize(llama128, "int8", tmp_path / "out")


def test_adapter_run_is_merged_then_quantized(llama128, tmp_path):
    """A LoRA run is folded into its fp32 base first; the report's source is that merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = tmp_path / "run" / "adapter"
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(llama128),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(llama128).save_pretrained(adapter)
    card = {"template": "Q: {question}", "system": None, "base_model": str(llama128), "kind": "causal", "adapter": True}
    (adapter / MODEL_CARD).write_text(json.dumps(card))

    out = quantize(tmp_path / "run", "int8", tmp_path / "q", eval_texts=ANSWERS[:8])
    report = json.loads((out / "quantize_report.json").read_text())
    with_adapter, tokenizer = load_adapter_model(adapter, card)
    expected = text_perplexity(with_adapter, tokenizer, ANSWERS[:8])["perplexity"]
    assert report["source"]["perplexity"] == pytest.approx(expected, rel=1e-4)  # the adapter was applied
    q_card = json.loads((out / MODEL_CARD).read_text())
    assert q_card["template"] == "Q: {question}" and q_card["adapter"] is False
    assert q_card["merged_from"] == str(adapter.resolve()) == q_card["quantization"]["source_model"]
    assert not any(p.name.startswith(".merge-") for p in tmp_path.iterdir())  # the merged copy is scratch


def test_texts_are_drawn_from_a_data_file(qa_jsonl):
    texts = load_texts(qa_jsonl, 5)
    assert len(texts) == 5 and set(texts) <= set(ANSWERS)
    assert texts == load_texts(qa_jsonl, 5)  # seeded


# GGUF: llama.cpp's converter from scripts/get_llama_cpp.sh, which scripts/setup.sh runs (or LLAMA_CPP_DIR).
LLAMA_CPP = Path(os.environ.get("LLAMA_CPP_DIR") or cache_dir() / "llama.cpp")
needs_llama_cpp = pytest.mark.skipif(
    "LLAMA_CPP_DIR" not in os.environ and not (LLAMA_CPP / "convert_hf_to_gguf.py").is_file(),
    reason="llama.cpp's converter not found: run scripts/get_llama_cpp.sh (scripts/setup.sh does)")


@pytest.fixture(scope="module")
def spm_llama(tmp_path_factory) -> Path:
    """A tiny random Llama with a SentencePiece tokenizer.model, as Llama 2 ships: the converter takes its
    vocab as is (a BPE tokenizer.json must be one it recognises) and, with 300 tokens, the GGUF reads back fast."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    out = tmp_path_factory.mktemp("models") / "spm-llama"
    out.mkdir()
    spm = io.BytesIO()
    texts = [t for r in qa_rows() for t in (r["question"], r["answer"])]
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts * 5), model_writer=spm, model_type="bpe", vocab_size=300,
                                             hard_vocab_limit=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (out / "tokenizer.model").write_bytes(spm.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,  # rows of q8_0's 32-wide blocks
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    card = {"template": "Question: {question}\nAnswer:", "system": "You answer medical questions.", "adapter": False}
    (out / MODEL_CARD).write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def ggufs(spm_llama, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {t: quantize(spm_llama, "gguf", root / t, gguf_type=t, eval_texts=ANSWERS[:20]) for t in ("f16", "q8_0")}


@needs_llama_cpp
def test_gguf_f16_reads_back_as_the_source(ggufs, spm_llama):
    from transformers import AutoModelForCausalLM

    out = ggufs["f16"]
    assert {"model-F16.gguf", "Modelfile", MODEL_CARD, "tokenizer.json", "quantize_report.json", "quantize_report.md"} <= {
        p.name for p in out.iterdir()}
    assert (out / "Modelfile").read_text() == 'FROM ./model-F16.gguf\nSYSTEM """You answer medical questions."""\n'
    q = json.loads((out / MODEL_CARD).read_text())["quantization"]
    assert q | {"library_version": None} == {"method": "gguf", "bits": 16, "library": "llama.cpp", "library_version": None,
                                            "format": "gguf", "source_model": str(spm_llama.resolve()),
                                            "file": "model-F16.gguf", "outtype": "f16", "converter": "convert_hf_to_gguf.py"}
    assert q["library_version"].startswith("llama.cpp ")
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    source = AutoModelForCausalLM.from_pretrained(spm_llama)
    reloaded, _ = load_quantized(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, source(ids).logits, atol=2e-3, rtol=0)  # weights rounded to f16
    # Served from the folder, the GGUF answers as the source does: same prompt tokens, same logits, same greedy words.
    questions = ["What are the symptoms of asthma ?", "How to treat migraine ?"]
    served, original = Predictor.from_pretrained(out), Predictor.from_pretrained(spm_llama)
    prompts = served.prompts(questions)
    assert prompts == original.prompts(questions) == [f"Question: {q}\nAnswer:" for q in questions]  # the card's template
    enc = served.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc.input_ids.tolist() == original.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).input_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(served.model(**enc).logits, source(**enc).logits, atol=2e-3, rtol=0)
    # At each of these 6 greedy steps the source's top two logits are at least 0.007 apart; f16 moves logits by 3e-4.
    answers = served.predict(questions, max_new_tokens=6, num_beams=1)
    assert answers == original.predict(questions, max_new_tokens=6, num_beams=1) and all(answers)


@needs_llama_cpp
def test_gguf_q8_0_halves_the_tensors_and_keeps_perplexity(ggufs):
    f16, q8 = (json.loads((ggufs[t] / "quantize_report.json").read_text()) for t in ("f16", "q8_0"))
    assert q8["quantized"]["weight_file_bytes"] == (ggufs["q8_0"] / "model-Q8_0.gguf").stat().st_size
    # q8_0: 32 int8 weights and one f16 scale per block, 8.5 bits; the norms stay f32
    assert 0.53 <= q8["quantized"]["parameter_bytes"] / f16["quantized"]["parameter_bytes"] < 0.56
    assert f16["source"]["texts"] == q8["quantized"]["texts"] == 20
    assert abs(f16["comparison"]["perplexity_change_pct"]) < 0.05
    assert 0 < abs(q8["comparison"]["perplexity_change_pct"]) < 0.5
    assert q8["bits"] == 8 and "GGUF q8_0 written by llama.cpp's convert_hf_to_gguf.py" in q8["note"]
    md = (ggufs["q8_0"] / "quantize_report.md").read_text()
    assert "gguf (8-bit, llama.cpp)" in md and f"{q8['comparison']['perplexity_change_pct']:+.2f}%" in md


@needs_llama_cpp
def test_gguf_k_quant_runs_llama_quantize_on_an_f16_file(spm_llama, tmp_path):
    """The k-quant path, with a stand-in llama-quantize that checks its arguments and copies the f16 file."""
    llama_cpp = tmp_path / "llama.cpp"
    (llama_cpp / "build" / "bin").mkdir(parents=True)
    for name in ("convert_hf_to_gguf.py", "gguf-py", "conversion"):
        (llama_cpp / name).symlink_to(LLAMA_CPP.resolve() / name)
    tool = llama_cpp / "build" / "bin" / "llama-quantize"
    tool.write_text('#!/bin/sh\n[ "$3" = Q4_K_M ] && case "$1" in *F16*) cp "$1" "$2";; *) exit 1;; esac\n')
    tool.chmod(0o755)
    out = quantize(spm_llama, "gguf", tmp_path / "q", gguf_type="q4_k_m", llama_cpp=llama_cpp)
    assert {p.name for p in out.glob("*.gguf")} == {"model-Q4_K_M.gguf"}  # the f16 step is gone
    q = json.loads((out / MODEL_CARD).read_text())["quantization"]
    assert (q["bits"], q["converter"], q["library_version"]) == (4, "convert_hf_to_gguf.py + llama-quantize", "unknown")


def test_gguf_without_the_converter_says_how_to_get_it_before_loading(llama128, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr("medtune.quantize.convert.resolve_model", no_loading)
    monkeypatch.setattr("medtune.quantize.convert.load_texts", no_loading)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(QuantizeError, match=r"nowhere does not hold it[\s\S]*scripts/get_llama_cpp\.sh[\s\S]*git clone .*llama\.cpp"):
        quantize(llama128, "gguf", tmp_path / "out", eval_texts=str(tmp_path / "eval.jsonl"))
    assert not (tmp_path / "out").exists()


def test_gguf_k_quant_without_llama_quantize_is_refused(llama128, tmp_path, monkeypatch):
    (tmp_path / "llama.cpp").mkdir()
    (tmp_path / "llama.cpp" / "convert_hf_to_gguf.py").touch()
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize on it
    with pytest.raises(QuantizeError, match="--gguf-type q4_k_m needs llama.cpp's llama-quantize.*choose --gguf-type f16, bf16, q8_0"):
        quantize(llama128, "gguf", tmp_path / "out", gguf_type="Q4_K_M", llama_cpp=tmp_path / "llama.cpp")
    with pytest.raises(QuantizeError, match="--gguf-type q3: choose f16, bf16, q8_0 .* q4_k_m"):
        quantize(llama128, "gguf", tmp_path / "out", gguf_type="q3", llama_cpp=tmp_path / "llama.cpp")


def test_gguf_converter_failure_shows_its_error(spm_llama, tmp_path):
    (tmp_path / "llama.cpp").mkdir()
    (tmp_path / "llama.cpp" / "convert_hf_to_gguf.py").write_text('import sys\nsys.exit("BPE pre-tokenizer was not recognized")\n')
    with pytest.raises(QuantizeError, match="convert_hf_to_gguf.py failed \\(exit 1\\):\nBPE pre-tokenizer was not recognized"):
        quantize(spm_llama, "gguf", tmp_path / "out", llama_cpp=tmp_path / "llama.cpp")
    assert not (tmp_path / "out").exists()


def test_a_quantized_folder_is_not_quantized_again(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / MODEL_CARD).write_text(json.dumps({"quantization": {"method": "int4", "source_model": "base-model"}}))
    with pytest.raises(QuantizeError, match="already quantized \\(--method int4\\); quantize its full-precision source, base-model, instead"):
        quantize(tmp_path / "q", "int8", tmp_path / "out")
