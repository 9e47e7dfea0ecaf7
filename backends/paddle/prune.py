"""Unstructured pruning for paddle with masks of our own, following common/pruning's schedule exactly.

PaddleSlim's UnstructuredPruner/GMPUnstructuredPruner pick their own thresholds and ramp, and fail
on tensors over 1M elements (docs/ARCHITECTURE.md, section 6), so they cannot follow the shared AGP curve. Here a mask
zeroes the weight, a gradient hook zeroes its gradient (as torch's reparametrization does), and
the trainer re-applies the mask after every optimizer step.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

LOWERING = "slimbench masks (gradient hook + re-applied after each optimizer step); PaddleSlim's pruners cannot follow the shared schedule"

_ATTR = "_slimbench_masks"


def _layers(model: nn.Layer) -> dict[str, nn.Layer]:
    return {f"{n}.weight": m for n, m in model.named_sublayers() if isinstance(m, (nn.Conv2D, nn.Linear))}


def prunable(model: nn.Layer) -> dict[str, np.ndarray]:
    """Conv and Linear weights in canonical layout (Linear transposed to [out, in]), in module order."""
    out = {}
    for name, m in _layers(model).items():
        w = m.weight.numpy()
        out[name] = w.T.copy() if isinstance(m, nn.Linear) else w
    return out


def head_name(model: nn.Layer) -> str:
    linear = [n for n, m in _layers(model).items() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else ""


def set_masks(model: nn.Layer, masks: dict[str, np.ndarray]) -> None:
    layers = _layers(model)
    store: dict[str, paddle.Tensor] = getattr(model, _ATTR, None) or {}
    for name, mask in masks.items():
        m = layers[name]
        native = mask.T if isinstance(m, nn.Linear) else mask
        t = paddle.to_tensor(np.ascontiguousarray(native, dtype=np.float32))
        if name not in store:
            m.weight.register_hook(lambda g, _n=name: g * getattr(model, _ATTR)[_n])
        store[name] = t
    object.__setattr__(model, _ATTR, store)
    apply_masks(model)


def apply_masks(model: nn.Layer) -> None:
    store = getattr(model, _ATTR, None)
    if not store:
        return
    layers = _layers(model)
    with paddle.no_grad():
        for name, t in store.items():
            w = layers[name].weight
            w.set_value(w * t)


def get_masks(model: nn.Layer) -> dict[str, np.ndarray]:
    store = getattr(model, _ATTR, None) or {}
    layers = _layers(model)
    return {n: (t.numpy().T if isinstance(layers[n], nn.Linear) else t.numpy()).astype(bool) for n, t in store.items()}


_FILTER_PRUNERS = {"l1": "L1NormFilterPruner", "l2": "L2NormFilterPruner", "fpgm": "FPGMFilterPruner"}


def lowering(method: str = "magnitude", criterion: str = "l1") -> str:
    """How this backend realises a prune stage (recorded in results)."""
    if method == "filter":
        return f"PaddleSlim {_FILTER_PRUNERS[criterion]}.prune_vars (axis 0): coupled channels removed physically"
    return LOWERING


def prune_filters(model: nn.Layer, criterion: str, ratio: float | None, layer_ratios: dict[str, float],
                  skip: list[str], example_shape: tuple[int, ...]) -> dict[str, list[int]]:
    """Remove output channels for real with PaddleSlim's filter pruners; return removed indices per conv."""
    from paddleslim import dygraph
    cls = getattr(dygraph, _FILTER_PRUNERS[criterion])
    by_layer = {n: m for n, m in model.named_sublayers() if isinstance(m, nn.Conv2D)}
    internal = {m.weight.name: n for n, m in by_layer.items()}
    ratios = {m.weight.name: layer_ratios.get(n, ratio or 0.0) for n, m in by_layer.items()
              if n not in skip and layer_ratios.get(n, ratio or 0.0) > 0}
    was_training = model.training
    model.eval()
    plan = cls(model, list(example_shape)).prune_vars(ratios, axis=0)
    if was_training:
        model.train()
    removed: dict[str, list[int]] = {}
    for var, masks in plan._masks.items():  # PaddleSlim keeps no public accessor for the masks it applied
        if var in internal:
            for mask in masks:
                if mask.dims == 0:
                    removed[internal[var]] = [int(i) for i in np.flatnonzero(np.asarray(mask.mask) == 0)]
    return removed


class Pruning:
    """backends.base.Pruning on Paddle: slimbench's masks, filters removed by PaddleSlim's pruners (no backend state needed)."""
    prunable = staticmethod(prunable)
    head_name = staticmethod(head_name)
    set_masks = staticmethod(set_masks)
    get_masks = staticmethod(get_masks)
    pruning_lowering = staticmethod(lowering)
    prune_filters = staticmethod(prune_filters)
