"""Generation by an OpenAI-compatible server: llama.cpp's llama-server, vLLM, TGI, Ollama.

`UpstreamEngine` has the transformers Engine's surface (`submit` → a job that yields text deltas,
then holds a Completion), so grounding, citations, the support check and the safety layer work the
same over it. Each request is one streamed `/chat/completions` call; the upstream batches. Its
refusals are mapped to ours before the first delta: a context overflow is a 400, a full upstream a
429, an upstream that cannot be reached a 503, anything else a logged 500 (its text never reaches
our clients: it can name hosts and paths).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import httpx

from medtune.engines.base import (SAMPLING_EPS, Completion, ContextTooLong, EngineBusy, EngineTimeout,
                                  EngineUnavailable, GenerationFailed, RequestRejected, Trimmed)
from medtune.prompts import as_the_run_reads

log = logging.getLogger("medtune.engines")


class UpstreamJob:
    """One streamed completion: iterate it for text deltas; `completion` is set once iteration ends."""

    def __init__(self, response: httpx.Response, deadline: float | None, max_tokens: int, done=lambda: None):
        self.response = response
        self._done = done  # called once, when the response is closed
        self.deadline = deadline
        self.max_tokens = max_tokens
        self.completion: Completion | None = None
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled and self.completion is None:
            self.cancelled = True
            asyncio.get_running_loop().create_task(self._close())  # the upstream stops generating

    async def _close(self) -> None:
        await self.response.aclose()  # no-op when httpx closed it at the end of the stream
        done, self._done = self._done, None
        if done is not None:  # the engine counts this request as finished once, however it ended
            done()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._deltas()

    async def result(self) -> Completion:
        async for _ in self:
            pass
        return self.completion

    async def _deltas(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        out, finish, usage = Trimmed(), None, {}
        lines = self.response.aiter_lines()
        try:
            while True:
                remaining = None if self.deadline is None else max(0.0, self.deadline - loop.time())
                try:
                    line = await asyncio.wait_for(anext(lines), remaining)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise EngineTimeout() from None
                except httpx.HTTPError as exc:
                    raise GenerationFailed(exc) from None
                data = line.removeprefix("data:").strip() if line.startswith("data:") else None
                if not data:
                    continue  # SSE comments (": ping"), event names, blank separators
                if data == "[DONE]":
                    break
                chunk = _json(data)
                if "error" in chunk:  # an error after the first byte (vLLM, llama-server)
                    raise GenerationFailed(RuntimeError(f"upstream error event: {chunk['error']}"))
                usage = chunk.get("usage") or usage  # vLLM/Ollama: in a last chunk with no choices
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    if text := out.push((choice.get("delta") or {}).get("content") or ""):
                        yield text
            if tail := out.push("", final=True):
                yield tail
            completion_tokens = usage.get("completion_tokens", 0)
            reason = "length" if finish == "length" or (finish is None and completion_tokens >= self.max_tokens) else "stop"
            self.completion = Completion(out.text, usage.get("prompt_tokens", 0), completion_tokens, reason)
        finally:
            if self.completion is None:
                self.cancelled = True
            await self._close()


class UpstreamEngine:
    """Chat completions from `url` (…/v1) under `model`. `retries`: new attempts after a connection
    error (the request never reached the upstream, so it is safe to send again)."""

    def __init__(self, url: str, model: str, *, api_key: str | None = None, connect_timeout: float = 5.0,
                 retries: int = 2, default_max_tokens: int = 256, max_pending: int = 72, system: str | None = None,
                 tokenizer=None):
        self.url = url.rstrip("/")
        self.model = model
        self.max_pending = max_pending  # requests in flight; beyond, EngineBusy (upstreams queue without bound)
        self.pending = 0
        self.default_max_tokens = default_max_tokens
        self.retries = retries
        self.system = system  # the run's own system prompt
        self.tokenizer = tokenizer  # the model's, when it is readable here: its control tokens are removed
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None, connect=connect_timeout),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def submit(self, messages: list[dict], *, max_tokens: int | None = None, temperature: float | None = None,
                     top_p: float | None = None, timeout: float | None = None) -> UpstreamJob:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        max_tokens = max_tokens or self.default_max_tokens
        if self.pending >= self.max_pending:
            raise EngineBusy(1)
        body = {"model": self.model, "messages": as_the_run_reads(messages, self.system, self.tokenizer),
                "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}}
        if temperature is not None:
            body["temperature"] = 0.0 if temperature < SAMPLING_EPS else temperature
        if top_p is not None:
            body["top_p"] = top_p
        request = self.client.build_request("POST", f"{self.url}/chat/completions", json=body)
        self.pending += 1  # counted from now: requests waiting for the upstream's first byte are in flight too
        try:
            response = await self._send(request, deadline, loop)
        except BaseException:
            self.pending -= 1
            raise
        return UpstreamJob(response, deadline, max_tokens, done=self._done)

    async def _send(self, request: httpx.Request, deadline: float | None, loop) -> httpx.Response:
        """The upstream's 200 response, its headers read; connection errors retried; anything else raised as ours."""
        for attempt in range(self.retries + 1):
            try:
                send = self.client.send(request, stream=True)
                response = await asyncio.wait_for(send, None if deadline is None else max(0.0, deadline - loop.time()))
                break
            except TimeoutError:
                raise EngineTimeout() from None
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == self.retries:
                    log.error("upstream %s unreachable after %d attempts: %s", self.url, attempt + 1, exc)
                    raise EngineUnavailable(f"the generation server is unreachable ({attempt + 1} attempts)") from None
                await asyncio.sleep(0.2 * 2**attempt)
            except httpx.HTTPError as exc:
                raise GenerationFailed(exc) from None
        if response.status_code != 200:
            await response.aread()
            await response.aclose()
            raise _refusal(response)
        return response

    def _done(self) -> None:
        self.pending -= 1

    async def complete(self, messages: list[dict], **kwargs) -> Completion:
        return await (await self.submit(messages, **kwargs)).result()

    async def close(self) -> None:
        await self.client.aclose()


def _json(data: str) -> dict:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise GenerationFailed(ValueError(f"upstream sent a chunk that is not JSON: {data[:200]!r}")) from None
    if not isinstance(chunk, dict):
        raise GenerationFailed(ValueError(f"upstream sent a chunk that is not an object: {data[:200]!r}"))
    return chunk


def _refusal(response: httpx.Response) -> Exception:
    """The upstream's non-200 answer as one of our errors."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):  # TGI and some proxies send {"error": "text"}
        error = {"message": str(error)}
    message = str(error.get("message") or response.text[:300])
    kind = f"{error.get('type', '')} {error.get('code', '')} {message}".lower()
    status = response.status_code
    if status == 400 and "context" in kind:  # vLLM, llama-server ("exceed_context_size_error"), OpenAI
        return ContextTooLong(f"the request does not fit the model's context: {message}")
    if status in (400, 422):
        return RequestRejected(f"the generation server refused the request: {message}")
    if status in (429, 503):
        retry = response.headers.get("retry-after", "")
        return EngineBusy(int(retry) if retry.isdigit() else 1)
    return GenerationFailed(RuntimeError(f"upstream answered {status}: {message}"))
