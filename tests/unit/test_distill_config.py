"""The distill stage's loss configuration in common/: the two-term form written out, DKD's warm-up, labels, the
round trip through `slimbench show`, and adapters initialised from the seed alone."""
from __future__ import annotations

import numpy as np
import pytest

from common.recipe.loader import load_recipe, recipe_to_dict, validate
from common.stages.distill import (AttentionTerm, DKDTerm, DistillStage, FeatureTerm, KDTerm, LabelTerm, LayerPair,
                                   _adapter_weight, losses_label, term_scales)


def test_the_temperature_alpha_form_is_kd_plus_label_cross_entropy():
    assert DistillStage("d", "t", "s").terms() == (KDTerm(weight=0.9, temperature=4.0), LabelTerm(weight=0.1))
    assert DistillStage("d", "t", "s", temperature=2.0, alpha=0.5).terms() == (KDTerm(0.5, 2.0), LabelTerm(0.5))
    own = (LabelTerm(1.0), DKDTerm())
    assert DistillStage("d", "t", "s", losses=own).terms() == own


def test_dkd_ramps_in_linearly_and_other_terms_keep_their_weight():
    terms = (LabelTerm(1.0), DKDTerm(weight=2.0, warmup_epochs=4))
    assert [term_scales(terms, e) for e in range(6)] == [[1.0, 0.5], [1.0, 1.0], [1.0, 1.5], [1.0, 2.0],
                                                         [1.0, 2.0], [1.0, 2.0]]
    assert term_scales((DKDTerm(),), 0) == [1.0]  # no warm-up


def test_labels_name_every_weighted_term():
    terms = (KDTerm(0.9, 4), LabelTerm(0.1), LabelTerm(0.0),
             FeatureTerm(layers=(LayerPair("layer2", "features.6"),), weight=100),
             AttentionTerm(layers=(LayerPair("layer1", "features.3"), LayerPair("layer2", "features.6"))))
    assert losses_label(terms) == ("0.9 kd(T=4) + 0.1 ce + 100 feature(layer2→features.6, mse, adapter) + "
                                   "1000 attention(layer1→features.3, layer2→features.6, p=2)")


@pytest.mark.parametrize("profile", ["default", "smoke", "paper"])
def test_show_output_validates_to_the_same_recipe(profile):
    recipe = load_recipe("kd_methods_resnet50_mobilenet", profile)
    shown = {k: v for k, v in recipe_to_dict(recipe).items() if k not in ("profile", "source")}
    again = validate(shown, recipe.source, profile)
    assert again.stages == recipe.stages


def test_adapters_depend_on_the_seed_stage_term_and_pair_only():
    a = _adapter_weight(0, "fitnet", 1, 0, (512, 32))
    assert a.shape == (512, 32, 1, 1) and a.dtype == np.float32
    assert np.abs(a).max() <= 1 / np.sqrt(32)
    assert np.array_equal(a, _adapter_weight(0, "fitnet", 1, 0, (512, 32)))
    for other in ((1, "fitnet", 1, 0), (0, "kd_feature", 1, 0), (0, "fitnet", 2, 0), (0, "fitnet", 1, 1)):
        assert not np.array_equal(a, _adapter_weight(*other, (512, 32)))
