"""Held-out answer perplexity, token-weighted, over exactly the tokens the training loss sees.

It reads the trainer's own tokenized evaluation set and collator, so the masking is the
training masking (prompt tokens and padding are -100) for seq2seq and causal models alike.
"""

from __future__ import annotations

import math

import datasets
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from medtune.logs import bar

_MODEL_INPUTS = ["input_ids", "attention_mask", "labels"]
# A packing run's collator puts a batch's answers in one padding-free row; their position ids, restarting at
# each answer, keep every answer attending to itself alone (without them the later answers read the earlier).
_COLLATED_INPUTS = [*_MODEL_INPUTS, "position_ids"]


@torch.inference_mode()
def answer_perplexity(model, ds: datasets.Dataset, collator, *, batch_size: int = 4, desc: str = "perplexity") -> dict:
    """{"perplexity", "nll" (mean per answer token), "tokens"} of `model` on tokenized `ds`."""
    ds = ds.select_columns([c for c in _MODEL_INPUTS if c in ds.column_names])
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in bar(DataLoader(ds, batch_size=batch_size, collate_fn=collator), desc=desc):
        batch = {k: v.to(model.device) for k, v in batch.items() if k in _COLLATED_INPUTS}
        labels = batch.pop("labels")
        if model.config.is_encoder_decoder:
            logits = model(**batch, labels=labels).logits  # labels build the decoder inputs
        else:
            logits = model(**batch).logits[:, :-1]
            labels = labels[:, 1:]  # token t is predicted from the tokens before it
        total += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum").item()
        tokens += int((labels != -100).sum())
    model.train(was_training)
    nll = total / tokens if tokens else float("nan")
    return {"perplexity": math.exp(nll) if tokens else float("nan"), "nll": nll, "tokens": tokens}
