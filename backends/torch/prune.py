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


FILTER_LOWERING = "torch-pruning (DepGraph) MagnitudePruner: coupled channels removed physically"


def lowering(method: str = "magnitude", criterion: str = "l1") -> str:
    """How this backend realises a prune stage (recorded in results)."""
    return FILTER_LOWERING if method == "filter" else LOWERING


def prune_filters(model: nn.Module, criterion: str, ratio: float | None, layer_ratios: dict[str, float],
                  skip: list[str], example_shape: tuple[int, ...]) -> dict[str, list[int]]:
    """Remove output channels for real with torch-pruning; return the removed channel indices per conv."""
    import torch_pruning as tp  # only needed for structured pruning
    # group_reduction="first": rank channels by the pruned conv's own filters, as PaddleSlim's filter pruners do
    # (torch-pruning's default averages normalized scores over every coupled layer and picks other filters).
    importance = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None),
                  "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2, group_reduction="first", normalizer=None),
                  "fpgm": lambda: tp.importance.FPGMImportance(p=2, group_reduction="first", normalizer=None),
                  }[criterion]()
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    pruner = tp.pruner.MagnitudePruner(
        model, torch.zeros(example_shape, device=device), importance=importance, pruning_ratio=ratio or 0.0,
        pruning_ratio_dict={modules[n]: r for n, r in layer_ratios.items()},
        ignored_layers=[modules[n] for n in skip])
    removed: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if isinstance(dep.target.module, nn.Conv2d) and dep.handler.__name__ == "prune_out_channels":
                name = dep.target.name.split(" (")[0]
                removed[name] = sorted(int(i) for i in idxs)
        group.prune()
    return removed


class Pruning:
    """backends.base.Pruning on torch: masks through torch.nn.utils.prune, filters removed by torch-pruning (no backend state needed)."""
    prunable = staticmethod(prunable)
    head_name = staticmethod(head_name)
    set_masks = staticmethod(set_masks)
    get_masks = staticmethod(get_masks)
    pruning_lowering = staticmethod(lowering)
    prune_filters = staticmethod(prune_filters)
