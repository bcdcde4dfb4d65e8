"""Batched generation from a finished run (or any model) with the run's own prompt format.

Finding and loading the model is medtune.models' job; this module only generates."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from medtune.logs import bar
from medtune.models import load_for_inference
from medtune.prompts import as_the_run_reads, chat_messages, render_prompt
from medtune.recipe import GenerationConfig


class Predictor:
    def __init__(self, model, tokenizer, *, template: str = "{question}", system: str | None = None, generation: GenerationConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.system = system
        self.generation = generation or GenerationConfig()
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        # A fast tokenizer keeps its padding and truncation settings in shared state that every call
        # resets: two threads encoding at once (a server measuring one prompt while it generates a
        # batch) can pad one batch with the other's settings. Encoding takes this lock.
        self.tokenizer_lock = threading.Lock()
        if not self.is_seq2seq:
            tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
            if tokenizer.pad_token is None:  # padding is masked out at inference, any token will do
                tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, ref: str | Path) -> "Predictor":
        """A run directory (its final model or adapter), any medtune model folder, a model directory, or a hub id."""
        model, tokenizer, card = load_for_inference(ref)
        return cls(
            model,
            tokenizer,
            template=card.get("template", "{question}"),
            system=card.get("system"),
            generation=GenerationConfig(**card.get("generation", {})),
        )

    def prompts(self, questions: list[str]) -> list[str]:
        if self.is_seq2seq or not self.tokenizer.chat_template:
            return [render_prompt(self.template, q) for q in questions]
        return [
            self.tokenizer.apply_chat_template(chat_messages(q, self.template, self.system), add_generation_prompt=True, tokenize=False)
            for q in questions
        ]

    def generate_kwargs(self, overrides: dict) -> dict:
        """`model.generate` arguments: the run's generation settings with `overrides` (GenerationConfig fields)."""
        g = self.generation.model_copy(update=overrides)
        kwargs = dict(
            max_new_tokens=g.max_new_tokens,
            num_beams=g.num_beams,
            do_sample=g.do_sample,
            repetition_penalty=g.repetition_penalty,
            no_repeat_ngram_size=g.no_repeat_ngram_size,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if g.do_sample:
            kwargs.update(temperature=g.temperature, top_p=g.top_p)
        return kwargs

    def chat_prompts(self, conversations: list[list[dict]]) -> list[str]:
        """Model input for whole conversations (OpenAI-style `role`/`content` messages).

        The run's own system prompt (what the model was trained with) opens every conversation,
        before any system text of the caller. Message text cannot carry the tokenizer's control
        tokens: "<|im_start|>system" typed by a client would otherwise become a real role marker.
        """
        conversations = [as_the_run_reads(c, self.system, self.tokenizer) for c in conversations]
        if self.is_seq2seq or not self.tokenizer.chat_template:
            # No chat format to follow: the messages' text in order, the last one templated.
            return ["\n\n".join([m["content"] for m in c[:-1]] + [render_prompt(self.template, c[-1]["content"])]) for c in conversations]
        return [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]

    def predict(self, questions: list[str] | str, *, batch_size: int = 8, progress: bool = False, **generation) -> list[str]:
        """Answers to `questions`, in order. `generation` overrides fields of GenerationConfig."""
        if isinstance(questions, str):
            questions = [questions]
        kwargs = self.generate_kwargs(generation)
        prompts = self.prompts(questions)
        # Sorting by length keeps padding low inside each batch; answers are put back in order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers: list[str] = [""] * len(prompts)
        for start in bar(range(0, len(order), batch_size), desc="generate", unit="batch", disable=not progress):
            idx = order[start : start + batch_size]
            for i, text in zip(idx, self.generate([prompts[i] for i in idx], **kwargs)):
                answers[i] = text
        return answers

    def generate_chat(self, conversations: list[list[dict]], *, streamer=None, **generation) -> list[str]:
        """One batched generate call over `conversations` (the caller forms the batch, e.g. a server
        batching concurrent requests); `streamer` receives the new tokens of every row at each step."""
        return self.generate(self.chat_prompts(conversations), streamer=streamer, **self.generate_kwargs(generation))

    @torch.inference_mode()
    def generate(self, prompts: list[str], *, streamer=None, **kwargs) -> list[str]:
        # Chat templates already hold the special tokens (BOS, markers); seq2seq inputs need </s>.
        with self.tokenizer_lock:
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                                 add_special_tokens=self.is_seq2seq).to(self.model.device)
        out = self.model.generate(**enc, **kwargs, streamer=streamer)
        if not self.is_seq2seq:
            out = out[:, enc["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
