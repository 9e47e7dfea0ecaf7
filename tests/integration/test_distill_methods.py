"""The distillation-methods recipe end to end on both backends (every loss term in its smoke profile), and the
shape errors only the built models can reveal: found before the first stage trains, one line naming the key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.test_run_recipe import cli

pytestmark = [pytest.mark.torch, pytest.mark.paddle]
RECIPE = "kd_methods_resnet50_mobilenet"
METHODS = ["kd", "fitnet", "at", "dkd", "kd_feature"]


def _results(out: Path) -> tuple[Path, dict[str, dict]]:
    run, = (out / RECIPE).iterdir()
    return run, {p.parent.parent.name: json.loads(p.read_text()) for p in run.glob("*/seed-0/result.json")}


def test_methods_smoke_on_both_backends(tmp_path: Path):
    p = cli("run-recipe", RECIPE, "--profile", "smoke", "--backend", "all", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    run, res = _results(tmp_path)
    records = {}
    for backend, r in res.items():
        assert r["status"] == "ok", r.get("error")
        records[backend] = {st["name"]: st for st in r["stages"] if st["type"] == "distill"}
        assert list(records[backend]) == METHODS
    torch_rec, paddle_rec = records["torch"], records["paddle"]
    fitnet = torch_rec["fitnet"]
    assert fitnet["losses_label"] == "1 ce + 100 feature(features.5→features.5, smooth_l1, adapter)"
    assert fitnet["taps"] == [{"term": "feature", "teacher": "features.5", "student": "features.5",
                               "teacher_shape": [32, 8, 8], "student_shape": [16, 8, 8],
                               "adapter": "1x1 conv 16→32 + BN"}]
    assert [t["teacher_shape"] for t in torch_rec["at"]["taps"]] == [[16, 16, 16], [32, 8, 8]]
    for name in METHODS:  # same plan on both backends, and the same start and data: close training losses
        assert torch_rec[name]["taps"] == paddle_rec[name]["taps"]
        lt, lp = (rec[name]["history"][0]["train_loss"] for rec in (torch_rec, paddle_rec))
        assert lt == pytest.approx(lp, rel=1e-3), name
    assert "forward hooks" in torch_rec["fitnet"]["tools"]["features"]
    assert "forward post hooks" in paddle_rec["fitnet"]["tools"]["features"]
    assert "PaddleSlim's Distill not used" in paddle_rec["kd"]["tools"]["losses"]
    report = (run / "report.md").read_text()
    gain = report.split("## Knowledge-distillation gain")[1].split("\n## ")[0]
    assert sum(line.startswith(f"| {m} |") for line in gain.splitlines() for m in METHODS) == 2 * len(METHODS)
    assert "| dkd | 1 ce + 1 dkd(α=1, β=8, T=4, warm-up 2 ep) | PaddlePaddle |" in gain
    assert "PaddlePaddle, `fitnet`" in report and "forward post hooks" in report


@pytest.mark.parametrize("override,expected", [
    # tiny_cnn features.2 is 16x16 at 16 px, features.5 8x8
    ("stages.fitnet.losses=[{feature: {layers: [{teacher: features.2, student: features.5}]}}]",
     "stages[3].distill.losses[0].feature.layers[0]: teacher 'features.2' gives [16, 16, 16] (C, H, W) and student "
     "'features.5' [16, 8, 8] at 16 px; the spatial sizes must match"),
    ("stages.fitnet.losses=[{feature: {adapter: false, layers: [{teacher: features.5, student: features.5}]}}]",
     "teacher 'features.5' has 32 channels and student 'features.5' 16; without an adapter they must match"),
    ("stages.at.losses=[{attention: {layers: [{teacher: classifier, student: features.5}]}}]",
     "teacher: 'classifier' gives [10] per image; feature terms need (C, H, W) feature maps"),
])
def test_layer_shape_errors_stop_the_run_before_any_stage_trains(tmp_path: Path, override: str, expected: str):
    p = cli("run-recipe", RECIPE, "--profile", "smoke", "--backend", "torch", "--out", str(tmp_path),
            "--set", override)
    assert p.returncode != 0
    _, res = _results(tmp_path)
    r = res["torch"]
    assert r["status"] == "failed" and r["stages"] == []  # the teacher never started training
    assert expected in r["error"]["message"], r["error"]["message"]
    assert r["error"]["user_error"] is True


def test_a_module_that_runs_twice_per_forward_is_refused_before_training(tmp_path: Path):
    """torchvision's BasicBlock applies one ReLU module twice: its latest output is not one feature map."""
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "twice", "description": "a tap on a shared module", "seeds": [0],
        "data": {"dataset": "synthetic", "image_size": 16, "synthetic_samples": 64, "batch_size": 32},
        "models": {"teacher": {"arch": "resnet18"}, "student": {"arch": "tiny_cnn_small"}},
        "stages": [{"train": {"name": "teach", "model": "teacher"}},
                   {"distill": {"name": "d", "teacher": "teacher", "student": "student", "losses": [
                       {"attention": {"layers": [{"teacher": "layer1.0.relu", "student": "features.5"}]}}]}}]}))
    p = cli("run-recipe", str(recipe), "--backend", "paddle", "--out", str(tmp_path / "runs"))
    assert p.returncode != 0
    r = json.loads(next((tmp_path / "runs").glob("twice/*/paddle/seed-0/result.json")).read_text())
    assert r["stages"] == []
    assert ("stages[1].distill.losses[0].attention.layers[0].teacher: expected a layer that runs once per forward "
            "pass ('layer1.0.relu' runs 2 times") in r["error"]["message"]
