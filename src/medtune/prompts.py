"""How a question becomes model input; training and generation share these so they never drift."""

from __future__ import annotations


def render_prompt(template: str, question: str) -> str:
    """Seq2seq input text, e.g. "Please answer this question: {question}"."""
    return template.format(question=question)


def chat_messages(question: str, template: str, system: str | None = None) -> list[dict]:
    """Causal-LM chat prompt: optional system message, then the user's templated question."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": render_prompt(template, question)}]
