"""Pruning on both backends: identical masks from identical weights, masks kept through training,
checkpoints of pruned models, exported sparsity, and the prune_agp_mobilenet smoke run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.pruning import magnitude_masks, name_artifact_layers
from common.config import ModelConfig, OptimizerConfig
from tests.integration.conftest import transfer
from tests.integration.test_run_recipe import cli

pytestmark = [pytest.mark.torch, pytest.mark.paddle]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_same_weights_give_the_same_masks_and_named_artifact_layers(backends, arch, tmp_path: Path):
    tb, pb = backends
    tm, pm = transfer(tb, pb, arch)
    wt, wp = tb.prunable(tm), pb.prunable(pm)
    assert list(wt) == list(wp)
    head = {"resnet18": "fc.weight", "mobilenet_v2": "classifier.1.weight"}[arch]
    assert tb.head_name(tm) == pb.head_name(pm) == head
    for scope in ("local", "global"):
        mt, mp = magnitude_masks(wt, 0.6, scope), magnitude_masks(wp, 0.6, scope)
        agree = np.mean([np.mean(mt[k] == mp[k]) for k in mt])
        assert agree > 0.999  # identical up to float ties at the threshold
    x = np.zeros((2, 3, 32, 32), np.float32)
    for b, m, d in ((tb, tm, "t"), (pb, pm, "p")):
        stats = b.artifact_stats(b.export(m, x, tmp_path / d), (1, 3, 32, 32))
        assert list(name_artifact_layers(stats["sparsity"]["layers"], b.prunable(m))) == list(wt)


def test_masks_survive_training_and_checkpoints(backends, tmp_path: Path):
    tb, pb = backends
    tm, pm = transfer(tb, pb, "tiny_cnn")
    masks = magnitude_masks(tb.prunable(tm), 0.7, "global")
    rng = np.random.default_rng(0)
    for b, m, suffix in ((tb, tm, ".pt"), (pb, pm, ".pdparams")):
        b.set_masks(m, masks)
        trainer = b.trainer(m, OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4))
        for _ in range(3):
            trainer.step(rng.standard_normal((8, 3, 16, 16)).astype(np.float32), rng.integers(0, 10, 8), 0.1)
        w = b.prunable(m)
        assert all((w[k][~masks[k]] == 0).all() for k in masks)
        assert any((w[k][masks[k]] != 0).any() for k in masks)  # the kept weights did train
        path = tmp_path / f"ckpt{suffix}"
        b.save_checkpoint(m, path)
        fresh = b.build_model(ModelConfig(arch="tiny_cnn"), 10)
        b.load_checkpoint(fresh, path)
        assert all(np.array_equal(b.get_masks(fresh)[k], masks[k]) for k in masks)
        assert all(np.allclose(b.prunable(fresh)[k], w[k]) for k in w)


def test_prune_agp_smoke_on_both_backends(tmp_path: Path):
    p = cli("run-recipe", "prune_agp_mobilenet", "--profile", "smoke", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    run = next((tmp_path / "prune_agp_mobilenet").iterdir())
    res = {b: json.loads((run / b / "seed-0" / "result.json").read_text()) for b in ("torch", "paddle")}
    curves = []
    assert res["torch"]["stages"][1]["accuracy_before"]["loss"] == pytest.approx(
        res["paddle"]["stages"][1]["accuracy_before"]["loss"], rel=1e-4)  # both prune torch's trained weights
    for b, r in res.items():
        prune = r["stages"][1]
        assert prune["layers_skipped"] == ["classifier.weight"]
        pruned = r["stages"][3]["models"]["pruned"]
        assert abs(pruned["sparsity"]["pruned_layers"] - 0.8) < 0.005  # counted from the exported weights
        assert pruned["sparsity"]["layers"]["classifier.weight"]["sparsity"] == 0.0
        assert pruned["compressed_bytes"] < pruned["size_bytes"]
        assert r["stages"][3]["models"]["dense"]["sparsity"]["overall"] == 0.0
        curves.append([c["target"] for c in prune["sparsity_curve"]])
    assert curves[0] == curves[1]
    report = (run / "report.md").read_text()
    assert "## Pruning" in report and "identical on every backend and seed" in report


def test_one_shot_local_pruning_then_finetune_keeps_sparsity(tmp_path: Path):
    """prune (one-shot, local) -> train: the fine-tuning stage keeps the masks; accuracy before/after is recorded."""
    recipe = tmp_path / "oneshot.yaml"
    recipe.write_text("""
name: oneshot
description: one-shot local magnitude pruning, then fine-tuning
seeds: [0]
data: {dataset: synthetic, image_size: 16, synthetic_samples: 320, batch_size: 32, eval_batch_size: 64}
models: {net: {arch: tiny_cnn}}
stages:
  - train: {name: train, model: net, epochs: 2, optimizer: {name: adamw, lr: 0.02}}
  - prune: {name: prune, model: net, output: sparse, sparsity: 0.5, scope: local, schedule: one_shot}
  - train: {name: finetune, model: sparse, epochs: 1, optimizer: {name: adamw, lr: 0.005}}
  - export: {name: export, models: [net, sparse], measure: {batch_sizes: [1], warmup: 1, repeats: 2}}
