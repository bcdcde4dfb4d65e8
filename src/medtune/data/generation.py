"""Model generations for data: a disk cache keyed by content hash (a rerun redoes nothing) and
the generate function of an instruction-tuned model.

One append-only JSON Lines file per cache (e.g. per model and target language): a line
`{"k": sha256, "v": text}` per generation, appended and fsynced batch by batch. A run killed
at any moment (Ctrl-C, SIGKILL) loses at most the batch in flight; a line torn by the kill is
cut off when the file is next opened. One writer at a time per file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from medtune.logs import bar


Generate = Callable[[list[str]], list[str]]  # a batch of inputs (texts or user messages) -> one output each


def content_key(*parts: str) -> str:
    """sha256 over the parts, unambiguously separated (JSON), e.g. model, language, template version, text."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


def cache_file(kind: str, model: str, variant: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """`<cache_dir>/<kind>/<model slug>-<variant>.jsonl`; cache_dir defaults to medtune's cache."""
    if cache_dir is None:
        from medtune.models import (
            cache_dir as medtune_cache,  # imports torch: only when needed
        )

        cache_dir = medtune_cache() / "generations"
    root = Path(cache_dir)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.strip("/")).strip("-")[-80:]  # local paths make long names
    return root / kind / f"{slug}-{variant}.jsonl"


class GenerationCache:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries: dict[str, str] = {}
        self.torn = 0  # a partial last line, left by a kill mid-write and cut off here
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            self.torn = 1
            with open(self.path, "r+b") as fh:  # the next append would glue onto the torn line
                fh.truncate(end)
        for number, line in enumerate(data[:end].decode("utf-8").split("\n"), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                self.entries[item["k"]] = item["v"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{self.path}, line {number}: not a cache entry; delete the file to start over") from None

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> str:
        return self.entries[key]

    def put_many(self, items: dict[str, str]) -> None:
        """Add `items` and make them durable before returning (one write, then fsync)."""
        if not items:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps({"k": k, "v": v}, ensure_ascii=False) + "\n" for k, v in items.items())
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self.entries.update(items)


def generate_cached(
    inputs: Sequence[str],
    keys: Sequence[str],
    generate: Generate,
    cache: GenerationCache,
    *,
    batch_size: int,
    desc: str,
    progress: bool = True,
) -> tuple[list[str], dict[str, int]]:
    """Outputs for `inputs` in order: cached ones read back, the rest generated in batches
    (shortest first, for less padding) and cached after every batch. Equal keys run once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    todo: dict[str, str] = {}
    for key, text in zip(keys, inputs, strict=True):
        if key not in cache:
            todo.setdefault(key, text)
    order = sorted(todo, key=lambda k: len(todo[k]))
    with bar(total=len(order), desc=desc, unit="item", disable=not progress or not order) as progress_bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            outputs = generate([todo[k] for k in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"generate returned {len(outputs)} outputs for {len(batch)} inputs")
            cache.put_many(dict(zip(batch, outputs, strict=True)))
            progress_bar.update(len(batch))
    counts = {"items": len(keys), "unique": len(set(keys)), "cached": len(set(keys)) - len(order), "generated": len(order)}
    return [cache.get(k) for k in keys], counts


class LazyGenerate:
    """Builds the model's generate function on the first batch that needs it: a fully cached rerun loads no model."""

    def __init__(self, build: Callable[[], Generate]) -> None:
        self.build, self.fn = build, None

    def __call__(self, inputs: list[str]) -> list[str]:
        if self.fn is None:
            self.fn = self.build()
        return self.fn(inputs)


def chat_generator(model: str, generation: dict) -> Generate:
    """A generate function over an instruction-tuned model (run dir, model dir or hub id): each
    input is one user message, each call one batched generate with the `generation` settings."""
    from medtune.predict import (
        Predictor,  # torch and transformers load only when a model is used
    )

    predictor = Predictor.from_pretrained(model)

    def generate(messages: list[str]) -> list[str]:
        return predictor.generate_chat([[{"role": "user", "content": m}] for m in messages], **generation)

    return generate
