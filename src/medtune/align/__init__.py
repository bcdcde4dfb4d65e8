"""Alignment stage: preference pairs that mean something (`pairs`), and DPO on them (`dpo`).

`make_pairs` is `medtune pairs`: the pairs a recipe's DPO run would train on (or the pairs of one
data file), written as JSONL `{id, prompt, chosen, rejected, strategy, …}` that the `pairs` loader
reads back, with the counts per strategy and the degenerate pairs dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from medtune.align.pairs import Pair, PairReport, build_pairs, pair_splits
from medtune.data import infer_loader, load_source, prepare_data
from medtune.io import write_atomic
from medtune.recipe import AlignConfig, PairsConfig, RecipeError, SourceConfig, load_recipe
from medtune.records import from_dataset

__all__ = ["Pair", "PairReport", "build_pairs", "make_pairs", "pair_splits"]


def make_pairs(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    loader: str | None = None,
    strategies: list[str] | None = None,
    seed: int | None = None,
) -> dict:
    """Build pairs from a recipe (every split of its data, its `align.pairs` settings) or a data file; write them atomically.

    `strategies` and `seed` replace the recipe's (or the defaults'); `sampled` generates with a recipe's
    model and prompt, so it needs a recipe. Returns the report: output file, pair count, counts per split.
    """
    is_recipe = Path(source).suffix.lower() in (".yaml", ".yml")
    if overrides and not is_recipe:
        raise RecipeError(f"--set changes recipe fields, and {source} is a data file, not a recipe")
    recipe = load_recipe(source, overrides) if is_recipe else None
    cfg = (recipe.align or AlignConfig()).pairs if recipe else PairsConfig()
    updates = {k: v for k, v in {"rejected": strategies, "seed": seed}.items() if v is not None}
    cfg = PairsConfig.model_validate(cfg.model_dump() | updates)
    if recipe:
        generate = _sampler(recipe, cfg) if "sampled" in cfg.rejected else None
        built = {name: build_pairs(from_dataset(ds), cfg, generate) for name, ds in prepare_data(recipe.data).splits.items()}
    elif "sampled" in cfg.rejected:
        raise RecipeError("the sampled strategy generates with a recipe's model and prompt: give a recipe, not a data file")
    else:
        records, _ = load_source(SourceConfig(loader=loader or infer_loader(source), path=str(source)))
        built = {"all": build_pairs(records, cfg)}
    rows = [p.to_row() | {"split": name} for name, (pairs, _) in built.items() for p in pairs]
    write_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"out": str(out), "pairs": len(rows), "splits": {name: report.to_dict() for name, (_, report) in built.items()}}


def _sampler(recipe, cfg: PairsConfig):
    """The recipe's starting model, prepared as for DPO, generating rejected answers."""
    from medtune.align.dpo import check_start, sampler
    from medtune.models import load_start, resolve_start
    from medtune.train.sft import prepare_tokenizer

    m = recipe.model
    start = resolve_start(m.name_or_path, m.kind, m.revision)
    check_start(start)
    model, tokenizer = load_start(start)
    prepare_tokenizer(tokenizer, model)
    return sampler(model, tokenizer, recipe.prompt, cfg)
