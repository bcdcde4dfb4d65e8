"""What answers under each configured name: a model's engine and, when grounded, its Answerer."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Literal

from medtune.predict import Predictor
from medtune.serve.config import ServeConfig, ServedModelConfig
from medtune.engines.base import EngineTimeout

log = logging.getLogger("medtune.serve")


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
    engine: object  # medtune.engines.batching.Engine, or .upstream.UpstreamEngine for a server (medtune.engines)
    answerer: object | None = None  # medtune.rag.answer.Answerer; None: plain chat
    retriever: object | None = None  # medtune.rag.retrieve.Retriever over the model's index

    async def answer(self, messages: list[dict], *, timeout: float | None = None, **generation) -> AsyncIterator[Delta | Outcome]:
        """Deltas, then one Outcome. `generation`: Engine.submit's max_tokens, temperature and top_p;
        `timeout` covers everything, the safety check and retrieval included. A request the engine
        refuses (too long, queue full) raises before the first Delta."""
        loop = asyncio.get_running_loop()
        ends = None if timeout is None else loop.time() + timeout
        if self.answerer is None:  # safety: false
            job = await self.engine.submit(messages, timeout=_left(ends, loop), **generation)
            async for item in _stream(job):
                yield item
            yield Outcome(job.completion.finish_reason, job.completion.prompt_tokens, job.completion.completion_tokens, None)
            return
        # The whole conversation is checked; the safety check and retrieval count in the timeout.
        prep = await _within(asyncio.to_thread(self.answerer.prepare, messages), ends, loop)
        if prep.final is not None:  # refused, or nothing in the sources: nothing to generate
            for part in ("prefix", "body", "tail"):
                if text := getattr(prep.final, part):
                    yield Delta(text, "answer" if part == "body" else part)
            yield Outcome("stop", 0, 0, prep.final.to_dict())
            return
        job = await self.engine.submit(prep.messages, timeout=_left(ends, loop), **generation)
        if prep.prefix:
            yield Delta(prep.prefix, "prefix")
        async for item in _stream(job):
            yield item
        done = job.completion
        ans = await _within(asyncio.to_thread(self.answerer.finish, prep, done.text), ends, loop)  # embeds sentences
        if ans.tail:
            yield Delta(ans.tail, "tail")
        yield Outcome(done.finish_reason, done.prompt_tokens, done.completion_tokens, ans.to_dict())


async def _stream(job) -> AsyncIterator[Delta]:
    try:
        async for text in job:
            yield Delta(text)
    finally:
        job.cancel()  # no-op once finished; otherwise the client went away: stop its row


def _left(ends: float | None, loop) -> float | None:
    return None if ends is None else max(0.0, ends - loop.time())


async def _within(work, ends: float | None, loop):
    try:
        return await asyncio.wait_for(work, _left(ends, loop))
    except TimeoutError:
        raise EngineTimeout() from None


def load_models(config: ServeConfig, predictors: dict[str, Predictor] | None = None) -> dict[str, ServedModel]:
    """Every configured model and its engine, started now so that a bad reference or a missing engine
    fails at startup, not on a request. `predictors` (by served name) skips loading transformers
    models; names sharing a model reference share its weights."""
    from medtune.engines import make_engine

    predictors = dict(predictors or {})
    by_ref: dict[str, Predictor] = {}
    rules = None
    served: dict[str, ServedModel] = {}
    try:
        for name, cfg in config.models.items():
            predictor = None
            if cfg.engine.kind == "transformers":
                if name not in predictors and cfg.model not in by_ref:
                    by_ref[cfg.model] = Predictor.from_pretrained(cfg.model)
                predictor = predictors.get(name) or by_ref[cfg.model]
            retriever = _retriever(cfg.index, cfg.reranker) if cfg.index else None  # before a server starts: it may fail
            engine = make_engine(cfg.model, cfg.engine, cfg.generation, predictor=predictor, name=name,
                                 max_batch_size=config.batching.max_batch_size, batch_wait_ms=config.batching.batch_wait_ms,
                                 max_queue=config.batching.max_queue, context=config.limits.max_context_tokens)
            model = served[name] = ServedModel(name, cfg, engine, retriever=retriever)
            if cfg.safety:
                from medtune.rag.answer import Answerer
                from medtune.rag.safety import load_rules

                rules = rules or load_rules()
                # Without grounding the answer comes from the model alone, and says so.
                model.answerer = Answerer(model.retriever if cfg.grounding else None, rules, k=cfg.k)
            else:
                log.warning("%s: served with safety: false — no emergency advice, no refusals, no notice", name)
    except BaseException:
        for model in served.values():  # a server already started (llama-server) must not outlive a failed start
            if server := getattr(model.engine, "server", None):
                server.close()
        raise
    return served


def _retriever(index_dir: str, reranker: str | None):
    from medtune.rag.index import load_index
    from medtune.rag.retrieve import Retriever

    return Retriever(load_index(index_dir), reranker=reranker)
