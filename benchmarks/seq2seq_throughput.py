"""Seq2seq training throughput: the seed-000 way against medtune's way, alternating in one run.

(a) seed 000: every example padded to the maximum source/target length, random batches.
(b) medtune: unpadded examples, per-batch dynamic padding, batches grouped by length.

Both train the same t5-small-shaped model (random init, same seed) for exactly one epoch over
the same MedQuAD sample (steps x batch size pairs), so both see the same examples and the same
real tokens; only the batching differs. Throughput counts real tokens (source
plus target, padding excluded) per second; "final loss" is each trained model's loss on the
same held-out examples. Rounds alternate a, b, a, b… so machine noise hits both alike.

    python benchmarks/seq2seq_throughput.py [--steps 12] [--rounds 2] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import datasets
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments, T5ForConditionalGeneration, default_data_collator

from medtune.data import prepare_data
from medtune.models import load_tokenizer, resolve_model
from medtune.recipe import recipe_from_dict
from medtune.testing import make_t5
from medtune.prompts import render_prompt
from medtune.train.common import fit, training_kwargs
from medtune.train.seq2seq import Seq2SeqTrainerWithTokens, build_seq2seq_trainer, tokenize_pairs

T5_SMALL = dict(vocab_size=32000, d_model=512, d_ff=2048, num_layers=6, num_heads=8)


def seed000_tokenize(ds, tokenizer, template, max_source, max_target):
    """Seed 000's preprocessing: pad everything to the maximum length, pad labels masked."""

    def encode(batch):
        enc = tokenizer([render_prompt(template, q) for q in batch["question"]], max_length=max_source, truncation=True, padding="max_length")
        labels = tokenizer(text_target=batch["answer"], max_length=max_target, truncation=True, padding="max_length")["input_ids"]
        enc["labels"] = [[t if t != tokenizer.pad_token_id else -100 for t in seq] for seq in labels]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds.column_names)


def train_seed000(recipe, model, tokenizer, splits, out: Path) -> tuple[float, int]:
    t = recipe.train
    train_ds = seed000_tokenize(splits["train"], tokenizer, recipe.prompt.template, t.max_source_length, t.max_target_length)
    args = Seq2SeqTrainingArguments(**training_kwargs(recipe, out, "fp32", [], has_eval=False) | {"train_sampling_strategy": "random"})
    trainer = Seq2SeqTrainerWithTokens(model=model, args=args, train_dataset=train_ds, data_collator=default_data_collator, processing_class=tokenizer)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start, trainer.train_tokens


@torch.inference_mode()
def heldout_loss(model, tokenizer, recipe, ds) -> float:
    t = recipe.train
    enc = tokenize_pairs(ds, tokenizer, recipe.prompt.template, t.max_source_length, t.max_target_length).remove_columns("length")
    collate = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    model.eval()
    total, n = 0.0, 0
    for i in range(0, len(enc), 8):
        batch = collate([enc[j] for j in range(i, min(i + 8, len(enc)))])
        tokens = int((batch["labels"] != -100).sum())
        total += model(**batch).loss.item() * tokens
        n += tokens
    return total / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    work = Path(tempfile.mkdtemp(prefix="medtune-bench-"))
    examples = args.steps * args.batch_size  # one epoch: both ways see every example once
    recipe = recipe_from_dict({
        "name": "bench",
        "model": str(work / "t5-small-random"),
        "data": {"sources": [{"loader": "medquad", "path": f"{args.data}/medquad"}],
                 "max_examples": examples, "max_eval_examples": 64},
        "prompt": {"template": "Please answer this question: {question}"},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "learning_rate": 1e-3, "logging_steps": 1,
                  "save_steps": 10**6, "max_source_length": 128, "max_target_length": 512, "precision": "fp32"},
        "tracking": {"backend": "none"},
    })
    splits = prepare_data(recipe.data).splits
    corpus = [t for row in splits["train"] for t in (row["question"], row["answer"])]
    make_t5(work / "t5-small-random", corpus * 2, **T5_SMALL)
    tokenizer = load_tokenizer(resolve_model(recipe.model.name_or_path))
    print(f"t5-small-shaped random model, {len(splits['train'])} MedQuAD training pairs, "
          f"{args.steps} steps x batch {args.batch_size}, max lengths 128/512, {torch.get_num_threads()} threads")

    results: dict[str, list[tuple[float, float]]] = {"seed000": [], "medtune": []}
    for r in range(args.rounds):
        for way in ("seed000", "medtune"):
            torch.manual_seed(0)
            model = T5ForConditionalGeneration.from_pretrained(recipe.model.name_or_path)
            if way == "seed000":
                seconds, tokens = train_seed000(recipe, model, tokenizer, splits, work / f"{way}-{r}")
            else:
                # Train split only: no in-loop evaluation in either way's timing.
                trainer = build_seq2seq_trainer(recipe, model, tokenizer, datasets.DatasetDict(train=splits["train"]), work / f"{way}-{r}")
                res = fit(trainer)
                seconds, tokens = res.runtime_s, res.train_tokens
            loss = heldout_loss(model, tokenizer, recipe, splits["validation"])
            results[way].append((tokens / seconds, loss))
            print(f"round {r + 1} {way:8s}: {tokens / seconds:8.1f} tokens/s  ({tokens} tokens in {seconds:.1f} s), held-out loss {loss:.4f}")

    tps = {w: statistics.median(x[0] for x in v) for w, v in results.items()}
    loss = {w: statistics.mean(x[1] for x in v) for w, v in results.items()}
    delta = abs(loss["medtune"] - loss["seed000"]) / loss["seed000"]
    print(f"\nseed000: {tps['seed000']:.1f} tokens/s, held-out loss {loss['seed000']:.4f}")
    print(f"medtune: {tps['medtune']:.1f} tokens/s, held-out loss {loss['medtune']:.4f}")
    print(f"ratio medtune/seed000: {tps['medtune'] / tps['seed000']:.2f}x  (target >= 2x); final-loss difference {delta:.1%} (target <= 5%)")


if __name__ == "__main__":
    main()
