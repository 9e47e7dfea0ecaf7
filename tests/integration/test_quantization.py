"""int8 on both backends through the real CLI: the files are really int8, predictions follow fp32, resume works."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_run_recipe import ROOT, cli

pytestmark = [pytest.mark.torch, pytest.mark.paddle]


def run_dir(out: Path, recipe: str) -> Path:
    runs = list((out / recipe).iterdir())
    assert len(runs) == 1
    return runs[0]


def result(run: Path, backend: str) -> dict:
    return json.loads((run / backend / "seed-0" / "result.json").read_text())


def smoke(out: Path, recipe: str) -> Path:
    """Run a recipe's smoke profile on both backends; return its run directory."""
    p = cli("run-recipe", recipe, "--profile", "smoke", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    return run_dir(out, recipe)


# The smoke models are barely trained and scored on 64 validation images (one image = 1.6 points): int8 rounding
# flips their near-tied predictions, and Paddle's ResNet50 PTQ agreed on 51 of 64 (0.797) once the batch-norm
# recalibration draw changed. An int8 file that does not follow its fp32 twin agrees near chance (~0.1-0.3).
MIN_AGREEMENT = 0.7


def weight_bytes(seed_dir: Path, files: list[str]) -> int:
    """Bytes of the weight payload: the tensors inside torch's zip files (.pt2 program, frozen TorchScript .pt),
    the .pdiparams file for Paddle (programs and code grow with the quantize/dequantize ops and dominate for a
    tiny model)."""
    paths = [seed_dir / f for f in files]
    params = [p for p in paths if p.suffix == ".pdiparams"]
    if len(paths) == 1 and paths[0].suffix in (".pt2", ".pt"):  # zips: their tensors, not code, graph or pickles
        with zipfile.ZipFile(paths[0]) as z:
            return sum(i.file_size for i in z.infolist() if any(
                part in i.filename for part in ("/data/weights/", "/data/constants/", "/constants/")))
    return sum(p.stat().st_size for p in (params or paths))


def check_int8(run: Path, backend: str, stage: dict, max_ratio: float = 0.4, max_drop: float = 0.1) -> None:
    seed_dir = run / backend / "seed-0"
    fp32, int8 = stage["fp32"], stage["int8"]
    ratio = weight_bytes(seed_dir, int8["files"]) / weight_bytes(seed_dir, fp32["files"])
    assert ratio < max_ratio, f"{backend}: int8 weights are {ratio:.0%} of fp32: not int8"
    assert stage["comparison"]["agreement"] >= MIN_AGREEMENT, f"{backend}: int8 agrees with fp32 on too few samples"
    assert abs(stage["accuracy_drop"]) < max_drop
    lo, hi = stage["accuracy_drop_ci95"]
    assert lo <= stage["accuracy_drop"] <= hi
    for bs in ("1", "4"):
        assert int8["latency"][bs]["repeats"] == fp32["latency"][bs]["repeats"] == 3
    assert "int8" in int8["runtime"] or "int8" in int8["format"] or "fbgemm" in int8["runtime"]
    # no best-runtime search for the int8 file, and the record says why (the framework's one int8 path)
    best = stage["runtimes"]["best"]
    assert best["status"] == "reference only" and best["runtime"] == int8["runtime"] and len(best["reason"]) > 40
    check_int8_on_onnxruntime(seed_dir, stage, max_drop)


def check_int8_on_onnxruntime(seed_dir: Path, stage: dict, max_drop: float) -> None:
    """The pair converted by the framework's converter runs on ONNX Runtime: the int8 file holds real int8
    weights behind QuantizeLinear/DequantizeLinear pairs, follows its fp32 twin, and was timed with it."""
    onnx = pytest.importorskip("onnx")
    ort = stage["runtimes"]["onnxruntime"]
    assert ort["status"] == "ok", ort
    assert ort["runtime"].startswith("ONNX Runtime") and "QDQ" in ort["int8"]["format"]
    graph = onnx.load(str(seed_dir / ort["int8"]["entry"])).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    # weights as initializers (paddle2onnx) or as Constant nodes (torch's TorchScript-based exporter)
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                                         if a.type == onnx.AttributeProto.TENSOR]
    int8_weights = sum(np.prod(t.dims) for t in tensors if t.data_type == onnx.TensorProto.INT8)
    assert int8_weights > 0, "no int8 initializers: the ONNX file is not int8"
    assert ort["fp32"]["vs_artifact"]["argmax_agree"] == 1.0 and ort["fp32"]["vs_artifact"]["max_rel"] < 1e-4
    assert 0 <= ort["int8"]["vs_artifact"]["argmax_agree"] <= 1
    assert ort["comparison"]["agreement"] >= MIN_AGREEMENT, "int8 on ONNX Runtime agrees with fp32 on too few samples"
    assert abs(ort["accuracy_drop"]) < max_drop
    for bs in ("1", "4"):
        assert ort["int8"]["latency"][bs]["repeats"] == ort["fp32"]["latency"][bs]["repeats"] == 3
        assert ort["speedup"][bs] == pytest.approx(ort["fp32"]["latency"][bs]["p50_ms"]
                                                   / ort["int8"]["latency"][bs]["p50_ms"])


