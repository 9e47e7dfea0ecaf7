"""Canonical state <-> paddle state.

Canonical names and layouts are torchvision's. Where paddle.vision uses the same module names
(ResNet, MobileNetV2, the tiny pair) the mapping is by name: running_mean -> _mean,
running_var -> _variance, Linear weights transposed. Otherwise (MobileNetV3) tensors are matched in
registration order with every shape checked; the logit parity check after loading is the final proof.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn

_RENAME = (("running_mean", "_mean"), ("running_var", "_variance"))


def _to_paddle_name(name: str) -> str:
    for a, b in _RENAME:
        if name.endswith("." + a):
            return name[: -len(a)] + b
    return name


def _linear_weights(model: nn.Layer) -> set[str]:
    return {f"{n}.weight" if n else "weight" for n, m in model.named_sublayers(include_self=True)
            if isinstance(m, nn.Linear)}


def _mapping(model: nn.Layer, canonical: list[str]) -> dict[str, str]:
    """canonical name -> paddle name."""
    own = list(model.state_dict().keys())
    by_name = {c: _to_paddle_name(c) for c in canonical}
    if set(by_name.values()) == set(own):
        return by_name
    if len(own) != len(canonical):
        raise ValueError(f"canonical state has {len(canonical)} tensors, the paddle model {len(own)}")
    return dict(zip(canonical, own))


def _canonical_names(model: nn.Layer) -> list[str]:
    """Canonical names for this paddle model: by rename where possible, else paddle's own order."""
    out = []
    for k in model.state_dict().keys():
        for a, b in _RENAME:
            if k.endswith("." + b):
                k = k[: -len(b)] + a
        out.append(k)
    return out


def state_to_numpy(model: nn.Layer) -> dict[str, np.ndarray]:
    """Paddle state in canonical names (only exact for architectures whose module names match torchvision)."""
    linear = _linear_weights(model)
    out = {}
    for (k, v), canon in zip(model.state_dict().items(), _canonical_names(model)):
        a = v.numpy().copy()
        out[canon] = a.T.copy() if k in linear else a
    return out


def load_numpy_state(model: nn.Layer, state: dict[str, np.ndarray]) -> None:
    mapping = _mapping(model, list(state.keys()))
    own = model.state_dict()
    linear = _linear_weights(model)
    new = {}
    for canon, pname in mapping.items():
        a = state[canon]
        if pname in linear:
            a = a.T
        if tuple(own[pname].shape) != tuple(a.shape):
            raise ValueError(f"canonical {canon} {state[canon].shape} does not fit paddle {pname} "
                             f"{tuple(own[pname].shape)}")
        new[pname] = np.ascontiguousarray(a)
    model.set_state_dict(new)
    for pname, a in new.items():  # set_state_dict only warns on problems: verify every tensor landed
        if not np.array_equal(own[pname].numpy(), a):
            raise ValueError(f"paddle tensor {pname} did not load")
