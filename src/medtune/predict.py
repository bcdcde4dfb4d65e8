"""Batched generation from a finished run (or any model) with the run's own prompt template."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medtune.io import write_json
from medtune.models import ResolvedModel, load_model, load_tokenizer, resolve_model
from medtune.recipe import GenerationConfig

MODEL_CARD = "medtune.json"  # written next to a run's final weights: template, kind, generation defaults


class Predictor:
    def __init__(self, model, tokenizer, *, template: str = "{question}", generation: GenerationConfig | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.generation = generation or GenerationConfig()
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        if not self.is_seq2seq:
            tokenizer.padding_side = "left"  # decoder-only models continue from the right edge

    @classmethod
    def from_pretrained(cls, ref: str | Path) -> "Predictor":
        """A run directory (its final model), a model directory, or a hub id."""
        path = Path(ref)
        if (path / "model" / MODEL_CARD).is_file():
            path = path / "model"
        card = json.loads((path / MODEL_CARD).read_text()) if (path / MODEL_CARD).is_file() else {}
        resolved = resolve_model(str(path) if path.exists() else str(ref))
        return cls(
            load_model(resolved),
            load_tokenizer(resolved),
            template=card.get("template", "{question}"),
            generation=GenerationConfig(**card.get("generation", {})),
        )

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

    @torch.inference_mode()
    def predict(self, questions: list[str] | str, *, batch_size: int = 8, progress: bool = False, **generation) -> list[str]:
        """Answers to `questions`, in order. `generation` overrides fields of GenerationConfig."""
        if isinstance(questions, str):
            questions = [questions]
        kwargs = self._generate_kwargs(generation)
        # Sorting by length keeps padding low inside each batch; answers are put back in order.
        order = sorted(range(len(questions)), key=lambda i: len(questions[i]))
        answers: list[str] = [""] * len(questions)
        batches = range(0, len(order), batch_size)
        for start in tqdm(batches, desc="generate", disable=not progress):
            idx = order[start : start + batch_size]
            prompts = [self.template.format(question=questions[i]) for i in idx]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True).to(self.model.device)
            out = self.model.generate(**enc, **kwargs)
            if not self.is_seq2seq:
                out = out[:, enc["input_ids"].shape[1] :]
            for i, text in zip(idx, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                answers[i] = text.strip()
        return answers


def write_model_card(model_dir: Path, *, template: str, generation: GenerationConfig, resolved: ResolvedModel) -> None:
    write_json(
        model_dir / MODEL_CARD,
        {"template": template, "generation": generation.model_dump(), "base_model": resolved.ref, "kind": resolved.kind},
    )
