from __future__ import annotations

import numpy as np
import pytest
import yaml

from common.errors import RecipeError
from common.pruning import (agp_sparsity, magnitude_masks, name_artifact_layers, prune_steps, pruned_layer_sparsity,
                            select_layers, sparsity_of)
from common.recipe.loader import builtin_recipes, resolve


def test_agp_cubic_ramp_hand_computed():
    assert agp_sparsity(0, 0, 100, 0.0, 0.8) == 0.0
    assert agp_sparsity(50, 0, 100, 0.0, 0.8) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)  # 0.7
    assert agp_sparsity(100, 0, 100, 0.0, 0.8) == 0.8
    assert agp_sparsity(150, 0, 100, 0.2, 0.8) == 0.8
    assert agp_sparsity(25, 0, 100, 0.2, 0.8) == pytest.approx(0.8 - 0.6 * 0.75 ** 3)


def test_prune_steps():
    steps, end = prune_steps(16, 2, 0.75)
    assert end == 12 and steps == [0, 2, 4, 6, 8, 10, 12]
    assert prune_steps(5, 10, 1.0) == ([0], 5)


def test_local_masks_prune_each_layer_to_the_ratio():
    rng = np.random.default_rng(0)
    w = {"a": rng.normal(size=(8, 4, 3, 3)), "b": rng.normal(size=(10, 20)) * 100}
    m = magnitude_masks(w, 0.5, "local")
    assert all(abs(1 - m[k].mean() - 0.5) < 1e-9 for k in w)
    # the kept entries are the largest in magnitude
    for k in w:
        assert np.abs(w[k][m[k]]).min() >= np.abs(w[k][~m[k]]).max()


def test_global_masks_use_one_threshold():
    w = {"small": np.full((10,), 0.1), "large": np.arange(1, 11, dtype=float)}
    m = magnitude_masks(w, 0.5, "global")
    assert not m["small"].any() and m["large"].all()  # a global threshold empties the small-valued layer
    ties = magnitude_masks({"t": np.ones(10)}, 0.3, "global")["t"]
    assert ties.tolist() == [False] * 3 + [True] * 7  # ties broken by position: the same on every backend
    with pytest.raises(ValueError):
        magnitude_masks(w, 1.0, "global")


def test_sparsity_and_artifact_layer_naming():
    arrays = {"conv2d_0.w_0": np.array([[0.0, 1.0], [0.0, 2.0]]), "linear_0.w_0": np.ones((2, 3))}
    s = sparsity_of(arrays)
    assert s["overall"] == pytest.approx(2 / 10) and s["layers"]["conv2d_0.w_0"]["zeros"] == 2
    canon = {"features.0.weight": np.zeros((2, 2)), "classifier.weight": np.zeros((3, 2))}
    named = name_artifact_layers(s["layers"], canon)
    assert list(named) == ["features.0.weight", "classifier.weight"]
    assert named["features.0.weight"]["artifact_name"] == "conv2d_0.w_0"
    assert pruned_layer_sparsity(named, ["features.0.weight"]) == 0.5
    assert name_artifact_layers(s["layers"], {"x.weight": np.zeros(4)}) == {}


def test_unknown_skip_layer_is_a_recipe_error_with_the_key_path():
    with pytest.raises(RecipeError) as e:
        select_layers(["features.0.weight", "classifier.weight"], ("featurs.0",), "classifier.weight", "r.yaml",
                      "stages[1].prune.skip_layers")
    assert str(e.value).startswith('r.yaml: stages[1].prune.skip_layers: expected layer names among the prunable '
                                   'layers (features.0, classifier')
    assert str(e.value).endswith('got "featurs.0"')
    assert select_layers(["a.weight", "b.weight", "h.weight"], ("a",), "h.weight", "r", "p") == ["b.weight"]


def _prune_recipe() -> dict:
    return yaml.safe_load(builtin_recipes()["prune_agp_mobilenet"].read_text())


@pytest.mark.parametrize("key,value,expected", [
    ("sparsity", 1.0, "stages[1].prune.sparsity: expected a number >= 0 and < 1, got 1.0"),
    ("sparsity", -0.1, "stages[1].prune.sparsity: expected a number >= 0 and < 1, got -0.1"),
    ("scope", "everywhere", "stages[1].prune.scope: expected one of 'local', 'global', got \"everywhere\""),
    ("method", "l1", "stages[1].prune.method: expected one of 'magnitude', 'filter', got \"l1\""),
    ("criterion", "l3", "stages[1].prune.criterion: expected one of 'l1', 'l2', 'fpgm', got \"l3\""),
    ("initial_sparsity", 0.9, "stages[1].prune.initial_sparsity: expected a value <= sparsity (0.8), got 0.9"),
])
def test_bad_prune_settings_are_one_line_errors(key, value, expected):
    data = _prune_recipe()
    data["stages"][1]["prune"][key] = value
    with pytest.raises(RecipeError) as e:
        resolve(data, "prune_agp_mobilenet.yaml")
    assert str(e.value) == f"prune_agp_mobilenet.yaml: {expected}"


def test_depthwise_layers_are_recognised_by_shape_and_can_be_skipped():
    from common.pruning import is_depthwise
    assert is_depthwise((32, 1, 3, 3)) and not is_depthwise((32, 16, 3, 3)) and not is_depthwise((10, 1))
    layers = select_layers(["a.weight", "dw.weight", "h.weight"], (), "h.weight", "r", "p", ("dw.weight",))
    assert layers == ["a.weight"]


@pytest.mark.parametrize("patch,expected", [
    ({"method": "filter", "schedule": "one_shot"},
     "stages[1].prune.ratio: expected a number in [0, 1) (or layer_ratios) for method 'filter', got None"),
    ({"method": "filter", "ratio": 0.3}, "stages[1].prune.schedule: expected 'one_shot' for method 'filter' "
                                         "(fine-tune with a train stage), got \"agp\""),
    ({"method": "filter", "ratio": 1.0, "schedule": "one_shot"},
     "stages[1].prune.ratio: expected a number >= 0 and < 1, got 1.0"),
    ({"method": "filter", "schedule": "one_shot", "layer_ratios": {"features.3": 1.5}},
     "stages[1].prune.layer_ratios.features.3: expected a number >= 0 and < 1, got 1.5"),
])
def test_bad_filter_settings_are_one_line_errors(patch, expected):
    data = _prune_recipe()
    data["stages"][1]["prune"].update(patch)
    with pytest.raises(RecipeError) as e:
        resolve(data, "prune_agp_mobilenet.yaml")
    assert str(e.value) == f"prune_agp_mobilenet.yaml: {expected}"
