"""A model's embeddings and special-token ids kept in step with its tokenizer after a run added tokens."""

from __future__ import annotations

from medtune.logs import transformers_quiet


def grow_embeddings(model, tokenizer) -> None:
    """Rows for the tokenizer's added tokens (chat markers, pad), started at the mean of the others.

    transformers warns each time that it initializes them so; that mean is medtune's choice, so the
    warning is held back for this call only.
    """
    with transformers_quiet():
        model.resize_token_embeddings(len(tokenizer))


def align_token_ids(model, tokenizer) -> None:
    """The model's config and generation config take the tokenizer's eos, bos and pad ids.

    The trainers do this themselves with a warning when they differ; generation keeps any other
    eos it had (a base model's own end marker still stops it).
    """
    generation = getattr(model, "generation_config", None)
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        token = getattr(tokenizer, name)
        if token is None:
            continue
        setattr(model.config, name, token)
        if generation is None:
            continue
        old = getattr(generation, name)
        others = [t for t in (old if isinstance(old, list) else [old]) if t is not None and t != token]
        setattr(generation, name, [token, *others] if others and name == "eos_token_id" else token)
