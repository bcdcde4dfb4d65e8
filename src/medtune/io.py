"""Atomic writes (a crash or a kill never leaves a half-written result file behind), and YAML config reading."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def build_dir_atomic(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """`target`, built once by `build(staging_dir)` and renamed into place; a folder holding `marker` is
    complete. A concurrent builder that finished first wins, and a crash leaves no half-built folder."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(staging)
        os.replace(staging, target)
    except OSError:
        if not (target / marker).exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class OutputInUse(ValueError):
    """An output path that holds something medtune did not write there."""


def check_replaceable(target: Path, marker: str, force: bool = False) -> None:
    """Refuse to replace a file, or a non-empty folder without `marker` (the file medtune writes in such a
    folder), unless `force`; callers check before long work too, so that a refusal costs nothing."""
    if target.exists() and not force and (not target.is_dir() or (any(target.iterdir()) and not (target / marker).is_file())):
        raise OutputInUse(f"{target}: already holds files that medtune did not write there (no {marker}); "
                          "choose another output folder, or pass --force to replace it")


def replace_dir_atomic(target: Path, build: Callable[[Path], None], *, marker: str, force: bool = False) -> Path:
    """`target` (re)built by `build(staging_dir)`; an existing folder stays whole until the new one is
    complete and is then swapped out, so a crash leaves either the old folder or the new one.

    Only what medtune made is replaced (see check_replaceable)."""
    check_replaceable(target, marker, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(staging)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# Far above any real config (the packaged safety rules hold about 400 values); a "billion laughs" file of a few
# hundred bytes, whose aliases repeat aliases, expands past it.
MAX_YAML_VALUES = 100_000


def read_yaml_mapping(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> dict:
    """A YAML file that must hold a mapping (recipes, serve configs, rules); `error` names the file otherwise."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        values = _expanded_size(data, MAX_YAML_VALUES, {})
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a scalar YAML types but Python cannot build (2024-13-45)
        raise error(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise error(f"{path}: not valid YAML: nested too deeply") from None
    if values > MAX_YAML_VALUES:
        raise error(f"{path}: its aliases expand to over {MAX_YAML_VALUES:,} values (or refer to themselves); "
                    f"a {what} is far smaller")
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} is a YAML mapping, got {type(data).__name__}")
    return data


def _expanded_size(node: Any, limit: int, sizes: dict[int, int]) -> int:
    """The values in `node` once its aliases are expanded, up to `limit + 1`. PyYAML shares an aliased node
    rather than copying it, so loading is cheap, but whatever walks the data walks every copy (printing a
    271-byte bomb in a recipe error took 5 s and 254 MB); counting each shared node once (`sizes`, by id)
    keeps this walk cheap."""
    if not isinstance(node, dict | list):
        return 1
    if id(node) not in sizes:
        sizes[id(node)] = limit + 1  # while counted: a node that holds itself is endless
        children = node.values() if isinstance(node, dict) else node
        sizes[id(node)] = min(limit + 1, 1 + sum(_expanded_size(child, limit, sizes) for child in children))
    return sizes[id(node)]
