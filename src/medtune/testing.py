"""Tiny random models for tests and speed benchmarks (no T5 weights exist offline).

The tokenizer is a real BPE trained on the given texts (with the `tokenizers` library, or
SentencePiece for Marian and NLLB, whose tokenizer classes read SentencePiece models), so
the model reads medical text with a realistic number of tokens per word.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    M2M100Config,
    M2M100ForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MarianTokenizer,
    NllbTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES


# Templated QA rows in medtune's record fields: the data of the test suite and of benchmarks/gpu_check.py.
QTYPES = {
    "symptoms": ("What are the symptoms of {d} ?", "The symptoms of {d} include pain , fatigue and fever ."),
    "treatment": ("How to treat {d} ?", "Treatment of {d} includes rest , medicines and follow-up visits ."),
    "causes": ("What causes {d} ?", "{d} is caused by genetic and environmental factors ."),
    "information": ("What is (are) {d} ?", "{d} is a chronic condition that affects many people ."),
}


def qa_rows(diseases: Iterable[str]) -> list[dict]:
    """One question and answer per disease and question type, with its focus, type and a URL."""
    return [{"id": f"{d}-{q}", "question": a.format(d=d), "answer": b.format(d=d), "focus": d, "qtype": q,
             "url": f"https://example.org/{d}"} for d in diseases for q, (a, b) in QTYPES.items()]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, *, seq2seq: bool = True) -> PreTrainedTokenizerFast:
    """BPE over `texts`.

    seq2seq: T5-like (SentencePiece-style word pieces, pad=0, eos=1, unk=2, </s> appended to
    every sequence). Otherwise a GPT-style byte-level BPE that round-trips any text exactly,
    with only <|endoftext|>, no pad token and no chat template, as many base models ship.
    """
    if seq2seq:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"]))
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size + len(alphabet), special_tokens=["<|endoftext|>"], initial_alphabet=alphabet))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def make_t5(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 1000,
    d_model: int = 32,
    d_ff: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised T5 and its tokenizer to `out_dir`; defaults are test-sized."""
    import torch

    tokenizer = train_tokenizer(texts, vocab_size)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=d_ff,
        d_kv=d_model // num_heads,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    out = Path(out_dir)
    T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_llama(out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 1000, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a randomly initialised Llama-architecture causal LM and its base-model tokenizer."""
    import torch

    tokenizer = train_tokenizer(texts, vocab_size, seq2seq=False)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,  # the tiny tokenizer's tokens are about a byte: room for a grounded prompt
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    out = Path(out_dir)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 1000) -> bytes:
    """A serialized SentencePiece BPE model over `texts` with opus-mt's ids: </s>=0, <unk>=1, no
    <s> or <pad>. `vocab_size` is an upper bound (a small corpus gives fewer pieces)."""
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False,
        eos_id=0, unk_id=1, bos_id=-1, pad_id=-1, minloglevel=2,
    )
    return buf.getvalue()


def _bart_sizes(d_model: int, layers: int) -> dict:
    """Marian and M2M100 (NLLB) share BART's config fields."""
    return {"d_model": d_model, "encoder_layers": layers, "decoder_layers": layers, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 2 * d_model, "decoder_ffn_dim": 2 * d_model,
            "max_position_embeddings": 512}


def make_marian(
    out_dir: str | Path, texts: Iterable[str], *, targets: Iterable[str] = (), vocab_size: int = 1000,
    d_model: int = 16, layers: int = 1, seed: int = 0,
) -> Path:
    """Write a randomly initialised MarianMTModel and its MarianTokenizer (source.spm, target.spm,
    vocab.json) to `out_dir`. `targets` makes a multi-target model like opus-mt-en-ROMANCE: each
    language is a `>>xx<<` token in the vocab that inputs start with; none is a one-pair model."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spm = train_sentencepiece(texts, vocab_size)
    for name in ("source.spm", "target.spm"):
        (out / name).write_bytes(spm)
    processor = sentencepiece.SentencePieceProcessor(model_proto=spm)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {p: i for i, p in enumerate([*pieces, *(f">>{t}<<" for t in targets), "<pad>"])}  # opus-mt: pad last
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    tokenizer = MarianTokenizer.from_pretrained(out)
    config = MarianConfig(vocab_size=len(tokenizer), **_bart_sizes(d_model, layers), pad_token_id=tokenizer.pad_token_id,
                          decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_nllb(
    out_dir: str | Path, texts: Iterable[str], *, vocab_size: int = 1000, d_model: int = 16, layers: int = 1, seed: int = 0,
) -> Path:
    """Write a randomly initialised NLLB-200 (an M2M100ForConditionalGeneration) and its NllbTokenizer,
    with all 202 language codes (eng_Latn, spa_Latn, ...) as special tokens, to `out_dir`."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sentencepiece.bpe.model").write_bytes(train_sentencepiece(texts, vocab_size))
    # Converting a bare SentencePiece model drops the default language codes; give them back.
    tokenizer = NllbTokenizer.from_pretrained(out, extra_special_tokens=FAIRSEQ_LANGUAGE_CODES)
    config = M2M100Config(vocab_size=len(tokenizer), **_bart_sizes(d_model, layers), pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          decoder_start_token_id=tokenizer.eos_token_id, tokenizer_class="NllbTokenizer")
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m medtune.testing DATA OUT`: a small random T5 whose tokenizer is trained on DATA's QA text."""
    import argparse

    from medtune.data import infer_loader, load_source
    from medtune.recipe import SourceConfig

    ap = argparse.ArgumentParser(prog="python -m medtune.testing", description=main.__doc__)
    ap.add_argument("data", help="any source medtune can load, e.g. ../shared/data/medquad")
    ap.add_argument("out", help="model directory to write")
    ap.add_argument("--vocab-size", type=int, default=4000)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args(argv)
    records, _ = load_source(SourceConfig(loader=infer_loader(args.data), path=args.data))
    texts = [t for r in records if r.answered for t in (r.question, r.answer)]
    out = make_t5(args.out, texts, vocab_size=args.vocab_size, d_model=args.d_model, d_ff=4 * args.d_model,
                  num_layers=args.layers, num_heads=4)
    print(out)


if __name__ == "__main__":
    main()
