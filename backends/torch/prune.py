"""Unstructured pruning with torch.nn.utils.prune: masks from common/pruning applied as reparametrizations.

The first mask registers `weight_orig` (the very Parameter the optimizer already holds) and a
`weight_mask` buffer; later masks (AGP) are copied into that buffer in place, so training continues
on the same parameters. Gradients of pruned entries are zero through the reparametrization.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

LOWERING = "torch.nn.utils.prune.custom_from_mask (masks from common/pruning), prune.remove before export"


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def effective_weight(module: nn.Module) -> torch.Tensor:
    if hasattr(module, "weight_mask"):
        return module.weight_orig * module.weight_mask
    return module.weight


def prunable(model: nn.Module) -> dict[str, np.ndarray]:
    """Conv and Linear weights (with masks applied) under canonical names, in module order."""
    with torch.no_grad():
        return {n: effective_weight(m).detach().cpu().numpy() for n, m in _layers(model).items()}


def head_name(model: nn.Module) -> str:
    """The classifier head: the last Linear layer's weight."""
    linear = [n for n, m in _layers(model).items() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else ""


def set_masks(model: nn.Module, masks: dict[str, np.ndarray]) -> None:
    layers = _layers(model)
    for name, mask in masks.items():
        module = layers[name]
        t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(module.weight.device)
        if hasattr(module, "weight_mask"):
            with torch.no_grad():
                module.weight_mask.copy_(t)
                module.weight = module.weight_orig * module.weight_mask
        else:
            prune.custom_from_mask(module, "weight", t)


def get_masks(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: m.weight_mask.detach().cpu().numpy().astype(bool) for n, m in _layers(model).items()
            if hasattr(m, "weight_mask")}


def without_reparametrization(model: nn.Module) -> nn.Module:
    """A copy with prune.remove applied: plain dense weights with zeros, what gets exported."""
    clean = copy.deepcopy(model)
    for m in _layers(clean).values():
        if hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return clean
