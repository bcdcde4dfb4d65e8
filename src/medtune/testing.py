"""Tiny random models for tests and speed benchmarks (no T5 weights exist offline).

The tokenizer is a real BPE trained on the given texts with the `tokenizers` library, so
the model reads medical text with a realistic number of tokens per word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration


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
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    out = Path(out_dir)
    LlamaForCausalLM(config).save_pretrained(out)
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
