"""Canonical (framework-neutral) state: torchvision names and layouts, numpy arrays, no counters."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """Canonical state; a pruned weight (weight_orig + weight_mask) is given as its effective value."""
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked") or k.endswith("_mask"):
            continue
        if k.endswith("_orig"):
            k, v = k[: -len("_orig")], v * sd[k[: -len("_orig")] + "_mask"]
        out[k] = v.detach().cpu().numpy().copy()
    return out


def load_numpy_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"canonical state does not fit the torch model: missing {missing[:5]}, extra {extra[:5]}")
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise ValueError(f"canonical state: {k} has shape {state[k].shape}, the torch model expects {tuple(v.shape)}")
    device = next(model.parameters()).device
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)).to(device) for k, a in state.items()}
    model.load_state_dict(tensors, strict=False)
