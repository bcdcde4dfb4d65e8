"""Batching generation engine: concurrent requests share one `generate` call.

A request is formatted and measured first (`Engine.submit`): a conversation the chat template
refuses, an empty prompt, or one that with its `max_tokens` does not fit the model's context is
refused before it queues, and so is a request that finds the queue full. Requests that arrive
within `batch_wait_ms` of each other (up to `max_batch_size`) are generated together by one
`generate` call in a worker thread, whatever their sampling settings: each row samples with its
own temperature and top-p (`RowSampling`). A streamer decodes every row as it grows and hands
each request its new text through that request's queue.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Literal

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from medtune.engines.base import (SAMPLING_EPS, Completion, ContextTooLong, EngineBusy, EngineTimeout,
                                  GenerationFailed, RequestRejected, Trimmed)
from medtune.predict import Predictor
from medtune.recipe import GenerationConfig




@dataclass(frozen=True)
class Sampling:
    """One request's decoding: greedy, or sampling with its own temperature and top-p."""

    do_sample: bool
    temperature: float = 1.0
    top_p: float = 1.0


def context_window(predictor: Predictor) -> int | None:
    """The most tokens the model can attend to, from its config (position tables, sliding limits);
    None when the model has no such limit (T5's relative positions)."""
    config = predictor.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for field in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(value := getattr(config, field, None), int) and value > 0:
            return value
    limit = predictor.tokenizer.model_max_length  # 1e30 when the tokenizer was saved without one
    return limit if limit < 10**7 else None


class Job:
    """One request: iterate it for text deltas; `completion` is set once iteration ends."""

    def __init__(self, prompt: str, prompt_tokens: int, sampling: Sampling, max_tokens: int, deadline: float | None):
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.deadline = deadline
        self.completion: Completion | None = None
        self.cancelled = False  # read by the worker thread: a cancelled row stops taking tokens
        self._events: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                remaining = None if self.deadline is None else max(0.0, self.deadline - loop.time())
                try:
                    item = await asyncio.wait_for(self._events.get(), remaining)
                except TimeoutError:
                    raise EngineTimeout() from None
                if isinstance(item, Completion):
                    self.completion = item
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if self.completion is None:  # timed out, failed, or the consumer went away
                self.cancel()

    async def result(self) -> Completion:
        async for _ in self:
            pass
        return self.completion