def test_ptq_smoke_on_both_backends_is_real_int8_and_resume_reopens_the_int8_artifact(tmp_path: Path):
    run = smoke(tmp_path, "quant_ptq_resnet50")
    for b in ("torch", "paddle"):
        r = result(run, b)
        ptq = r["stages"][1]
        assert ptq["mode"] == "ptq_static" and ptq["calibration_batches"] == 2 and ptq["calibration_samples"] == 64
        check_int8(run, b, ptq)
        ev = r["stages"][2]["models"]
        assert ev["int8"]["top1"] == pytest.approx(ptq["int8"]["top1"])  # evaluate runs the same int8 artifact
        assert ev["fp32"]["top1"] == pytest.approx(ptq["fp32"]["top1"], abs=0.02)
        path = run / b / "seed-0" / "result.json"
        path.write_text(json.dumps(dict(r, status="failed", stages=r["stages"][:2])))
    assert result(run, "paddle")["stages"][1]["start_weights"] == "torch's trained weights of 'fp32'"
    report = (run / "report.md").read_text()
    for text in ("## Quantization", "quant_post_static", "prepare_fx", "McNemar", "fbgemm",
                 "The same fp32 and int8 models on ONNX Runtime", "ONNX QDQ (opset 17", "ONNX QDQ (opset 13"):
        assert text in report, text
    p = cli("run-recipe", "--resume", str(run))
    assert p.returncode == 0, p.stdout + p.stderr
    for b in ("torch", "paddle"):
        r = result(run, b)
        assert r["resumed_stages"] == ["train_fp32", "ptq"]
        assert r["stages"][2]["models"]["int8"]["top1"] == pytest.approx(r["stages"][1]["int8"]["top1"])


def test_qat_smoke_on_both_backends(tmp_path: Path):
    run = smoke(tmp_path, "quant_qat_mobilenet")
    for b in ("torch", "paddle"):
        qat = result(run, b)["stages"][1]
        assert qat["mode"] == "qat" and qat["qat"]["epochs"] == 2 and len(qat["qat"]["history"]) == 2
        assert qat["qat"]["frozen_from_epoch"] == 2 and qat["qat"]["bn_recalibration_batches"] == 2
        check_int8(run, b, qat)
    report = (run / "report.md").read_text()
    assert "qat (QAT)" in report  # QAT fine-tuning shows in the training table
    assert "qat (2 epoch(s), ranges and BN frozen from epoch 2, BN recalibrated on 2 batches)" in report


