from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.errors import RecipeError, UsageError
from common.recipe.loader import builtin_recipes, load_recipe, recipe_to_dict, resolve

KD = builtin_recipes()["kd_resnet50_mobilenet"]


def raw() -> dict:
    return yaml.safe_load(KD.read_text())


def error_of(data: dict, **kw) -> str:
    with pytest.raises(RecipeError) as e:
        resolve(data, "kd_resnet50_mobilenet.yaml", **kw)
    return str(e.value)


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_builtin_recipes_validate_in_every_profile(name, profile):
    recipe = load_recipe(name, profile)
    assert recipe.profile == profile and recipe.stages


def test_bad_value_names_file_key_path_and_what_is_accepted():
    data = raw()
    data["stages"][2]["distill"]["temperature"] = "high"
    assert error_of(data) == ('kd_resnet50_mobilenet.yaml: stages[2].distill.temperature: '
                              'expected a number > 0, got "high"')


def test_unknown_keys_are_errors_at_every_level():
    data = raw()
    data["stages"][0]["train"]["optimiser"] = {"lr": 1}
    msg = error_of(data)
    assert msg.startswith("kd_resnet50_mobilenet.yaml: stages[0].train.optimiser: expected one of the keys [")
    assert "optimizer" in msg
    data = raw()
    data["colour"] = 1
    assert "colour: expected one of the keys" in error_of(data)


def test_unknown_model_slot_lists_the_known_ones():
    data = raw()
    data["stages"][2]["distill"]["teacher"] = "techer"
    msg = error_of(data)
    assert "stages[2].distill.teacher" in msg and 'got "techer"' in msg and "student_baseline" in msg


def test_unknown_stage_type_and_arch_and_range():
    data = raw()
    data["stages"].append({"sparsify": {"name": "x"}})
    assert "stages[5].sparsify: expected a stage type among" in error_of(data)
    data = raw()
    data["models"]["teacher"]["arch"] = "resnet51"
    assert "models.teacher.arch: expected one of" in error_of(data)
    data = raw()
    data["stages"][2]["distill"]["alpha"] = 1.5
    assert error_of(data).endswith("stages[2].distill.alpha: expected a number >= 0 and <= 1, got 1.5")


def test_profile_overrides_stages_by_name_and_unknown_profile_is_an_error():
    smoke = load_recipe("kd_resnet50_mobilenet", "smoke")
    assert smoke.models["teacher"].arch == "tiny_cnn"
    assert smoke.stage("train_teacher").config.epochs == 2
    assert smoke.stage("train_teacher").config.optimizer.lr == 0.02
    assert smoke.stage("train_teacher").config.optimizer.name == "adamw"  # untouched keys kept
    assert "expected a profile among" in error_of(raw(), profile="fast")


def test_set_overrides_by_stage_type_and_name():
    r = load_recipe("kd_resnet50_mobilenet", "default", ["stages.distill.temperature=2",
                                                         "stages.train_student.epochs=5", "data.batch_size=32"])
    assert r.stage("distill").config.temperature == 2.0
    assert r.stage("train_student").config.epochs == 5
    assert r.data.batch_size == 32
    with pytest.raises(RecipeError, match="several 'train' stages"):
        load_recipe("kd_resnet50_mobilenet", "default", ["stages.train.epochs=5"])
    with pytest.raises(RecipeError, match=r"stages\[2\].distill.temperature: expected a number > 0"):
        load_recipe("kd_resnet50_mobilenet", "default", ["stages.distill.temperature=-1"])
    with pytest.raises(UsageError):
        load_recipe("kd_resnet50_mobilenet", "default", ["stages.distill.temperature"])


def test_seeds_override_and_digest_changes_with_content():
    a = load_recipe("kd_resnet50_mobilenet", "default", seeds=(0, 1))
    b = load_recipe("kd_resnet50_mobilenet", "default", ["stages.distill.alpha=0.5"], seeds=(0, 1))
    assert a.seeds == (0, 1)
    assert a.digest() != b.digest()
    assert recipe_to_dict(a)["stages"][2]["distill"]["temperature"] == 4.0


def test_yaml_syntax_error_and_missing_file(tmp_path: Path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"broken.yaml: line \d+: expected valid YAML"):
        load_recipe(str(bad))
    with pytest.raises(UsageError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_dataset_on_disk_needs_a_path():
    data = raw()
    data["data"] = {"dataset": "cifar10"}
    assert error_of(data) == ("kd_resnet50_mobilenet.yaml: data.path: expected a directory path for dataset "
                              "'cifar10', got None")


def test_scientific_notation_is_a_number_in_files_and_overrides():
    r = load_recipe("kd_resnet50_mobilenet", "default", ["parity.rtol=1e-12", "stages.distill.optimizer.lr=2e-3"])
    assert r.parity.rtol == 1e-12 and r.stage("distill").config.optimizer.lr == 0.002
    data = raw()
    data["stages"][0]["train"]["optimizer"]["lr"] = "1e-3"  # a string stays a string: still rejected
    assert 'expected a number > 0 and <= 100, got "1e-3"' in error_of(data)


def test_quantize_needs_trained_weights_and_int8_slots_only_feed_evaluate():
    data = raw()
    data["stages"].insert(0, {"quantize": {"name": "q", "model": "student"}})
    msg = error_of(data)
    assert msg.startswith("kd_resnet50_mobilenet.yaml: stages[0].quantize.model: expected a model trained by an "
                          "earlier train/distill stage")
    assert 'got "student (initial weights)"' in msg
    data = raw()
    data["stages"].insert(3, {"quantize": {"name": "q", "model": "student_kd"}})
    recipe = resolve(data, "kd_resnet50_mobilenet.yaml")
    assert recipe.stage("q").config.outputs() == ("student_kd_int8",)
    data["stages"][5]["export"]["models"].append("student_kd_int8")
    msg = error_of(data)
    assert "stages[5].export.models: expected an fp32 model: 'student_kd_int8' is an int8 model" in msg
    assert "already exports and measures it" in msg
    data["stages"][5]["export"]["models"].pop()
    data["stages"][4]["evaluate"]["models"].append("student_kd_int8")
    assert resolve(data, "kd_resnet50_mobilenet.yaml").stage("evaluate").config.models[-1] == "student_kd_int8"


def test_quantize_mode_and_calibration_choices_are_checked():
    data = raw()
    data["stages"].insert(3, {"quantize": {"name": "q", "model": "teacher", "mode": "fp8"}})
    assert 'stages[3].quantize.mode: expected one of' in error_of(data)
    data["stages"][3]["quantize"] = {"name": "q", "model": "teacher", "calibration": "kl"}
    assert 'stages[3].quantize.calibration: expected one of' in error_of(data)