""")
    p = cli("run-recipe", str(recipe), "--out", str(tmp_path / "runs"))
    assert p.returncode == 0, p.stdout + p.stderr
    run = next((tmp_path / "runs" / "oneshot").iterdir())
    for b in ("torch", "paddle"):
        r = json.loads((run / b / "seed-0" / "result.json").read_text())
        prune = r["stages"][1]
        assert prune["accuracy_after_prune"]["top1"] <= prune["accuracy_before"]["top1"] + 0.05
        sparse = r["stages"][3]["models"]["sparse"]["sparsity"]
        # local scope: every pruned layer at 50% in the exported weights, after fine-tuning
        for name in ("features.0.weight", "features.3.weight"):
            assert abs(sparse["layers"][name]["sparsity"] - 0.5) < 0.01
        assert r["stages"][3]["models"]["net"]["sparsity"]["overall"] == 0.0  # the source slot stays dense


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_filter_pruning_on_identical_weights_cuts_the_same_macs_and_mostly_the_same_filters(backends, arch,
                                                                                           tmp_path: Path):
    tb, pb = backends
    tm, pm = transfer(tb, pb, arch)
    head = tb.head_name(tm).rsplit(".weight", 1)[0]
    edit = dict(criterion="l1", ratio=0.3, layer_ratios={}, skip=[head], example_shape=(1, 3, 32, 32))
    x = np.zeros((2, 3, 32, 32), np.float32)
    macs0 = tb.artifact_stats(tb.export(tm, x, tmp_path / "t0"), (1, 3, 32, 32))["macs"]
    weights = tb.prunable(tm)
    rt, rp = tb.prune_filters(tm, **edit), pb.prune_filters(pm, **edit)
    mt = tb.artifact_stats(tb.export(tm, x, tmp_path / "t1"), (1, 3, 32, 32))["macs"]
    mp = pb.artifact_stats(pb.export(pm, x, tmp_path / "p1"), (1, 3, 32, 32))["macs"]
    cut_t, cut_p = 1 - mt / macs0, 1 - mp / macs0
    assert 0.4 < cut_t < 0.6 and abs(cut_t - cut_p) < 0.03  # the bar: within 3 points
    layers = sorted(set(rt) & set(rp))
    assert len(layers) >= 0.8 * max(len(rt), len(rp))

    def by_own_filters(removed: list[int], name: str) -> bool:
        w = weights[name + ".weight"]
        l1 = np.abs(w).reshape(w.shape[0], -1).sum(1)
        return set(removed) == set(np.argsort(l1, kind="stable")[: len(removed)].tolist())

    # Where both tools rank a conv by its own filters (no residual coupling), they remove the same filters;
    # in residual-coupled groups each ranks by a different member conv (the report explains the overlap).
    own = [k for k in layers if by_own_filters(rt[k], k) and by_own_filters(rp[k], k)]
    if arch == "mobilenet_v2":
        return  # nearly every conv is coupled there (expansion-depthwise-projection, residual adds)
    assert len(own) >= 0.4 * len(layers)
    inter = sum(len(set(rt[k]) & set(rp[k])) for k in own)
    union = sum(len(set(rt[k]) | set(rp[k])) for k in own)
    assert inter / union > 0.9, f"removed-filter overlap on uncoupled convs {inter / union:.2f}"
    # the pruned models still agree closely on logits where the same filters went
    xb = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    assert tb.predict(tm, xb).shape == pb.predict(pm, xb).shape == (4, 10)


def test_prune_filter_smoke_on_both_backends_and_resume_rebuilds_the_pruned_architecture(tmp_path: Path):
    p = cli("run-recipe", "prune_filter_resnet50", "--profile", "smoke", "--out", str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    run = next((tmp_path / "prune_filter_resnet50").iterdir())
    for b in ("torch", "paddle"):
        path = run / b / "seed-0" / "result.json"
        r = json.loads(path.read_text())
        prune = r["stages"][1]
        assert prune["method"] == "filter" and prune["weights_after"] < prune["weights_before"]
        assert prune["start_weights"].startswith("torch's trained weights" if b == "paddle" else "own trained")
        ex = r["stages"][4]["models"]
        assert ex["pruned"]["macs"] < 0.5 * ex["dense"]["macs"]  # 50% of channels in both convs
        assert ex["pruned"]["size_bytes"] < ex["dense"]["size_bytes"]
        # crash after the fine-tuning stage: resume must rebuild the pruned shapes from the recorded edit
        path.write_text(json.dumps(dict(r, status="failed", stages=r["stages"][:3])))
    p = cli("run-recipe", "--resume", str(run))
    assert p.returncode == 0, p.stdout + p.stderr
    for b in ("torch", "paddle"):
        r = json.loads((run / b / "seed-0" / "result.json").read_text())
        assert r["status"] == "ok" and r["resumed_stages"] == ["train_dense", "prune_l1", "finetune"]
        assert r["stages"][4]["models"]["pruned"]["macs"] < 0.5 * r["stages"][4]["models"]["dense"]["macs"]
    report = (run / "report.md").read_text()
    assert "removed filters overlap 100.0%" in report  # same trained weights, no residual coupling in tiny_cnn
    torch_r, paddle_r = (json.loads((run / b / "seed-0" / "result.json").read_text()) for b in ("torch", "paddle"))
    assert torch_r["stages"][1]["accuracy_before"]["loss"] == pytest.approx(
        paddle_r["stages"][1]["accuracy_before"]["loss"], rel=1e-4)
