"""Framework-neutral pruning decisions: which weights to zero, and how sparsity ramps (AGP).

Masks are computed here from numpy weights with one algorithm, so with identical weights both
backends prune identical entries; a backend only applies the masks with its own tools.
"""
from __future__ import annotations

import numpy as np


def agp_sparsity(step: int, start: int, end: int, initial: float, final: float) -> float:
    """Zhu & Gupta (2017) cubic ramp: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3, clamped."""
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / max(end - start, 1)
    return final + (initial - final) * (1.0 - progress) ** 3


def prune_steps(total_steps: int, every: int, end_fraction: float) -> tuple[list[int], int]:
    """Steps at which masks are recomputed (0, every, 2*every, ... up to the ramp's end) and the end step."""
    end = max(1, int(round(total_steps * end_fraction)))
    steps = list(range(0, end, every)) + [end]
    return sorted(set(s for s in steps if s < total_steps)) or [0], end


def _order(values: np.ndarray) -> np.ndarray:
    """Stable ascending order of |w|: ties broken by position, identically on every backend."""
    return np.argsort(np.abs(values), kind="stable")


def magnitude_masks(weights: dict[str, np.ndarray], sparsity: float, scope: str) -> dict[str, np.ndarray]:
    """Zero the smallest-magnitude `sparsity` share: per layer (local) or under one threshold (global)."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    masks: dict[str, np.ndarray] = {}
    if scope == "local":
        for name, w in weights.items():
            flat = np.ones(w.size, dtype=bool)
            flat[_order(w.ravel())[: int(round(sparsity * w.size))]] = False
            masks[name] = flat.reshape(w.shape)
        return masks
    if scope != "global":
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    names = list(weights)
    flat = np.concatenate([weights[n].ravel() for n in names])
    keep = np.ones(flat.size, dtype=bool)
    keep[_order(flat)[: int(round(sparsity * flat.size))]] = False
    offset = 0
    for n in names:
        size = weights[n].size
        masks[n] = keep[offset:offset + size].reshape(weights[n].shape)
        offset += size
    return masks


def sparsity_of(arrays: dict[str, np.ndarray]) -> dict[str, object]:
    """Share of exact zeros, overall and per tensor (counted from weights, e.g. an exported artifact's)."""
    total = sum(a.size for a in arrays.values())
    zeros = sum(int((a == 0).sum()) for a in arrays.values())
    return {"overall": zeros / max(total, 1), "weights": total, "zeros": zeros,
            "layers": {n: {"sparsity": float((a == 0).mean()), "size": int(a.size), "zeros": int((a == 0).sum())}
                       for n, a in arrays.items()}}


def name_artifact_layers(artifact_layers: dict[str, dict], canonical: dict[str, np.ndarray]) -> dict[str, dict]:
    """Artifact weight tensors renamed to canonical layer names: same order, sizes checked.

    Exported programs name tensors their own way (paddle: conv2d_4.w_0); both list conv/matmul weights
    in execution order, which for the registered architectures is module order. Returns {} if they differ.
    """
    items = list(artifact_layers.items())
    names = list(canonical)
    if len(items) != len(names) or any(v["size"] != canonical[n].size for (_, v), n in zip(items, names)):
        return {}
    return {n: dict(v, artifact_name=a) for (a, v), n in zip(items, names)}


def pruned_layer_sparsity(layers: dict[str, dict], pruned: list[str]) -> float | None:
    """Sparsity over the layers that were pruned (the target applies to these, not to skipped ones)."""
    chosen = [layers[n] for n in pruned if n in layers]
    if not chosen or len(chosen) != len(pruned):
        return None
    return sum(v["zeros"] for v in chosen) / sum(v["size"] for v in chosen)


def is_depthwise(weight_shape: tuple[int, ...]) -> bool:
    """A depthwise conv weight: [C, 1, k, k] with C > 1 (one input channel per group)."""
    return len(weight_shape) == 4 and weight_shape[1] == 1 and weight_shape[0] > 1


def select_layers(names: list[str], skip: tuple[str, ...], head: str, source: str, path: str,
                  depthwise: tuple[str, ...] = ()) -> list[str]:
    """Prunable layers minus those skipped (named, the head, depthwise); unknown skip names are recipe errors."""
    from common.errors import RecipeError
    known = {n.rsplit(".weight", 1)[0]: n for n in names}
    for s in skip:
        if s not in known:
            raise RecipeError(source, path, "layer names among the prunable layers (" +
                              ", ".join(list(known)[:6]) + f", ... {len(known)} in all)", s)
    drop = {known[s] for s in skip} | ({head} if head else set()) | set(depthwise)
    return [n for n in names if n not in drop]
