"""Engines that generate chat answers: transformers in this process (batching.Engine), or an
OpenAI-compatible server (upstream.UpstreamEngine): llama.cpp's or vLLM's, run by medtune
(managed.ManagedServer), or any other, by URL.

Every engine has the same surface (`submit` → a job of text deltas, then a Completion; `close`),
so the server's safety layer, grounding and citations, and `ask` and `eval`, work the same over
all of them. This stage comes after quantize (llama.cpp serves medtune's own GGUF export) and
before eval, rag and serve, which use it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from medtune.engines.config import EngineConfig
from medtune.engines.managed import EngineSetupError, ManagedServer
from medtune.engines.upstream import UpstreamEngine
from medtune.models import cache_dir, read_card
from medtune.recipe import GenerationConfig

log = logging.getLogger("medtune.engines")

DEFAULT_SLOT_CONTEXT = 4096  # llama.cpp: the KV cache is allocated up front, for every slot


class ManagedEngine(UpstreamEngine):
    """An UpstreamEngine over a server medtune runs: started now, restarted once if it dies, stopped on close."""

    def __init__(self, server: ManagedServer, model: str, **kwargs):
        server.start()
        super().__init__(server.url, model, api_key=server.key, **kwargs)
        self.server = server
        self._watch: asyncio.Task | None = None

    def watch(self) -> None:
        """Start watching the server from the running loop (a server app calls it at startup; a first
        request does otherwise)."""
        if self._watch is None or self._watch.done() and self._watch.get_loop() is not asyncio.get_running_loop():
            self._watch = asyncio.get_running_loop().create_task(self.server.watch(self._moved))

    async def submit(self, messages: list[dict], **kwargs):
        self.watch()
        return await super().submit(messages, **kwargs)

    def _moved(self, url: str) -> None:
        self.url = url.rstrip("/")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await super().close()
        self.server.close()


def make_engine(model: str, cfg: EngineConfig | None = None, generation: GenerationConfig | None = None, *,
                predictor=None, name: str = "model", max_batch_size: int = 16, batch_wait_ms: float = 15.0,
                max_queue: int = 64, context: int | None = None):
    """The engine that generates with `model` (a run, a model folder or a hub id) as `cfg` says, started.
    `predictor` (transformers only) skips loading the weights; `name` names its server's log file;
    `context` (transformers) overrides the model's own context length."""
    cfg = cfg or EngineConfig()
    kind = cfg.kind
    if kind == "transformers":
        from medtune.engines.batching import Engine
        from medtune.predict import Predictor

        return Engine(predictor or Predictor.from_pretrained(model), generation, max_batch_size=max_batch_size,
                      batch_wait_ms=batch_wait_ms, max_queue=max_queue, context=context or "model")
    common = dict(default_max_tokens=(generation or GenerationConfig()).max_new_tokens,
                  connect_timeout=cfg.connect_timeout_s, retries=cfg.retries, max_pending=max_queue + cfg.parallel)
    if kind == "openai":
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not key:
            raise EngineSetupError(f"{name}: engine.api_key_env: ${cfg.api_key_env} is not set")
        system, tokenizer = _prompting(model, must_exist=False)
        return UpstreamEngine(cfg.url, cfg.upstream_model or model, api_key=key, system=system, tokenizer=tokenizer,
                              **common)
    logs = cache_dir() / "logs" / f"{name.replace('/', '_')}-{kind}.log"
    if kind == "llama.cpp":
        from medtune.engines.llamacpp import llama_server_command
        from medtune.quantize.convert import cached_gguf

        gguf = cached_gguf(model, cfg.gguf_type)
        command = llama_server_command(gguf, parallel=cfg.parallel, context=cfg.context or slot_context(gguf),
                                       threads=cfg.threads)
        server = ManagedServer("llama-server", command, logs)
    else:
        server = ManagedServer("vllm", vllm_command(model, cfg.parallel), logs, env=lambda key: {"VLLM_API_KEY": key})
    system, tokenizer = _prompting(model, must_exist=True)
    try:
        return ManagedEngine(server, "medtune", system=system, tokenizer=tokenizer, **common)
    except EngineSetupError:
        server.close()
        raise


def generate_all(engine, conversations: list[list[dict]], *, max_tokens: int, temperature: float = 0.0,
                 concurrency: int = 16, desc: str = "generate") -> list[str]:
    """Answers to `conversations`, in order, from any engine, `concurrency` requests in flight (an
    engine batches them: llama.cpp in its slots, transformers in its batches); then the engine is
    closed (it lives in this call's event loop). For `ask` and `eval`."""
    from medtune.logs import bar

    async def run() -> list[str]:
        gate = asyncio.Semaphore(concurrency)
        progress = bar(total=len(conversations), desc=desc, unit="answer")

        async def one(messages: list[dict]) -> str:
            async with gate:
                done = await engine.complete(messages, max_tokens=max_tokens, temperature=temperature)
            progress.update(1)
            return done.text

        try:
            return list(await asyncio.gather(*[one(c) for c in conversations]))
        finally:
            progress.close()
            await engine.close()

    return asyncio.run(run())


def vllm_command(model: str, parallel: int):
    """`vllm serve` over the model's full-precision folder (vLLM reads its key from $VLLM_API_KEY)."""
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        raise EngineSetupError("engine vllm needs the vllm package (pip install vllm; Linux with a CUDA GPU); "
                               "or run vllm serve yourself and use engine kind openai with its url")
    folder, card = read_card(model)
    if card.get("adapter"):
        raise EngineSetupError(f"{model}: a LoRA run; vLLM serves full weights: medtune merge-adapter {model} --out DIR, "
                               "then serve DIR")
    source = str(folder) if folder else model

    def command(port: int, keyfile: str) -> list[str]:
        return ["vllm", "serve", source, "--host", "127.0.0.1", "--port", str(port), "--served-model-name", "medtune",
                "--max-num-seqs", str(parallel)]

    return command


def _prompting(model: str, *, must_exist: bool):
    """(the run's system prompt, its tokenizer) when `model` can be read here: a medtune folder (a run,
    its adapter, a quantized or GGUF export: each holds its tokenizer) or a model medtune can resolve.
    For an upstream elsewhere it may not be; then the upstream's own template applies, as it is."""
    from transformers import AutoTokenizer

    from medtune.models import load_tokenizer, resolve_model

    try:
        folder, card = read_card(model)
        tokenizer = AutoTokenizer.from_pretrained(folder) if folder else load_tokenizer(resolve_model(model))
    except Exception:
        if must_exist:
            raise
        log.warning("%s: not readable here; the upstream's chat template and tokenizer apply as they are", model)
        return None, None
    return card.get("system"), tokenizer


def slot_context(gguf: Path) -> int:
    """Tokens per llama.cpp slot: the model's context as its GGUF file records it, at most DEFAULT_SLOT_CONTEXT."""
    from gguf import GGUFReader

    fields = GGUFReader(gguf).fields
    arch = fields["general.architecture"].contents()
    length = fields.get(f"{arch}.context_length")
    return min(length.contents() if length else DEFAULT_SLOT_CONTEXT, DEFAULT_SLOT_CONTEXT)
