"""Texts for calibration (GPTQ) and held-out perplexity: a recipe's split, or answers from any data file."""

from __future__ import annotations

import random
from pathlib import Path

from medtune.models.card import find_model_dir
from medtune.recipe import load_recipe

RUN_RECIPE = "recipe.yaml"  # the resolved recipe a run directory keeps


def run_recipe(ref: str | Path) -> Path | None:
    """The recipe of a run directory (given as the run or its model/adapter folder), if there is one."""
    path = Path(ref)
    for folder in (path, find_model_dir(path).parent):
        if (folder / RUN_RECIPE).is_file():
            return folder / RUN_RECIPE
    return None


def load_texts(data: str | Path, n: int, *, split: str = "validation", seed: int = 0) -> list[str]:
    """Up to `n` answer texts from `data`.

    A recipe YAML or a run directory gives that recipe's `split` (focus-grouped, so validation answers are
    held out from training); any other path is read with the loader its suffix implies, and `n` of its
    answered records are drawn with `seed` (files such as MedQuAD are ordered by collection).
    """
    from medtune.data import infer_loader, load_source, prepare_data
    from medtune.recipe import SourceConfig

    path = Path(data)
    recipe = path if path.suffix in {".yaml", ".yml"} else run_recipe(path) if path.is_dir() else None
    if recipe is not None:
        texts = list(prepare_data(load_recipe(recipe).data).splits[split]["answer"])[:n]
    else:
        records, _ = load_source(SourceConfig(loader=infer_loader(path), path=str(path)))
        answers = [r.answer for r in records if r.answered]
        texts = random.Random(seed).sample(answers, min(n, len(answers)))
    if not texts:
        raise ValueError(f"{data}: no answer texts to use")
    return texts
