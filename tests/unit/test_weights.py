"""Fitting a checkpoint onto a model slot (common/weights.py): what is taken, what is kept, what is refused."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.weights import WeightsError, fit_checkpoint, read_canonical_npz

OWN = {"conv1.weight": np.zeros((4, 3, 3, 3), np.float32), "bn1.running_mean": np.zeros(4, np.float32),
       "fc.weight": np.full((10, 4), 7, np.float32), "fc.bias": np.full(10, 7, np.float32)}
HEAD = ["fc.weight", "fc.bias"]
FILE = Path("net.pth")


def loaded(**changes) -> dict[str, np.ndarray]:
    out = {k: np.ones_like(v) for k, v in OWN.items()}
    out.update(changes)
    return {k: v for k, v in out.items() if v is not None}


def test_every_tensor_is_taken_from_the_checkpoint():
    state, info = fit_checkpoint(OWN, loaded(), HEAD, FILE, "resnet18")
    assert all(np.array_equal(state[k], np.ones_like(OWN[k])) for k in OWN)
    assert info == {"tensors": 4, "head_reinitialised": False}


def test_a_head_of_another_class_count_keeps_the_slots_own_initialisation():
    state, info = fit_checkpoint(OWN, loaded(**{"fc.weight": np.ones((1000, 4)), "fc.bias": np.ones(1000)}), HEAD,
                                 FILE, "resnet18")
    assert np.array_equal(state["fc.weight"], OWN["fc.weight"]) and np.array_equal(state["conv1.weight"],
                                                                                  np.ones((4, 3, 3, 3)))
    assert info["head_reinitialised"] and (info["classes_in_file"], info["classes_here"]) == (1000, 10)


@pytest.mark.parametrize("changes,message", [
    ({"bn1.running_mean": None}, "net.pth: lacks tensor 'bn1.running_mean' of resnet18; is it a resnet18 checkpoint?"),
    ({"layer9.weight": np.ones(3)}, "net.pth: has tensor 'layer9.weight' that resnet18 does not"),
    ({"conv1.weight": np.ones((4, 3, 7, 7))}, "net.pth: tensor 'conv1.weight' has shape [4, 3, 7, 7], resnet18 "
                                              "expects [4, 3, 3, 3]"),
    ({"fc.weight": np.ones((10, 4, 1))}, "tensor 'fc.weight' has shape [10, 4, 1]"),  # a head of another kind
])
def test_what_does_not_fit_is_one_line_naming_the_file_and_tensor(changes, message):
    with pytest.raises(WeightsError) as e:
        fit_checkpoint(OWN, loaded(**changes), HEAD, FILE, "resnet18")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_npz_that_holds_objects_is_refused(tmp_path: Path):
    bad = tmp_path / "w.npz"
    np.savez(bad, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(WeightsError, match="not a readable .npz of arrays"):
        read_canonical_npz(bad)
    (tmp_path / "t.npz").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="t.npz: not a readable .npz"):
        read_canonical_npz(tmp_path / "t.npz")