class Engine:
    """`max_queue`: requests waiting beyond the running batch; more are refused with EngineBusy.
    `context`: the model's context in tokens (default: from its config; None: unchecked)."""

    def __init__(self, predictor: Predictor, generation: GenerationConfig | None = None, *,
                 max_batch_size: int = 16, batch_wait_ms: float = 15.0, max_queue: int = 64,
                 context: int | None | Literal["model"] = "model"):
        self.predictor = predictor
        self.generation = generation or predictor.generation
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.context = context_window(predictor) if context == "model" else context
        self.eos_ids = _eos_ids(predictor)
        self.top_k = getattr(predictor.model.generation_config, "top_k", None) or 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="medtune-generate")  # one generate at a time
        self._pending: asyncio.Queue[Job] | None = None
        self._scheduler: asyncio.Task | None = None
        self._running: list[Job] = []
        self._batch_seconds = 1.0  # running mean of a batch's duration, for Retry-After

    def sampling(self, temperature: float | None = None, top_p: float | None = None) -> Sampling:
        """A request's settings over the model's defaults; a temperature under SAMPLING_EPS means greedy
        (dividing logits by 1e-40 makes them infinite, and the sampler fails on the NaNs)."""
        g = self.generation
        do_sample = g.do_sample if temperature is None else temperature >= SAMPLING_EPS
        if not do_sample:
            return Sampling(False)
        return Sampling(True, temperature or g.temperature, top_p if top_p is not None else g.top_p)

    async def submit(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, timeout: float | None = None) -> Job:
        """Format and measure the conversation, then queue it. Raises RequestRejected, ContextTooLong
        or EngineBusy before anything is queued, so that the caller can still answer with a 4xx."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        max_tokens = max_tokens or self.generation.max_new_tokens
        self._refuse_when_full()
        prompt, n = await asyncio.to_thread(self._measure, messages, max_tokens)
        self._refuse_when_full()  # the queue may have filled while this prompt was tokenized
        if self._scheduler is None or self._scheduler.done() or self._scheduler.get_loop() is not loop:
            self._pending = asyncio.Queue()
            self._scheduler = loop.create_task(self._schedule())
        job = Job(prompt, n, self.sampling(temperature, top_p), max_tokens, deadline)
        self._pending.put_nowait(job)
        return job

    async def complete(self, messages: list[dict], **kwargs) -> Completion:
        return await (await self.submit(messages, **kwargs)).result()

    def _refuse_when_full(self) -> None:
        waiting = self._pending.qsize() if self._pending is not None else 0
        if waiting >= self.max_queue:
            batches_ahead = 1 + waiting // self.max_batch_size  # the running one, then the queue's
            raise EngineBusy(max(1, math.ceil(batches_ahead * self._batch_seconds)))

    def _measure(self, messages: list[dict], max_tokens: int) -> tuple[str, int]:
        """The prompt and its length in tokens; refused when it is empty or does not fit the context."""
        try:
            prompt = self.predictor.chat_prompts([messages])[0]
        except Exception as exc:  # jinja's TemplateError: the template's own message says what it wants
            if type(exc).__name__ != "TemplateError":
                raise
            raise RequestRejected(f"the model's chat template refuses this conversation: {exc}") from None
        with self.predictor.tokenizer_lock:  # the worker thread may be encoding a batch right now
            n = len(self.predictor.tokenizer(prompt, add_special_tokens=self.predictor.is_seq2seq)["input_ids"])
        if n == 0:
            raise RequestRejected("the conversation has no text to answer")
        # A seq2seq model's context bounds its encoder input; a decoder-only model's holds prompt and answer.
        needed = n if self.predictor.is_seq2seq else n + max_tokens
        if self.context is not None and needed > self.context:
            raise ContextTooLong(
                f"this model's context is {self.context} tokens; the request needs {needed} "
                f"({n} in the messages" + ("" if self.predictor.is_seq2seq else f", {max_tokens} for the answer") +
                "): shorten the messages" + ("" if self.predictor.is_seq2seq else " or lower max_tokens"))
        return prompt, n

    async def close(self) -> None:
        """Stop scheduling; rows still generating stop at their next token."""
        for job in self._running:
            job.cancel()
        if self._scheduler is not None:
            self._scheduler.cancel()
            self._scheduler = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="medtune-generate")

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._pending.get()]
            window_ends = loop.time() + self.batch_wait
            while len(batch) < self.max_batch_size:
                try:
                    batch.append(await asyncio.wait_for(self._pending.get(), max(0.0, window_ends - loop.time())))
                except TimeoutError:
                    break
            self._running = [job for job in batch if not job.cancelled]
            if not self._running:
                continue
            started = loop.time()
            try:
                await loop.run_in_executor(self._executor, self._run_batch, self._running, loop)
            except Exception as exc:  # a bug, not a request's fault: fail this batch, keep scheduling
                failed = GenerationFailed(exc)
                for job in self._running:
                    job._events.put_nowait(failed)
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (loop.time() - started)
            self._running = []

    def _run_batch(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: one generate call for `jobs`; every job gets its text, then a Completion or an error."""
        send = lambda job, item: loop.call_soon_threadsafe(job._events.put_nowait, item)  # noqa: E731
        streamer = BatchStreamer(self.predictor.tokenizer, jobs, send, self.eos_ids)
        settings = {"max_new_tokens": max(j.max_tokens for j in jobs), "num_beams": 1, "do_sample": False}
        extra = {}
        if any(j.sampling.do_sample for j in jobs):
            # Every row's own temperature, top-k and top-p in one processor; greedy rows keep only their best token.
            settings |= {"do_sample": True, "temperature": 1.0, "top_p": 1.0}
            extra = {"top_k": 0, "logits_processor": LogitsProcessorList([RowSampling([j.sampling for j in jobs], self.top_k)])}
        try:
            self.predictor.generate([j.prompt for j in jobs], streamer=streamer,
                                    **self.predictor.generate_kwargs(settings), **extra)
        except _BatchDone:
            pass
        except Exception as exc:
            streamer.fail(exc)
            return
        streamer.close_all("length")  # rows still open used up the batch's token budget


