"""Canonical state <-> paddle state.

Canonical names and layouts are torchvision's. Where paddle.vision uses the same module names
(ResNet, MobileNetV2, the tiny pair) the mapping is by name: running_mean -> _mean,
running_var -> _variance, Linear weights transposed. Otherwise (MobileNetV3) tensors are matched in
registration order with every shape checked; the logit parity check after loading is the final proof.
This module is the Weights concern of backends/base.py (canonical states, a user's checkpoint, the run's own
checkpoints).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
from paddle import nn

from backends.paddle.prune import get_masks, set_masks
from common.config import ModelConfig
from common.weights import WeightsError

# Architectures whose paddle.vision state names are torchvision's after the BN renames (module docstring).
BY_NAME_ARCHS = ("resnet", "mobilenet_v2", "tiny_cnn")

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


def read_checkpoint(path: Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """A Paddle `.pdparams` (paddle.vision naming) as canonical numpy: loaded into a paddle.vision model of the
    architecture (class count from the file's head), every name and shape checked first, then read back
    canonically (BN statistics renamed, Linear weights transposed)."""
    if not any(cfg.arch.startswith(a) for a in BY_NAME_ARCHS):
        raise WeightsError(f"{path}: .pdparams files are read for {', '.join(BY_NAME_ARCHS)} (whose paddle.vision "
                           f"names match torchvision's); for {cfg.arch} give a .pth or a canonical .npz")
    try:
        data = paddle.load(str(path))
    except Exception as e:  # any unreadable file: one line naming it, the cause kept
        raise WeightsError(f"{path}: not a Paddle checkpoint paddle.load can read "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    if not isinstance(data, dict) or not data:
        raise WeightsError(f"{path}: expected a state dict (a mapping of parameter names to arrays), got "
                           f"{type(data).__name__}")
    arrays = {k: (v.numpy() if isinstance(v, paddle.Tensor) else np.asarray(v)) for k, v in data.items()
              if not k.startswith("StructuredToParameterName")}
    matrices = [a for a in arrays.values() if a.ndim == 2]
    classes = int(matrices[-1].shape[1]) if matrices else 10  # paddle Linear weights are (in, out)
    from backends.paddle.models import build_model
    model = build_model(cfg, classes)
    own = model.state_dict()
    for k, v in own.items():
        if k not in arrays:
            raise WeightsError(f"{path}: lacks tensor '{k}' of paddle.vision's {cfg.arch}; is it a {cfg.arch} "
                               "checkpoint?")
        if tuple(arrays[k].shape) != tuple(v.shape):
            raise WeightsError(f"{path}: tensor '{k}' has shape {list(arrays[k].shape)}, paddle.vision's {cfg.arch} "
                               f"expects {list(v.shape)}")
    extra = [k for k in arrays if k not in own]
    if extra:
        raise WeightsError(f"{path}: has tensor '{extra[0]}' that paddle.vision's {cfg.arch} does not; is it a "
                           f"{cfg.arch} checkpoint?")
    model.set_state_dict({k: arrays[k] for k in own})
    return state_to_numpy(model)


def write_user_checkpoint(model: paddle.nn.Layer, path: Path) -> None:
    """`paddle.save(model.state_dict())`, what paddle.vision users load with `set_state_dict`; written to a
    temporary name first so a crash never leaves half a file under the real one."""
    tmp = path.with_name(f".{path.name}.tmp")
    paddle.save(model.state_dict(), str(tmp))
    tmp.replace(path)


def save_checkpoint(model: nn.Layer, path: Path) -> None:
    """State plus pruning masks: loads into a freshly built model."""
    tmp = path.with_name(path.name + ".tmp")
    paddle.save({"state": model.state_dict(), "masks": get_masks(model)}, str(tmp))
    tmp.replace(path)


def load_checkpoint(model: nn.Layer, path: Path) -> None:
    data = paddle.load(str(path))
    state = data["state"]
    model.set_state_dict(state)
    if data["masks"]:
        set_masks(model, {k: np.asarray(v) for k, v in data["masks"].items()})
    own = model.state_dict()
    for k, v in state.items():  # set_state_dict only warns on a mismatch: check it loaded
        if k not in own or not np.array_equal(own[k].numpy(), np.asarray(v)):
            raise ValueError(f"checkpoint {path}: tensor {k} did not load into the model")


class Weights:
    """backends.base.Weights on Paddle: the functions above, which need no backend state."""
    state_to_numpy = staticmethod(state_to_numpy)
    load_numpy_state = staticmethod(load_numpy_state)
    read_checkpoint = staticmethod(read_checkpoint)
    write_user_checkpoint = staticmethod(write_user_checkpoint)
    save_checkpoint = staticmethod(save_checkpoint)
    load_checkpoint = staticmethod(load_checkpoint)

    def checkpoint_suffix(self) -> str:
        return ".pdparams"
