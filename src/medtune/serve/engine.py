"""Batching generation engine: concurrent requests share one `generate` call.

Requests that arrive within `batch_wait_ms` of each other (up to `max_batch_size`) and ask for
the same sampling settings are generated together by one `Predictor.generate_chat` call in a
worker thread, so the asyncio loop keeps serving while the model runs. A streamer decodes every
row as it grows and hands each request its new text through that request's queue.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Literal

from transformers.generation.streamers import BaseStreamer

from medtune.predict import Predictor
from medtune.recipe import GenerationConfig

SAMPLING_EPS = 1e-5  # as vLLM: below this a temperature is greedy decoding


@dataclass(frozen=True)
class Sampling:
    """The settings rows of one batch must share (max_tokens may differ per row)."""

    do_sample: bool
    temperature: float
    top_p: float
    repetition_penalty: float
    no_repeat_ngram_size: int

    def generate_kwargs(self) -> dict:
        return dict(do_sample=self.do_sample, temperature=self.temperature, top_p=self.top_p, num_beams=1,
                    repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


class RequestRejected(ValueError):
    """This request cannot be generated (e.g. its chat template refuses the conversation)."""


class EngineTimeout(TimeoutError):
    """The request did not finish within its timeout (queueing included)."""


class Job:
    """One request: iterate it for text deltas; `completion` is set once iteration ends."""

    def __init__(self, messages: list[dict], sampling: Sampling, max_tokens: int, deadline: float | None):
        self.messages = messages
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.deadline = deadline
        self.prompt_tokens = 0
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
                    raise EngineTimeout("the request timed out before the answer was complete") from None
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
    def __init__(self, predictor: Predictor, generation: GenerationConfig | None = None, *,
                 max_batch_size: int = 16, batch_wait_ms: float = 15.0):
        self.predictor = predictor
        self.generation = generation or predictor.generation
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.eos_ids = _eos_ids(predictor)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="medtune-generate")  # one generate at a time
        self._pending: asyncio.Queue[Job] | None = None
        self._scheduler: asyncio.Task | None = None
        self._running: list[Job] = []

    def sampling(self, temperature: float | None = None, top_p: float | None = None) -> Sampling:
        """A request's settings over the model's defaults; a temperature under SAMPLING_EPS means greedy
        (dividing logits by 1e-40 makes them infinite, and the sampler fails on the NaNs)."""
        g = self.generation
        do_sample = g.do_sample if temperature is None else temperature >= SAMPLING_EPS
        if not do_sample:  # greedy ignores temperature and top_p: all greedy requests can share a batch
            return Sampling(False, 1.0, 1.0, g.repetition_penalty, g.no_repeat_ngram_size)
        return Sampling(True, temperature or g.temperature, top_p if top_p is not None else g.top_p,
                        g.repetition_penalty, g.no_repeat_ngram_size)

    def submit(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float | None = None,
               top_p: float | None = None, timeout: float | None = None) -> Job:
        loop = asyncio.get_running_loop()
        if self._scheduler is None or self._scheduler.done() or self._scheduler.get_loop() is not loop:
            self._pending = asyncio.Queue()
            self._scheduler = loop.create_task(self._schedule())
        job = Job(messages, self.sampling(temperature, top_p), max_tokens or self.generation.max_new_tokens,
                  None if timeout is None else loop.time() + timeout)
        self._pending.put_nowait(job)
        return job

    async def complete(self, messages: list[dict], **kwargs) -> Completion:
        return await self.submit(messages, **kwargs).result()

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
            groups: dict[Sampling, list[Job]] = {}
            for job in batch:
                if not job.cancelled:
                    groups.setdefault(job.sampling, []).append(job)
            for jobs in groups.values():
                self._running = jobs
                try:
                    await loop.run_in_executor(self._executor, self._run_batch, jobs, loop)
                except Exception as exc:  # a bug, not a request's fault: fail this batch, keep scheduling
                    for job in jobs:
                        job._events.put_nowait(RuntimeError(f"generation failed: {exc}"))
            self._running = []

    def _run_batch(self, jobs: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: one generate call for `jobs`; every job gets its text, then a Completion or an error."""
        send = lambda job, item: loop.call_soon_threadsafe(job._events.put_nowait, item)  # noqa: E731
        tokenizer = self.predictor.tokenizer
        ready = []
        for job in jobs:  # a conversation the chat template rejects fails alone, not its whole batch
            try:
                prompt = self.predictor.chat_prompts([job.messages])[0]
            except Exception as exc:
                send(job, RequestRejected(f"cannot format the conversation for this model: {exc}"))
                continue
            ids = tokenizer(prompt, add_special_tokens=self.predictor.is_seq2seq, truncation=True)["input_ids"]
            job.prompt_tokens = len(ids)
            ready.append(job)
        if not ready:
            return
        streamer = BatchStreamer(tokenizer, ready, send, self.eos_ids)
        try:
            self.predictor.generate_chat([j.messages for j in ready], streamer=streamer,
                                         max_new_tokens=max(j.max_tokens for j in ready), **ready[0].sampling.generate_kwargs())
        except _BatchDone:
            pass
        except Exception as exc:
            streamer.fail(exc)
            return
        streamer.close_all("length")  # rows still open used up the batch's token budget


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
        for i, is_open in enumerate(self.open):
            if is_open:
                self.open[i] = False
                self.send(self.jobs[i], RuntimeError(f"generation failed: {exc}"))


class RowDecoder:
    """Incremental detokenization of one row.

    A token can end inside a multi-byte character, and some tokenizers render a token differently
    depending on what precedes it; so text is decoded over a short window of recent tokens and only
    the part that later tokens can no longer change is emitted. Leading and trailing whitespace is
    held back, so the streamed text equals the stripped full decode that non-streaming returns.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # emitted so far
        self._prefix = 0  # window start: decoded for context, already emitted
        self._read = 0  # tokens up to here are emitted
        self._held = ""  # trailing whitespace, emitted only if more text follows

    @property
    def count(self) -> int:
        return len(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._emit(self._stable_text(final=False), final=False)

    def finish(self) -> str:
        return self._emit(self._stable_text(final=True), final=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stable_text(self, final: bool) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):  # a character still incomplete
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def _emit(self, new: str, final: bool) -> str:
        s = self._held + new
        if not self.text:
            s = s.lstrip()
        out = s.rstrip()
        self._held = "" if final else s[len(out) :]
        self.text += out
        return out


def _eos_ids(predictor: Predictor) -> set[int]:
    ids = {predictor.tokenizer.eos_token_id}
    configured = getattr(predictor.model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return {i for i in ids if i is not None}
