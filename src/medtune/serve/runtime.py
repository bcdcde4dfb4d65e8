"""What answers under each configured name: a model's engine and, when grounded, its Answerer."""

from __future__ import annotations

import asyncio
import importlib.util
from dataclasses import dataclass
from typing import AsyncIterator, Literal

from medtune.predict import Predictor
from medtune.serve.config import ServeConfig, ServeConfigError, ServedModelConfig
from medtune.serve.engine import Completion, Engine


@dataclass(frozen=True)
class Delta:
    """New answer text. `part` lets a page show the safety advice and the sources apart from the answer."""

    text: str
    part: Literal["prefix", "answer", "tail"] = "answer"


@dataclass(frozen=True)
class Outcome:
    """The end of an answer, after its last Delta."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    medtune: dict | None  # GroundedAnswer.to_dict() when the model is grounded


@dataclass
class ServedModel:
    name: str
    config: ServedModelConfig
    engine: Engine
    answerer: object | None = None  # medtune.rag.answer.Answerer; None: plain chat
    retriever: object | None = None  # medtune.rag.retrieve.Retriever over the model's index

    async def answer(self, messages: list[dict], **generation) -> AsyncIterator[Delta | Outcome]:
        """Deltas, then one Outcome. `generation`: Engine.submit's max_tokens, temperature, top_p, timeout."""
        if self.answerer is None:
            async for item in self._generate(messages, generation):
                if isinstance(item, Completion):
                    done = item
                else:
                    yield item
            yield Outcome(done.finish_reason, done.prompt_tokens, done.completion_tokens, None)
            return
        prep = await asyncio.to_thread(self.answerer.prepare, messages)  # the whole conversation is checked
        if prep.final is not None:  # refused, or nothing in the sources: nothing to generate
            for part in ("prefix", "body", "tail"):
                if text := getattr(prep.final, part):
                    yield Delta(text, "answer" if part == "body" else part)
            yield Outcome("stop", 0, 0, prep.final.to_dict())
            return
        if prep.prefix:
            yield Delta(prep.prefix, "prefix")
        async for item in self._generate(prep.messages, generation):
            if isinstance(item, Completion):
                done = item
            else:
                yield item
        ans = await asyncio.to_thread(self.answerer.finish, prep, done.text)  # its support check embeds sentences
        if ans.tail:
            yield Delta(ans.tail, "tail")
        yield Outcome(done.finish_reason, done.prompt_tokens, done.completion_tokens, ans.to_dict())

    async def _generate(self, messages: list[dict], generation: dict) -> AsyncIterator[Delta | Completion]:
        job = self.engine.submit(messages, **generation)
        try:
            async for text in job:
                yield Delta(text)
        finally:
            job.cancel()  # no-op once finished; otherwise the client went away: stop its row
        yield job.completion


def load_models(config: ServeConfig, predictors: dict[str, Predictor] | None = None) -> dict[str, ServedModel]:
    """Every configured model, loaded now so that a bad reference fails at startup, not on a request.

    `predictors` (by served name) skips loading; names sharing a model reference share its weights.
    """
    if config.backend == "vllm":
        # Accepted in configs so that they validate, but not wired yet: refuse at startup, never on a request.
        installed = importlib.util.find_spec("vllm") is not None
        raise ServeConfigError(
            "backend: vllm " + ("is not supported by this version of medtune serve" if installed else
                                "needs the vllm package, which is not installed (pip install vllm; Linux with a CUDA GPU)")
            + "; use backend: transformers")
    predictors = dict(predictors or {})
    by_ref: dict[str, Predictor] = {}
    rules = None
    served = {}
    for name, cfg in config.models.items():
        if name not in predictors:
            if cfg.model not in by_ref:
                by_ref[cfg.model] = Predictor.from_pretrained(cfg.model)
            predictors[name] = by_ref[cfg.model]
        engine = Engine(predictors[name], cfg.generation, max_batch_size=config.batching.max_batch_size,
                        batch_wait_ms=config.batching.batch_wait_ms)
        model = ServedModel(name, cfg, engine)
        if cfg.grounding:
            from medtune.rag.answer import Answerer
            from medtune.rag.safety import load_rules

            rules = rules or load_rules()
            model.retriever = _retriever(cfg.index) if cfg.index else None
            model.answerer = Answerer(model.retriever, rules, k=cfg.k)
        served[name] = model
    return served


def _retriever(index_dir: str):
    from medtune.rag.index import load_index
    from medtune.rag.retrieve import Retriever

    return Retriever(load_index(index_dir))
