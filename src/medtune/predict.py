"""Batched generation from a finished run (or any model) with the run's own prompt format."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from medtune.io import write_json
from medtune.models import ModelNotAvailable, ResolvedModel, load_model, load_tokenizer, resolve_model
from medtune.prompts import chat_messages, render_prompt
from medtune.recipe import GenerationConfig

MODEL_CARD = "medtune.json"  # written next to a run's final weights: prompt format, base model, generation defaults


class Predictor:
    def __init__(self, model, tokenizer, *, template: str = "{question}", system: str | None = None, generation: GenerationConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.system = system
        self.generation = generation or GenerationConfig()
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if not self.is_seq2seq:
            tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
            if tokenizer.pad_token is None:  # padding is masked out at inference, any token will do
                tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, ref: str | Path) -> "Predictor":
        """A run directory (its final model or adapter), a model directory, or a hub id."""
        path = find_model_dir(Path(ref)) if Path(ref).exists() else None
        card = json.loads((path / MODEL_CARD).read_text()) if path and (path / MODEL_CARD).is_file() else {}
        if card.get("adapter"):
            model, tokenizer = load_adapter_model(path, card)
        elif card.get("quantization"):
            from medtune.quantize import load_quantized  # `medtune quantize` output: quanto weights

            model, tokenizer = load_quantized(path)
        else:
            resolved = resolve_model(str(path) if path else str(ref))
            model, tokenizer = load_model(resolved), load_tokenizer(resolved)
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

    def _generate_kwargs(self, overrides: dict) -> dict:
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
        """Model input for whole conversations (OpenAI-style `role`/`content` messages)."""
        if self.is_seq2seq or not self.tokenizer.chat_template:
            # No chat format to follow: the messages' text in order, the last one templated.
            return ["\n\n".join([m["content"] for m in c[:-1]] + [render_prompt(self.template, c[-1]["content"])]) for c in conversations]
        return [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]

    def predict(self, questions: list[str] | str, *, batch_size: int = 8, progress: bool = False, **generation) -> list[str]:
        """Answers to `questions`, in order. `generation` overrides fields of GenerationConfig."""
        if isinstance(questions, str):
            questions = [questions]
        kwargs = self._generate_kwargs(generation)
        prompts = self.prompts(questions)
        # Sorting by length keeps padding low inside each batch; answers are put back in order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        answers: list[str] = [""] * len(prompts)
        for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress):
            idx = order[start : start + batch_size]
            for i, text in zip(idx, self.generate([prompts[i] for i in idx], **kwargs)):
                answers[i] = text
        return answers

    def generate_chat(self, conversations: list[list[dict]], *, streamer=None, **generation) -> list[str]:
        """One batched generate call over `conversations` (the caller forms the batch, e.g. a server
        batching concurrent requests); `streamer` receives the new tokens of every row at each step."""
        return self.generate(self.chat_prompts(conversations), streamer=streamer, **self._generate_kwargs(generation))

    @torch.inference_mode()
    def generate(self, prompts: list[str], *, streamer=None, **kwargs) -> list[str]:
        # Chat templates already hold the special tokens (BOS, markers); seq2seq inputs need </s>.
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                             add_special_tokens=self.is_seq2seq).to(self.model.device)
        out = self.model.generate(**enc, **kwargs, streamer=streamer)
        if not self.is_seq2seq:
            out = out[:, enc["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


def find_model_dir(path: Path) -> Path:
    """A run directory holds model/ (full fine-tuning) or adapter/ (LoRA); other paths are model dirs."""
    for sub in ("model", "adapter"):
        if (path / sub / MODEL_CARD).is_file():
            return path / sub
    return path


def load_adapter_model(adapter_dir: Path, card: dict, dtype: torch.dtype = torch.float32):
    """The base model in full precision with the run's LoRA adapter on top, and the run's tokenizer."""
    from peft import PeftModel

    base = load_model(resolve_model(card["base_model"]), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if len(tokenizer) != base.get_input_embeddings().num_embeddings:
        base.resize_token_embeddings(len(tokenizer))  # the run added tokens (chat markers, pad)
    try:
        return PeftModel.from_pretrained(base, adapter_dir), tokenizer
    except ValueError as exc:
        raise ModelNotAvailable(f"{adapter_dir}: adapter does not fit base model {card['base_model']}: {exc}") from None


def write_model_card(model_dir: Path, *, template: str, system: str | None, generation: GenerationConfig, resolved: ResolvedModel, adapter: bool) -> None:
    write_json(
        model_dir / MODEL_CARD,
        {
            "template": template,
            "system": system,
            "generation": generation.model_dump(),
            # A local base is recorded by absolute path so the run loads from any working directory.
            "base_model": str(Path(resolved.location).resolve()) if resolved.origin == "local" else resolved.ref,
            "kind": resolved.kind,
            "adapter": adapter,
        },
    )
