"""Unstructured pruning for paddle with masks of our own, following common/pruning's schedule exactly.

PaddleSlim's UnstructuredPruner/GMPUnstructuredPruner pick their own thresholds and ramp, and fail
on tensors over 1M elements (DESIGN.md 5), so they cannot follow the shared AGP curve. Here a mask
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
