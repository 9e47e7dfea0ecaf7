"""Starting a model slot from a checkpoint: the file's tensors fitted onto the slot's freshly built canonical
state, once, in the init worker; every backend then loads the same canonical arrays (and is parity-checked).

The file is read by the framework whose format it is (backends/<name>/weights.read_checkpoint: torch.load with
weights_only, paddle.load), in canonical naming; this module decides what fits. A classifier head whose class
count differs keeps the slot's own initialisation (drawn from the run's seed, so identical on every backend);
any other missing, extra or mis-shaped tensor is a one-line error naming the file and the first such tensor.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from common.config import WEIGHT_FORMATS
from common.errors import SlimbenchError


class WeightsError(SlimbenchError):
    """A checkpoint that does not fit the model slot it is given to."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def reader_of(path: Path) -> str | None:
    """The framework that reads this checkpoint format (None: numpy reads it)."""
    return WEIGHT_FORMATS[path.suffix]


def read_canonical_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable .npz of arrays ({e})") from None


def fit_checkpoint(own: dict[str, np.ndarray], loaded: dict[str, np.ndarray], head: list[str], path: Path,
                   arch: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The slot's state with every tensor taken from the checkpoint; head tensors of another class count keep
    their own values. Raises WeightsError on the first tensor that does not fit."""
    missing = [k for k in own if k not in loaded]
    if missing:
        raise WeightsError(f"{path}: lacks tensor '{missing[0]}' of {arch}" + _more(missing)
                           + f"; is it a {arch} checkpoint?")
    extra = [k for k in loaded if k not in own]
    if extra:
        raise WeightsError(f"{path}: has tensor '{extra[0]}' that {arch} does not" + _more(extra)
                           + f"; is it a {arch} checkpoint?")
    out, kept = {}, []
    for k, mine in own.items():
        theirs = loaded[k]
        if tuple(theirs.shape) == tuple(mine.shape):
            out[k] = np.ascontiguousarray(theirs, dtype=mine.dtype)
        elif k in head and theirs.ndim == mine.ndim:
            out[k], _ = mine, kept.append(k)
        else:
            raise WeightsError(f"{path}: tensor '{k}' has shape {list(theirs.shape)}, {arch} expects "
                               f"{list(mine.shape)}")
    head_weight = next((k for k in head if k.endswith("weight")), None)
    info: dict[str, Any] = {"tensors": len(out), "head_reinitialised": bool(kept)}
    if kept and head_weight:
        info["classes_in_file"] = int(loaded[head_weight].shape[0])
        info["classes_here"] = int(own[head_weight].shape[0])
    return out, info


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""
