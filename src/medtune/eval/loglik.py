"""Log-likelihood of answer options given a prompt: the engine behind multiple-choice tasks.

Tokenization follows lm-evaluation-harness, so scores are comparable with it: trailing
spaces of the prompt move to the option, and an option's tokens are the tail of
tokenize(prompt + option) after tokenize(prompt).

Speed comes from three things, none of which changes a score:
- the prompt is run once per question, and every option continues from its cached keys and
  values (a 5-option question costs one prompt, not five);
- several questions and all their options go through each forward pass, grouped by prompt
  length so little is padding;
- vocabulary logits are computed only where an option token is predicted.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch

from medtune.logs import bar

# Logits of one options pass are (rows x option tokens x vocabulary) floats; keep them near 256 MiB.
_LOGIT_BUDGET = 2**26


@dataclass(frozen=True)
class Request:
    context: str
    options: tuple[str, ...]  # continuations, each with its leading delimiter (" Paris")


@dataclass
class _Encoded:
    index: int
    context: list[int]
    options: list[list[int]]


class OptionScorer:
    """`score(requests)` -> for each request, the summed log-probability of each option."""

    def __init__(self, model, tokenizer, *, batch_tokens: int = 4096):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.device = next(model.parameters()).device
        self.max_length = _max_length(model, tokenizer)
        # transformers 5 renamed the forward's `past_key_values` to `cache` (the old name warns); older 5.x have the old.
        forward = (model.get_base_model() if hasattr(model, "get_base_model") else model).forward  # a PEFT model passes it on
        self.cache_kwarg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        # Models whose tokenizer starts every text with BOS expect it; lm-eval's HF backend adds none otherwise.
        probe = tokenizer("a").input_ids
        self.bos = [probe[0]] if tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id] else []

    def encode(self, request: Request, index: int = 0) -> _Encoded:
        context, options = request.context, list(request.options)
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            options = [context[-n_spaces:] + o for o in options]
            context = context[:-n_spaces]
        ctx = self._tokens(context)
        conts = [self._tokens(context + o)[len(ctx) :] for o in options] if not self.is_seq2seq else [self._tokens(o) for o in options]
        for o, ids in zip(request.options, conts):
            if not ids:
                raise ValueError(f"option {o!r} adds no token to the prompt; options must be non-empty text")
        longest = max(len(c) for c in conts)
        if longest >= self.max_length:
            raise ValueError(f"an option is {longest} tokens, longer than the model's {self.max_length}-token window")
        if not self.is_seq2seq:
            ctx = self.bos + ctx
        keep = self.max_length - (0 if self.is_seq2seq else longest)
        return _Encoded(index, ctx[-keep:], conts)  # a prompt too long for the window loses its start, as in lm-eval

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @torch.inference_mode()
    def score(self, requests: list[Request], *, progress: bool = True, desc: str = "scoring") -> list[list[float]]:
        encoded = [self.encode(r, i) for i, r in enumerate(requests)]
        encoded.sort(key=lambda e: -len(e.context))  # similar prompt lengths share a batch
        scores: list[list[float]] = [[] for _ in requests]
        progress_bar = bar(total=len(encoded), desc=desc, disable=not progress)
        for batch in self._batches(encoded):
            run = self._score_seq2seq if self.is_seq2seq else self._score_causal
            for e, s in zip(batch, run(batch)):
                scores[e.index] = s
            progress_bar.update(len(batch))
        progress_bar.close()
        return scores

    def _batches(self, encoded: list[_Encoded]):
        vocab = self.model.config.get_text_config().vocab_size
        batch: list[_Encoded] = []
        for e in encoded:
            candidate = batch + [e]
            rows = sum(len(c.options) for c in candidate)
            widest = max(len(o) for c in candidate for o in c.options)
            prompt_tokens = len(candidate) * len(candidate[0].context)  # sorted: the first prompt is the longest
            if batch and (prompt_tokens + rows * widest > self.batch_tokens or rows * widest * vocab > _LOGIT_BUDGET):
                yield batch
                candidate = [e]
            batch = candidate
        if batch:
            yield batch

    def _score_causal(self, batch: list[_Encoded]) -> list[list[float]]:
        dev = self.device
        width = max(len(e.context) for e in batch)
        # Prompts left-padded, so each ends at the last column and options continue from there.
        ctx = torch.zeros(len(batch), width, dtype=torch.long)
        ctx_mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, e in enumerate(batch):
            ctx[i, width - len(e.context) :] = torch.tensor(e.context)
            ctx_mask[i, width - len(e.context) :] = 1
        ctx, ctx_mask = ctx.to(dev), ctx_mask.to(dev)
        positions = (ctx_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ctx, attention_mask=ctx_mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each option's first token

        owner = [i for i, e in enumerate(batch) for _ in e.options]
        options = [o for e in batch for o in e.options]
        totals = [0.0] * len(options)
        chunks = _length_chunks(options)
        for rows in chunks:
            # Each chunk of similar-length options continues from its own copy of the prompts' cache.
            cache = copy.deepcopy(out.past_key_values) if len(chunks) > 1 else out.past_key_values
            scores = self._continue(cache, first, ctx_mask, [owner[j] for j in rows], [options[j] for j in rows])
            for j, v in zip(rows, scores):
                totals[j] = v
        return _regroup(totals, batch)

    def _continue(self, cache, first: torch.Tensor, ctx_mask: torch.Tensor, owner: list[int], options: list[list[int]]) -> list[float]:
        dev = self.device
        owner_t = torch.tensor(owner, device=dev)
        cache.batch_select_indices(owner_t)  # one copy of its prompt's keys and values per option
        span = max(len(o) for o in options)
        opt = torch.zeros(len(options), span, dtype=torch.long)
        opt_mask = torch.zeros(len(options), span, dtype=torch.long)
        for j, o in enumerate(options):
            opt[j, : len(o)] = torch.tensor(o)
            opt_mask[j, : len(o)] = 1
        opt, opt_mask = opt.to(dev), opt_mask.to(dev)
        lengths = ctx_mask.sum(-1)[owner_t]
        logits = self.model(
            input_ids=opt,
            attention_mask=torch.cat([ctx_mask[owner_t], opt_mask], dim=1),
            position_ids=lengths[:, None] + torch.arange(span, device=dev),
            **{self.cache_kwarg: cache},
            use_cache=True,
            logits_to_keep=torch.arange(max(span - 1, 1), device=dev),  # the last position predicts nothing we score
        ).logits.float()
        # Token t+1 of an option is predicted at its position t; token 0 from the prompt's last position.
        totals = first[owner_t].gather(-1, opt[:, :1]).squeeze(-1)
        if span > 1:
            rest = logits.log_softmax(-1).gather(-1, opt[:, 1:, None]).squeeze(-1) * opt_mask[:, 1:]
            totals = totals + rest.sum(-1)
        return totals.tolist()

    def _score_seq2seq(self, batch: list[_Encoded]) -> list[list[float]]:
        dev = self.device
        rows = [(e.context, o) for e in batch for o in e.options]
        width, span = max(len(c) for c, _ in rows), max(len(o) for _, o in rows)
        enc = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        enc_mask = torch.zeros_like(enc)
        labels = torch.full((len(rows), span), -100, dtype=torch.long)
        for j, (c, o) in enumerate(rows):
            enc[j, : len(c)], enc_mask[j, : len(c)], labels[j, : len(o)] = torch.tensor(c), 1, torch.tensor(o)
        labels = labels.to(dev)
        logits = self.model(input_ids=enc.to(dev), attention_mask=enc_mask.to(dev), labels=labels).logits.float()
        mask = labels != -100
        picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        return _regroup((picked * mask).sum(-1).tolist(), batch)


def _length_chunks(options: list[list[int]], waste: float = 0.25) -> list[list[int]]:
    """Option rows grouped by length (longest first) so padding stays under `waste` of each chunk."""
    order = sorted(range(len(options)), key=lambda j: -len(options[j]))
    chunks: list[list[int]] = []
    for j in order:
        if chunks:
            rows = chunks[-1] + [j]
            if len(rows) * len(options[rows[0]]) <= (1 + waste) * sum(len(options[r]) for r in rows):
                chunks[-1] = rows
                continue
        chunks.append([j])
    return chunks


def _regroup(flat: list[float], batch: list[_Encoded]) -> list[list[float]]:
    out, k = [], 0
    for e in batch:
        out.append(flat[k : k + len(e.options)])
        k += len(e.options)
    return out


def _max_length(model, tokenizer) -> int:
    config = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    limit = tokenizer.model_max_length
    return limit if limit < 1_000_000 else 2048  # tokenizers without a limit report a huge sentinel