class RowSampling(LogitsProcessor):
    """Per-row temperature, top-k and top-p (transformers applies one setting to a whole batch);
    a greedy row is reduced to its arg-max, which sampling then picks with certainty."""

    def __init__(self, rows: list[Sampling], top_k: int):
        self.greedy = torch.tensor([not r.do_sample for r in rows])
        self.temperature = torch.tensor([r.temperature if r.do_sample else 1.0 for r in rows])[:, None]
        self.top_p = torch.tensor([r.top_p for r in rows])[:, None]
        self.top_k = top_k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores / self.temperature.to(scores.device, scores.dtype)
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # Drop a token once the tokens ranked above it already hold top_p of the mass (the best always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= self.top_p.to(scores.device, probs.dtype)
        if self.top_k:
            drop[:, self.top_k:] = True
        drop[:, 0] = False
        drop[self.greedy.to(scores.device), 1:] = True
        return scores.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))


class _BatchDone(Exception):
    """Raised from the streamer once every row has finished, to end generate early."""


class BatchStreamer(BaseStreamer):
    """Receives the prompt ids, then one token per row per step; decodes each row incrementally."""

    def __init__(self, tokenizer, jobs: list[Job], send, eos_ids: set[int]):
        self.jobs = jobs
        self.rows = [RowDecoder(tokenizer) for _ in jobs]
        self.open = [True] * len(jobs)
        self.send = send
        self.eos_ids = eos_ids
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate hands over the (padded) prompt ids first
            self._prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if not self.open[i]:
                continue  # finished rows keep receiving padding
            job, row = self.jobs[i], self.rows[i]
            if job.cancelled:
                self.open[i] = False
            elif token in self.eos_ids:
                self._close(i, "stop")
            else:
                if delta := row.push(token):
                    self.send(job, delta)
                if row.count >= job.max_tokens:
                    self._close(i, "length")
        if not any(self.open):
            raise _BatchDone

    def end(self) -> None:
        pass

    def _close(self, i: int, reason: str) -> None:
        self.open[i] = False
        job, row = self.jobs[i], self.rows[i]
        if delta := row.finish():
            self.send(job, delta)
        self.send(job, Completion(row.text, job.prompt_tokens, row.count, reason))

    def close_all(self, reason: str) -> None:
        for i, is_open in enumerate(self.open):
            if is_open and not self.jobs[i].cancelled:
                self._close(i, reason)

    def fail(self, exc: Exception) -> None:
        failed = GenerationFailed(exc)
        for i, is_open in enumerate(self.open):
            if is_open:
                self.open[i] = False
                self.send(self.jobs[i], failed)


class RowDecoder:
    """Incremental detokenization of one row.

    A token can end inside a multi-byte character, and some tokenizers render a token differently
    depending on what precedes it; so text is decoded over a short window of recent tokens and only
    the part that later tokens can no longer change is emitted (through Trimmed).
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._out = Trimmed()
        self._prefix = 0  # window start: decoded for context, already emitted
        self._read = 0  # tokens up to here are emitted

    @property
    def text(self) -> str:
        return self._out.text

    @property
    def count(self) -> int:
        return len(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._out.push(self._stable_text(final=False))

    def finish(self) -> str:
        return self._out.push(self._stable_text(final=True), final=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stable_text(self, final: bool) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):  # a character still incomplete
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]


def _eos_ids(predictor: Predictor) -> set[int]:
    ids = {predictor.tokenizer.eos_token_id}
    configured = getattr(predictor.model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
