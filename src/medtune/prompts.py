"""How a question becomes model input; training and generation share these so they never drift."""

from __future__ import annotations

import re
from functools import lru_cache


def render_prompt(template: str, question: str) -> str:
    """Seq2seq input text, e.g. "Please answer this question: {question}"."""
    return template.format(question=question)


def chat_messages(question: str, template: str, system: str | None = None) -> list[dict]:
    """Causal-LM chat prompt: optional system message, then the user's templated question."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": render_prompt(template, question)}]


def as_the_run_reads(messages: list[dict], system: str | None, tokenizer=None) -> list[dict]:
    """`messages` with the run's own system prompt first (before any system text of the caller, in the
    same message) and, when the tokenizer is known, no control tokens in their text. Every engine
    sends a conversation through this."""
    if tokenizer is not None:
        messages = [{**m, "content": strip_control_tokens(tokenizer, m["content"])} for m in messages]
    if not system:
        return messages
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{system}\n\n{messages[0]['content']}"}] + messages[1:]
    return [{"role": "system", "content": system}] + messages


def strip_control_tokens(tokenizer, text: str) -> str:
    """`text` without `tokenizer`'s special-token strings, removed until none is left (removing one
    must not join two halves into another)."""
    pattern = _control_pattern(tokenizer)
    while pattern is not None and (cleaned := pattern.sub("", text)) != text:
        text = cleaned
    return text


@lru_cache(maxsize=8)
def _control_pattern(tokenizer) -> re.Pattern | None:
    """One regex over every special or added control token of `tokenizer` (longest first)."""
    tokens = set(tokenizer.all_special_tokens)
    tokens |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    tokens = sorted((t for t in tokens if t), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None