def test_compress_pipeline_smoke_distill_prune_finetune_quantize(tmp_path: Path):
    run = smoke(tmp_path, "compress_resnet50_mobilenet")
    for b in ("torch", "paddle"):
        r = result(run, b)
        assert [s["type"] for s in r["stages"]] == ["train", "distill", "prune", "train", "quantize", "evaluate",
                                                    "export"]
        q = r["stages"][4]
        assert q["source"] == "student_pruned" and q["start_weights"] == "own trained weights"
        # The pruned tiny student keeps ~2k conv weights: per-channel scales and BN parameters weigh as much,
        # and 8-bit steps move a few of the 64 synthetic samples; only loose bounds hold here (the default
        # profile's MobileNetV2 is the real test).
        check_int8(run, b, q, max_ratio=0.9, max_drop=0.2)
        ex = r["stages"][6]["models"]
        assert ex["student_pruned"]["macs"] < 0.5 * ex["student_kd"]["macs"]
        assert set(r["stages"][5]["models"]) == {"teacher", "student_kd", "student_pruned", "student_int8"}


def test_dynamic_mode_runs_on_torch_and_paddle_says_why_it_cannot(tmp_path: Path):
    """Paddle's missing dynamic int8 is declared in backends/capabilities.py: a recipe asking both backends for it
    is refused before anything trains; on torch alone it runs."""
    p = cli("run-recipe", "quant_ptq_resnet50", "--profile", "smoke", "--out", str(tmp_path),
            "--set", "stages.ptq.mode=dynamic")
    assert p.returncode == 2 and not list(tmp_path.iterdir())
    assert "stages[1].quantize.mode: expected a setting backend 'paddle' supports" in p.stderr
    assert "run only torch with --backend" in p.stderr
    p = cli("run-recipe", "quant_ptq_resnet50", "--profile", "smoke", "--out", str(tmp_path), "--backend", "torch",
            "--set", "stages.ptq.mode=dynamic")
    assert p.returncode == 0, p.stdout + p.stderr
    torch_r = result(run_dir(tmp_path, "quant_ptq_resnet50"), "torch")
    assert torch_r["status"] == "ok" and torch_r["stages"][1]["mode"] == "dynamic"


