"""Merge methods on one tensor at a time: linear, SLERP, and the task-vector family (task arithmetic, TIES, DARE).

The task-vector methods are assembled from PEFT's `peft.utils.merge_utils` (pruning, sign election,
disjoint mean); they are composed here rather than called whole because PEFT's `ties`/`dare_*` take one
density for all models, and a recipe gives each model its own. With equal densities the result is
PEFT's exactly. SLERP is not in PEFT and is written out below.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from peft.utils.merge_utils import (
    calculate_majority_sign_mask,
    disjoint_merge,
    prune,
    reshape_weight_task_tensors,
    task_arithmetic,
)

# Above this |cos| two vectors are treated as colinear: sin(theta) ~ 0 makes SLERP's weights unstable.
SLERP_COLINEAR = 0.9995


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted average: sum(w_i * x_i) / sum(w_i)."""
    w = torch.tensor(weights, dtype=tensors[0].dtype)
    return task_arithmetic(list(tensors), w / w.sum())


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0) to `b` (t=1) along the arc between their directions;
    linear interpolation when they are (nearly) colinear."""
    cos = torch.dot(a.flatten() / (a.norm() + 1e-12), b.flatten() / (b.norm() + 1e-12)).clamp(-1.0, 1.0)
    if cos.abs() > SLERP_COLINEAR:
        return (1 - t) * a + t * b
    theta = torch.arccos(cos)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


def merge_task_vectors(
    method: str,
    task_vectors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    majority_sign_method: str = "total",
) -> torch.Tensor:
    """The combined update to add to the base, from each model's task vector (model - base).

    task_arithmetic: sum(w_i * tv_i). ties: keep each tv's largest-magnitude `density` share, elect the
    sign per element, and average (weighted) only the entries that agree with it. dare_linear / dare_ties:
    drop entries at random with probability 1 - density, rescale the survivors by 1/density, then sum
    or TIES-merge. DARE draws from torch's global generator: seed it (see `tensor_seed`).
    """
    tvs = list(task_vectors)
    if method in ("ties", "dare_ties", "dare_linear"):
        how = "magnitude" if method == "ties" else "random"
        # PEFT warns and returns the tensor unchanged at density 1; skip the call to keep logs quiet.
        tvs = [tv if d >= 1 else prune(tv, d, how, rescale=True) for tv, d in zip(tvs, densities)]
    w = torch.tensor(weights, dtype=tvs[0].dtype)
    if method in ("task_arithmetic", "dare_linear"):
        return task_arithmetic(tvs, w)
    if method not in ("ties", "dare_ties"):
        raise ValueError(f"unknown task-vector method {method!r}")
    stacked = torch.stack(tvs)
    mask = calculate_majority_sign_mask(stacked, method=majority_sign_method)
    return disjoint_merge(stacked * reshape_weight_task_tensors(stacked, w), mask)


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed, so DARE's drops depend on the recipe seed and the tensor's name only, not on
    the order tensors are read in (a streamed merge equals an in-memory one)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
