"""The built-in recipe that compresses from a checkpoint, through the real CLI on both backends: its smoke
profile writes the stand-in checkpoint (`pretrain`, a Paddle .pdparams here) and then loads it like a user's;
a user's file given with --set skips the stand-in; 0 training epochs keeps a loaded slot as it is."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.recipe.loader import load_recipe
from tests.integration.test_run_recipe import cli
from tests.integration.test_start_from_weights import _make

pytestmark = [pytest.mark.torch, pytest.mark.paddle]
RECIPE = "from_checkpoint_resnet18_mobilenet"


def _only_run(out: Path) -> Path:
    runs = list((out / RECIPE).iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_smoke_profile_writes_the_checkpoint_it_then_loads_on_both_backends(tmp_path: Path):
    p = cli("run-recipe", RECIPE, "--backend", "all", "--profile", "smoke", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    run = _only_run(tmp_path)
    stand_in = run / "pretrain" / "teacher.pdparams"
    assert stand_in.is_file() and "trained from scratch by paddle" in p.stdout
    meta = json.loads((run / "run.json").read_text())
    made = meta["pretrained"]["teacher"]
    assert made["framework"] == "paddle" and made["file"] == str(stand_in) and made["val_top1"] > 0.3
    assert "weights" not in meta["recipe"]["models"]["teacher"]  # the recorded recipe stays the user's
    sub = json.loads((run / "pretrain" / "teacher" / "paddle" / "seed-0" / "result.json").read_text())
    assert sub["status"] == "ok" and sub["stages"][0]["name"] == "pretrain_teacher"
    for backend in ("torch", "paddle"):
        r = json.loads((run / backend / "seed-0" / "result.json").read_text())
        assert r["status"] == "ok", r.get("error")
        w = r["initial_weights"]["teacher"]
        # torch is the reference: it read the .pdparams through a Paddle worker, as it would read a user's
        assert w["path"] == str(stand_in) and w["read_by"] == "paddle" and w["sha256"] == made["sha256"]
        assert r["init_parity"]["teacher"]["max_rel"] < 1e-4
        assert r["recipe_digest"] == meta["recipe_digest"]
    init = dict(np.load(run / "init" / "seed-0" / "teacher.npz"))
    trained = dict(np.load(run / "pretrain" / "teacher" / "paddle" / "seed-0" / "checkpoints" / "teacher.npz"))
    assert init.keys() == trained.keys() and all(np.array_equal(init[k], trained[k]) for k in init)
    report = (run / "report.md").read_text()
    assert "`teacher` starts from `teacher.pdparams`" in report and "recipe's `pretrain`" in report
    # a resumed run keeps the file and trains nothing again
    p = cli("run-recipe", "--resume", str(run))
    assert p.returncode == 0 and "pretrain:" not in p.stdout, p.stdout + p.stderr
    assert json.loads((run / "run.json").read_text())["pretrained"]["teacher"]["sha256"] == made["sha256"]


def test_a_users_checkpoint_skips_the_stand_in_and_zero_epochs_keep_it_as_loaded(tmp_path: Path):
    _make("import torch; from backends.torch.models import build_model; from common.config import ModelConfig; "
          "torch.manual_seed(7); torch.save(build_model(ModelConfig(arch='tiny_cnn'), 10).state_dict(), 'mine.pth')",
          tmp_path)
    p = cli("run-recipe", RECIPE, "--backend", "torch", "--profile", "smoke", "--out", str(tmp_path / "runs"),
            "--set", f"models.teacher.weights={tmp_path / 'mine.pth'}", "--set", "stages.finetune_teacher.epochs=0")
    assert p.returncode == 0, p.stdout + p.stderr
    run = _only_run(tmp_path / "runs")
    assert not (run / "pretrain").exists() and "pretrain" not in json.loads((run / "run.json").read_text()).get(
        "pretrained", {})
    r = json.loads((run / "torch" / "seed-0" / "result.json").read_text())
    assert r["initial_weights"]["teacher"]["read_by"] == "torch"
    ft = next(s for s in r["stages"] if s["name"] == "finetune_teacher")
    assert ft["steps"] == 0 and ft["history"] == [] and ft["trained"] is False
    ev = next(s for s in r["stages"] if s["name"] == "evaluate")
    assert ev["models"]["teacher"]["top1"] == pytest.approx(ft["final"]["val_top1"])
    report = (run / "report.md").read_text()
    assert "`finetune_teacher`" not in report.split("## Training")[1].split("\n## ")[0]


def test_paper_profile_can_start_the_teacher_from_a_checkpoint_instead_of_240_epochs(tmp_path: Path):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "r50.pth").write_bytes(b"")
    recipe = load_recipe("kd_resnet50_mobilenet", "paper", [f"data.path={tmp_path / 'cifar'}",
                         f"models.teacher.weights={tmp_path / 'r50.pth'}", "stages.train_teacher.epochs=0"])
    assert recipe.stage("train_teacher").config.epochs == 0
    assert recipe.models["teacher"].weights == str(tmp_path / "r50.pth")
