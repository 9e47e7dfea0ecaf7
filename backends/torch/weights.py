"""Canonical (framework-neutral) state: torchvision names and layouts, numpy arrays, no counters; the
Weights concern of backends/base.py (canonical states, a user's checkpoint, the run's own checkpoints)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from backends.torch.prune import get_masks, set_masks
from common.config import ModelConfig
from common.weights import WeightsError


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
            raise ValueError(f"canonical state: {k} has shape {state[k].shape}, the torch model expects "
                             f"{tuple(v.shape)}")
    device = next(model.parameters()).device
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)).to(device) for k, a in state.items()}
    model.load_state_dict(tensors, strict=False)


def read_checkpoint(path: Path, cfg: ModelConfig | None = None) -> dict[str, np.ndarray]:
    """A PyTorch state_dict file (torchvision naming: already canonical, so the slot's `cfg` is not needed) as
    numpy arrays. torch.load runs with
    weights_only=True: a checkpoint is data, never code. Accepted: the state_dict itself, or a dict holding it
    under `state_dict` / `model` / `model_state_dict`; a DataParallel `module.` prefix is dropped."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: one line naming it, the cause kept
        raise WeightsError(f"{path}: not a PyTorch checkpoint torch.load can read with weights_only=True "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not data:
        raise WeightsError(f"{path}: expected a state_dict (a mapping of tensor names to tensors), got "
                           f"{type(data).__name__}")
    out = {}
    for k, v in data.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: entry '{k}' is a {type(v).__name__}, not a tensor")
        name = k[len("module."):] if k.startswith("module.") else k
        if not name.endswith("num_batches_tracked"):
            out[name] = v.detach().cpu().numpy().copy()
    return out


def write_user_checkpoint(model: nn.Module, path: Path) -> None:
    """`torch.save(model.state_dict())`, what torchvision users load with `load_state_dict`; written to a
    temporary name first so a crash never leaves half a file under the real one."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def save_checkpoint(model: nn.Module, path: Path) -> None:
    """Canonical (effective) state plus pruning masks: loads into a freshly built model."""
    data = {"state": {k: torch.from_numpy(v) for k, v in state_to_numpy(model).items()},
            "masks": {k: torch.from_numpy(v) for k, v in get_masks(model).items()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    tmp.replace(path)


def load_checkpoint(model: nn.Module, path: Path) -> None:
    data = torch.load(path, map_location="cpu", weights_only=True)
    load_numpy_state(model, {k: v.numpy() for k, v in data["state"].items()})
    if data["masks"]:
        set_masks(model, {k: v.numpy() for k, v in data["masks"].items()})


class Weights:
    """backends.base.Weights on torch: the functions above, which need no backend state."""
    state_to_numpy = staticmethod(state_to_numpy)
    load_numpy_state = staticmethod(load_numpy_state)
    read_checkpoint = staticmethod(read_checkpoint)
    write_user_checkpoint = staticmethod(write_user_checkpoint)
    save_checkpoint = staticmethod(save_checkpoint)
    load_checkpoint = staticmethod(load_checkpoint)

    def checkpoint_suffix(self) -> str:
        return ".pt"
