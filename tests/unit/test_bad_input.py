"""Bad input through both commands: every case is one line on stderr, exit 2, no traceback, nothing written.

Table-driven: each row is a command line (with the files it needs made in a temporary directory); the
commands run in-process (`run_recipe(argv)` / `slimbench(argv)`), so the table is fast. Errors found only
after a worker started are covered in tests/integration.
"""
from __future__ import annotations

import copy
import os
import random
from pathlib import Path

import pytest
import yaml

from common.cli import run_recipe, slimbench
from common.recipe.loader import builtin_recipes

KD = builtin_recipes()["kd_resnet50_mobilenet"]
QAT = builtin_recipes()["quant_qat_mobilenet"]


def kd() -> dict:
    return yaml.safe_load(KD.read_text())


def write(tmp: Path, data: dict | str | bytes, name: str = "bad.yaml") -> str:
    path = tmp / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return str(path)


def mutate(fn) -> dict:
    data = kd()
    fn(data)
    return data


def nested(depth: int) -> str:
    return "name: x\ndescription: y\ndata: " + "{a: " * depth + "1" + "}" * depth + "\n"


def stage(data: dict, name: str) -> dict:
    return next(body for item in data["stages"] for body in item.values() if body["name"] == name)


# (id, command, args builder(tmp) -> argv, text the one line must contain)
CASES = [
    ("nested-yaml", "run-recipe", lambda t: [write(t, nested(3000))], "nesting deeper than"),
    ("non-utf8", "run-recipe", lambda t: [write(t, b"name: \xff\xfe\n")], "expected UTF-8 text"),
    ("recipe-is-dir", "run-recipe", lambda t: [str(t)], "is a directory"),
    ("recipe-is-device", "run-recipe", lambda t: ["/dev/zero"], "not a regular file"),
    ("recipe-missing", "run-recipe", lambda t: [str(t / "nope.yaml")], "not found"),
    ("recipe-nul", "run-recipe", lambda t: ["a\0b.yaml"], "NUL"),
    ("unknown-recipe", "run-recipe", lambda t: ["kd_resnet"], "unknown recipe"),
    ("out-is-file", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--out", write(t, "x", "f")],
     "not a directory"),
    ("out-unwritable", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--out", "/proc/slimbench-out"],
     "cannot create the directory"),
    ("huge-int-set", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "seeds=[" + "9" * 5000 + "]"],
     "value not readable"),
    ("huge-int-file", "run-recipe", lambda t: [write(t, "name: x\nseeds: [" + "9" * 5000 + "]\n")], "4300 digits"),
    ("timing-rounds-zero", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "timing.rounds=0"],
     "timing.rounds"),
    ("timing-rounds-huge", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "timing.rounds=11"],
     "timing.rounds"),
    ("timing-unknown-key", "run-recipe", lambda t: [write(t, mutate(lambda d: d.update(timing={"pairs": 2})))],
     "timing.pairs"),
    ("timing-paired-text", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "timing.paired=maybe"],
     "timing.paired"),
    ("name-nul", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "name=a\0b"], "name: expected a name"),
    ("name-slash", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "name=../escape"],
     "name: expected a name"),
    ("name-absolute", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", f"name={t}/abs"],
     "name: expected a name"),
    ("name-empty", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "name="], "name: expected a string"),
    ("name-dot", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "name=."], "name: expected a name"),
    ("name-in-file", "run-recipe", lambda t: [write(t, mutate(lambda d: d.update(name="../../x")))],
     "name: expected a name"),
    ("set-unknown-top", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "seed=5"],
     "'seed' is not a recipe key"),
    ("set-unknown-deep", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "bogus.deep.key=1"],
     "'bogus' is not a recipe key"),
    ("set-profiles", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "profiles.smoke.seeds=[1]"],
     "choose a profile with --profile"),
    ("set-unknown-data-key", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "data.bogus=1"],
     "data.bogus: expected one of the keys"),
    ("set-no-equals", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "seeds"], "KEY.PATH=VALUE"),
    ("duplicate-key", "run-recipe", lambda t: [write(t, KD.read_text().replace("seeds: [0, 1, 2]",
                                                                              "seeds: [0, 1, 2]\nseeds: [5]"))],
     "duplicate key 'seeds'"),
    ("export-runtime-unknown", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set",
                                                        "stages.export.runtimes=[tensorrt]"],
     "stages[4].export.runtimes[0]: expected one of 'best', 'onnxruntime', got \"tensorrt\""),
    ("quantize-runtime-best", "run-recipe", lambda t: ["quant_ptq_resnet50", "--set", "stages.ptq.runtimes=[best]"],
     "stages[1].quantize.runtimes[0]: expected one of 'onnxruntime', got \"best\""),
    ("pt2e-engine-qat", "run-recipe", lambda t: ["quant_qat_mobilenet", "--set", "stages.qat.torch_engine=pt2e"],
     "stages[1].quantize.torch_engine: expected 'fx' for mode 'qat' (the pt2e engine runs ptq_static here"),
    ("qat-freeze-longer-than-qat", "run-recipe",
     lambda t: ["quant_qat_mobilenet", "--set", "stages.qat.freeze_epochs=9"],
     "stages[1].quantize.freeze_epochs: expected at most epochs ("),
    ("qat-freeze-negative", "run-recipe",
     lambda t: ["quant_qat_mobilenet", "--set", "stages.qat.freeze_epochs=-1"],
     "stages[1].quantize.freeze_epochs: expected"),
    ("torch-engine-unknown", "run-recipe", lambda t: ["quant_ptq_resnet50", "--set", "stages.ptq.torch_engine=fbgemm"],
     "stages[1].quantize.torch_engine: expected one of 'fx', 'pt2e', got \"fbgemm\""),
    ("batch-size-0", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "stages.export.measure.batch_sizes=[0]"],
     "batch_sizes[0]: expected an integer >= 1 and <= 1024"),
    ("batch-size-neg", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "stages.export.measure.batch_sizes=[-1]"],
     "expected an integer >= 1"),
    ("batch-size-huge", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set",
                                                 "stages.export.measure.batch_sizes=[1000000]"], "<= 1024"),
    ("num-classes", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "models.teacher.num_classes=7"],
     "models.teacher.num_classes: expected 10"),
    ("seeds-negative", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--seeds", "-1"], "integers >= 0"),
    ("seeds-empty", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--seeds", ""], "integers >= 0"),
    ("seeds-duplicate", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--seeds", "1,1"], "distinct"),
    ("seeds-negative-in-file", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "seeds=[-3]"],
     "seeds[0]: expected an integer >= 0"),
    ("threads-negative", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--threads", "-1"], "from 1 to 1024"),
    ("threads-zero", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--threads", "0"], "from 1 to 1024"),
    ("lr-huge", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "stages.distill.optimizer.lr=1e300"],
     "lr: expected a number > 0 and <= 100"),
    ("temperature-inf", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "stages.distill.temperature=.inf"],
     "temperature: expected a finite number"),
    ("temperature-nan", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "stages.distill.temperature=.nan"],
     "temperature: expected a finite number"),
    ("backend-twice", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--backend", "torch,torch"], "once"),
    ("backend-unknown", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--backend", "jax"], "expected torch"),
    ("unknown-flag", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--frobnicate"], "unrecognized arguments"),
    ("no-recipe", "run-recipe", lambda t: [], "give a recipe"),
    ("profile-hides-base-error", "run-recipe",
     lambda t: [write(t, mutate(lambda d: d["models"]["teacher"].update(arch="resnet5"))), "--profile", "smoke"],
     'models.teacher.arch: expected one of'),
    ("paddle-dynamic-quant", "run-recipe",
     lambda t: [str(QAT), "--set", "stages.qat.mode=dynamic"], "backend 'paddle' supports"),
    ("qat-after-magnitude-prune", "run-recipe",
     lambda t: [write(t, {**yaml.safe_load(QAT.read_text()), "stages": [
         {"train": {"name": "t", "model": "net"}},
         {"prune": {"name": "p", "model": "net", "method": "magnitude", "sparsity": 0.5}},
         {"quantize": {"name": "q", "model": "net", "mode": "qat"}}], "profiles": {}})],
     "stages[2].quantize.mode: expected 'ptq_static' for a magnitude-pruned model"),
    ("distill-unknown-layer", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.fitnet.losses=[{feature: {layers: [{teacher: layer9, student: features.6}]}}]"],
     "stages[3].distill.losses[0].feature.layers[0].teacher: expected a layer of resnet50 (nearest: layer4, layer3"),
    ("distill-paddle-name", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "models.student.arch=mobilenet_v3_small", "--set",
     "stages.at.losses=[{attention: {layers: [{teacher: layer1, student: blocks.3}]}}]"],
     "'blocks.3' is paddle.vision's naming (its canonical name is 'features.4')"),
    ("distill-torch-only-layer", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "models.student.arch=mobilenet_v3_small", "--set",
     "stages.at.losses=[{attention: {layers: [{teacher: layer1, student: features.4.block}]}}]"],
     "has no counterpart in paddle.vision's"),
    ("distill-temperature-and-losses", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.kd.temperature=2"], "stages[2].distill.temperature: expected no value when `losses` is given"),
    ("distill-unknown-term", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.kd.losses=[{crd: {}}]"], "losses[0].crd: expected one of kd, ce, hard_label, feature, attention, dkd"),
    ("distill-two-key-term", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.kd.losses=[{kd: {}, ce: {}}]"], "losses[0]: expected a mapping with one key among"),
    ("distill-zero-weights", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.kd.losses=[{kd: {weight: 0}}]"], "expected at least one term with a weight > 0"),
    ("distill-no-layers", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.fitnet.losses=[{feature: {layers: []}}]"], "losses[0].feature.layers: expected a non-empty list"),
    ("distill-layers-missing", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.fitnet.losses=[{feature: {weight: 1}}]"], "losses[0].feature.layers: expected a value"),
    ("distill-bad-distance", "slimbench", lambda t: ["show", "kd_methods_resnet50_mobilenet", "--set",
     "stages.fitnet.losses=[{feature: {distance: l3, layers: [{teacher: layer2, student: features.6}]}}]"],
     "distance: expected one of 'mse', 'smooth_l1'"),
    ("weights-missing", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", f"models.teacher.weights={t}/no.pth"],
     "models.teacher.weights: expected an existing checkpoint file"),
    ("weights-suffix", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set", "models.teacher.weights=w.onnx"],
     "models.teacher.weights: expected a checkpoint file ending in one of .pth, .pt, .pdparams, .npz"),
    ("weights-directory", "slimbench", lambda t: ["show", "kd_resnet50_mobilenet", "--set",
     f"models.student.weights={(t / 'd.pth').mkdir() or t / 'd.pth'}"], "d.pth is a directory"),
    ("pretrain-unknown-slot", "slimbench", lambda t: ["show", "from_checkpoint_resnet18_mobilenet", "--set",
     "pretrain.pupil={epochs: 1}"], "pretrain.pupil: expected a model slot among teacher, student"),
    ("pretrain-bad-framework", "slimbench", lambda t: ["show", "from_checkpoint_resnet18_mobilenet", "--set",
     "pretrain.teacher.framework=jax"], "pretrain.teacher.framework: expected one of 'torch', 'paddle'"),
    ("pretrain-zero-epochs", "run-recipe", lambda t: ["from_checkpoint_resnet18_mobilenet", "--set",
     "pretrain.teacher.epochs=0"], "pretrain.teacher.epochs: expected an integer > 0"),
    ("train-zero-epochs-random", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--set",
     "stages.train_teacher.epochs=0"], "epochs: expected at least 1: 'teacher' starts from random weights"),
    ("ray-address-without-ray", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--ray-address", "10.0.0.1:6379"],
     "--ray-address needs --executor ray"),
    ("executor-unknown", "run-recipe", lambda t: ["kd_resnet50_mobilenet", "--executor", "slurm"],
     "invalid choice: 'slurm'"),
    ("sweep-grid-missing", "slimbench", lambda t: ["sweep", str(t / "no.yaml")], "cannot read sweep grid"),
    ("sweep-no-recipes", "slimbench", lambda t: ["sweep", write(t, "profiles: [smoke]\n", "g.yaml")],
     "g.yaml: recipes: expected a value"),
    ("sweep-unknown-key", "slimbench", lambda t: ["sweep", write(t, "recipes: [kd_resnet50_mobilenet]\nseed: 1\n",
     "g.yaml")], "g.yaml: seed: expected one of the keys"),
    ("sweep-unknown-recipe", "slimbench", lambda t: ["sweep", write(t, "recipes: [kd_resnet]\n", "g.yaml")],
     "unknown recipe"),
    ("sweep-bad-variant", "slimbench", lambda t: ["sweep", write(t, "recipes: [kd_resnet50_mobilenet]\n"
     "variants: [[bogus=1]]\n", "g.yaml")], "'bogus' is not a recipe key"),
    ("sweep-bad-backends", "slimbench", lambda t: ["sweep", write(t, "recipes: [kd_resnet50_mobilenet]\n"
     "backends: jax\n", "g.yaml")], "g.yaml: backends: expected one of 'torch', 'paddle', 'all'"),
    ("resume-not-a-run", "run-recipe", lambda t: ["--resume", str(t)], "not a run directory"),
    ("show-nested", "slimbench", lambda t: ["show", write(t, nested(3000))], "nesting deeper than"),
    ("show-non-utf8", "slimbench", lambda t: ["show", write(t, b"\x80\x81")], "expected UTF-8 text"),
    ("show-unknown-key", "slimbench", lambda t: ["show", "kd_resnet50_mobilenet", "--set", "bogus=1"],
     "not a recipe key"),
    ("show-top-level-list", "slimbench", lambda t: ["show", write(t, "- a\n- b\n")], "a mapping at the top level"),
    ("show-stage-not-mapping", "slimbench", lambda t: ["show", write(t, mutate(lambda d: d["stages"].append(3)))],
     "stages[5]: expected a mapping with one stage type key"),
    ("no-command", "slimbench", lambda t: [], "required"),
    ("report-missing", "slimbench", lambda t: ["report", str(t / "nope")], "not a run directory"),
    ("compare-missing", "slimbench", lambda t: ["compare", str(t / "a"), str(t / "b")], "not a run directory"),
]


@pytest.mark.parametrize("command,make_args,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch, command, make_args, expected):
    monkeypatch.chdir(tmp_path)  # a run that wrongly started would write ./runs here
    argv = make_args(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = (run_recipe if command == "run-recipe" else slimbench)(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and out == ""
    assert expected in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no run started


def _random_value(rng: random.Random):
    return rng.choice([None, -1, 0, 1e308, "x", "", [], {}, [1, "a"], {"k": 1}, True, 3.5, "../..", "\u00e9"])


def _mutations(data: dict, rng: random.Random) -> dict:
    """Replace or delete one value anywhere in a recipe, or add an unknown key."""
    out = copy.deepcopy(data)
    node, paths = out, []

    def walk(obj, path):
        if isinstance(obj, dict):
            for k, v in obj.items():
                paths.append((obj, k))
                walk(v, path + [k])
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                paths.append((obj, i))
                walk(v, path + [i])

    walk(node, [])
    parent, key = rng.choice(paths)
    action = rng.random()
    if action < 0.7:
        parent[key] = _random_value(rng)
    elif action < 0.85 and isinstance(parent, dict):
        del parent[key]
    elif isinstance(parent, dict):
        parent["unknown_key_" + str(rng.randrange(100))] = 1
    return out


@pytest.mark.parametrize("name", sorted(builtin_recipes()))
def test_mutated_builtin_recipes_give_a_recipe_or_one_line_error(tmp_path: Path, capsys, name):
    """Property: whatever one mutation does to a built-in recipe, `slimbench show` either prints a recipe or
    exits 2 with one line; never a traceback."""
    rng = random.Random(f"mutate-{name}")
    base = yaml.safe_load(builtin_recipes()[name].read_text())
    for i in range(60):
        path = write(tmp_path, _mutations(base, rng), f"m{i}.yaml")
        profile = rng.choice(["default", "smoke", "paper"])
        code = slimbench(["show", path, "--profile", profile])
        out, err = capsys.readouterr()
        if code == 0:
            assert out and not err
        else:
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


def test_fifo_as_recipe_is_refused_without_reading_it(tmp_path: Path, capsys):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert slimbench(["show", str(fifo)]) == 2  # reading would block forever
    assert "not a regular file" in capsys.readouterr().err