def test_torch_int8_names_depthwise_channel_counts_its_kernels_are_slow_at(tmp_path: Path):
    """Issue 14, item 4: a filter-pruned MobileNetV2 leaves depthwise channel counts that are not multiples of 8,
    on which fbgemm's int8 depthwise kernel takes a generic path; the quantize record says so (and an unpruned
    model gets no such note)."""
    import numpy as np
    from backends.torch import create
    from backends.torch.quantize import quantize_static
    from common.config import ModelConfig
    from common.stages.quantize import QuantizeStage
    backend = create()
    backend.configure(2, "cpu", 0)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((8, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    cfg = QuantizeStage(name="q", model="s", mode="ptq_static", calibration="minmax", calibration_batches=2)
    notes = {}
    for pruned in (False, True):
        model = backend.build_model(ModelConfig(arch="mobilenet_v2"), 10)
        backend.recalibrate_bn(model, iter(calibration))
        if pruned:
            backend.prune_filters(model, "l1", 0.3, {}, [backend.head_name(model).rsplit(".", 1)[0]], (1, 3, 32, 32))
        qm = quantize_static(model, cfg, calibration, calibration[0][:2], None, tmp_path / str(pruned), 2)
        notes[pruned] = qm.info["kernel_notes"]
    assert notes[False] == []
    assert len(notes[True]) == 1 and "multiples of 8" in notes[True][0] and "22, 67, 100" in notes[True][0]


@pytest.mark.torch
def test_pt2e_engine_is_real_int8_compiled_by_inductor_beside_a_compiled_fp32_parent(tmp_path: Path):
    pytest.importorskip("torchao")
    p = cli("run-recipe", "quant_ptq_resnet50", "--profile", "smoke", "--backend", "torch", "--out", str(tmp_path),
            "--set", "stages.ptq.torch_engine=pt2e")
    assert p.returncode == 0, p.stdout + p.stderr
    run = run_dir(tmp_path, "quant_ptq_resnet50")
    ptq = result(run, "torch")["stages"][1]
    assert ptq["lowering"]["engine"] == "pt2e-x86-inductor" and "X86InductorQuantizer" in ptq["lowering"]["tool"]
    assert ptq["int8"]["engine"] == "pt2e-x86-inductor" and ptq["int8"]["entry"].endswith(".pt2")
    # like for like: the fp32 parent runs compiled by Inductor too, and both compile outside the timed windows
    assert "torch.compile" in ptq["int8"]["runtime"] and "torch.compile" in ptq["fp32"]["runtime"]
    assert ptq["int8"]["compile_s"] > 0 and ptq["fp32"]["compile_s"] > 0
    assert ptq["int8"]["compile_batches"] == ptq["fp32"]["compile_batches"] == [1]
    # the tiny smoke model keeps a few thousand weights beside per-channel scales and graph metadata
    check_int8(run, "torch", ptq, max_ratio=0.9, max_drop=0.2)
    report = (run / "report.md").read_text()
    assert "(engine pt2e-x86-inductor)" in report and "compiled at load for batch 1 in" in report
    assert "dynamo of the pt2e int8 model" in report
    # a fresh process reopens and re-times both compiled programs (the paired timing phase's worker)
    p = subprocess.run([sys.executable, "-m", "common.run.worker", "time", str(run), "--backend", "torch", "--seed",
                        "0", "--threads", "2", "--round", "0"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    timed = json.loads((run / "timing" / "seed-0" / "round-0.torch.json").read_text())
    assert timed["status"] == "ok" and {i["key"] for i in timed["items"]} >= {"fp32", "int8"}
    assert all(i["latency"]["1"]["repeats"] == 3 for i in timed["items"])


def _qat_ranges(backend_name: str, prepared) -> list[np.ndarray]:
    """The moving quantization ranges of a QAT model: torch's FakeQuantize scales (activations and weights),
    PaddleSlim's moving-average abs-max scales (activations)."""
    if backend_name == "torch":
        from torch.ao.quantization import FakeQuantizeBase
        return [m.scale.detach().clone().numpy() for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    from backends.paddle.train import MOVING_RANGE_LAYERS
    return [m._scale.numpy().copy() for m in prepared.sublayers() if isinstance(m, MOVING_RANGE_LAYERS)]


def _bn_means(backend_name: str, prepared) -> np.ndarray:
    if backend_name == "torch":
        from torch import nn
        return np.concatenate([m.running_mean.numpy().copy() for m in prepared.modules()
                               if isinstance(m, nn.modules.batchnorm._BatchNorm)])
    from paddle import nn
    return np.concatenate([m._mean.numpy().copy() for m in prepared.sublayers()
                           if isinstance(m, nn.layer.norm._BatchNormBase)])


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("backend_name", ["torch", "paddle"])
@pytest.mark.parametrize("arch", ["tiny_cnn", "mobilenet_v2"])  # Paddle trains MobileNetV2 through a traced program
def test_qat_ranges_hold_through_bn_recalibration_and_stay_frozen_once_frozen(backend_name: str, arch: str):
    """The QAT stage's `bn_recalibration_batches` must move only batch-norm statistics, not the fake-quant ranges
    QAT learns; `freeze_epochs` must keep those ranges and the batch-norm statistics fixed through training steps,
    evaluation (which puts the model in eval mode) and the train() after it, while the weights still train and
    recalibration still recomputes the statistics. Paddle trains models with depthwise convolutions through a
    to_static program, which bakes in each layer's mode when traced: freezing must reach it too."""
    from backends.base import load_backend
    from common.config import ModelConfig
    from common.stages.quantize import QuantizeStage
    backend = load_backend(backend_name)
    backend.configure(2, "cpu", 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 16).astype(np.int64)
    cfg = QuantizeStage(name="q", model="m", mode="qat")
    prepared = backend.prepare_qat(backend.build_model(ModelConfig(arch=arch), 10), cfg, x[:2])
    trainer = backend.trainer(prepared, cfg.optimizer)
    trainer.step(x, y, 0.01)
    ranges, means = _qat_ranges(backend_name, prepared), _bn_means(backend_name, prepared)
    backend.recalibrate_bn(prepared, iter([x * 3, x * 3 + 1]))
    assert not np.array_equal(_bn_means(backend_name, prepared), means), "recalibration did not reach batch norm"
    assert _same(_qat_ranges(backend_name, prepared), ranges), "recalibration moved the fake-quant ranges"
    trainer.step(x * 5, y, 0.01)  # wider inputs widen the activation ranges of a model still observing
    assert not _same(_qat_ranges(backend_name, prepared), ranges), "a training step no longer moves the ranges"
    backend.freeze_qat_statistics(prepared)
    frozen, frozen_means = _qat_ranges(backend_name, prepared), _bn_means(backend_name, prepared)
    weights = backend.state_to_numpy(prepared)
    for scale in (10, 20):
        backend.predict(prepared, x)  # evaluation leaves eval mode; the next step calls train()
        trainer.step(x * scale, y, 0.01)
    assert np.array_equal(_bn_means(backend_name, prepared), frozen_means), "frozen batch-norm statistics moved"
    backend.recalibrate_bn(prepared, iter([x * 30]))
    assert not np.array_equal(_bn_means(backend_name, prepared), frozen_means), "recalibration skipped frozen BN"
    assert _same(_qat_ranges(backend_name, prepared), frozen), "frozen ranges moved"
    after = backend.state_to_numpy(prepared)
    assert any(not np.array_equal(after[k], weights[k]) for k in weights if k.endswith("weight"))


@pytest.mark.torch
def test_torch_qat_conv_bn_recalibration_keeps_precise_statistics_precise():
    """torch.ao's QAT conv-BN modules scale their weights by the running statistics before fake-quantizing them:
    resetting those statistics for a recalibration pass would scale the weights out of their learned range and
    collect the statistics of a different convolution. Recalibrating a QAT model whose statistics are already the
    precise ones for the batches must leave them (and the predictions) almost unchanged."""
    import torch
    from backends.base import load_backend
    from backends.torch.train import QAT_CONV_BN
    from common.config import ModelConfig
    from common.stages.quantize import QuantizeStage
    backend = load_backend("torch")
    backend.configure(2, "cpu", 0)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((32, 3, 16, 16)) * 20).astype(np.float32) for _ in range(3)]
    model = backend.build_model(ModelConfig(arch="tiny_cnn"), 10)
    backend.recalibrate_bn(model, iter(batches))  # fp32: precise statistics, conv outputs' std far from 1
    cfg = QuantizeStage(name="q", model="m", mode="qat")
    prepared = backend.prepare_qat(model, cfg, batches[0][:2])
    assert any(isinstance(m, QAT_CONV_BN) for m in prepared.modules())
    prepared.train()
    with torch.no_grad():  # the observers see the batches once, with the statistics in place
        for x in batches:
            prepared(torch.from_numpy(x))
    backend.freeze_qat_statistics(prepared)
    before = backend.predict(prepared, batches[0])
    var_before = [m.bn.running_var.clone() for m in prepared.modules() if isinstance(m, QAT_CONV_BN)]
    backend.recalibrate_bn(prepared, iter(batches))
    var_after = [m.bn.running_var.clone() for m in prepared.modules() if isinstance(m, QAT_CONV_BN)]
    for a, b in zip(var_before, var_after):
        assert torch.allclose(a, b, rtol=0.05), "recalibration collected the statistics of another convolution"
    after = backend.predict(prepared, batches[0])
    assert (before.argmax(1) == after.argmax(1)).mean() > 0.95
    # Frozen (freeze_qat_statistics froze BN too) and with statistics far off: recalibration must still find the
    # precise ones, normalizing every layer with batch statistics as it goes (not with the stale ones it replaces).
    for m in prepared.modules():
        if isinstance(m, QAT_CONV_BN):
            m.bn.running_var.mul_(4)
            m.bn.running_mean.add_(1)
    backend.recalibrate_bn(prepared, iter(batches))
    for a, m in zip(var_after, [m for m in prepared.modules() if isinstance(m, QAT_CONV_BN)]):
        assert torch.allclose(a, m.bn.running_var, rtol=0.05), "a frozen model's recalibration used stale statistics"
