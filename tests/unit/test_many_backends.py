"""A third backend (say an ONNX-only one) must not drop the decision summary or any comparison: each other
backend is compared with the first (the reference), titles, colours and order come from common/backend_names."""
from __future__ import annotations

import json
from pathlib import Path

from common.cli import slimbench
from common.results import SCHEMA_VERSION, atomic_write_json

META = {"recipe_name": "kd", "recipe_source": "kd.yaml", "profile": "default", "backends": ["torch", "paddle", "onnx"],
        "seeds": [0, 1, 2], "threads": 2, "command": "run-recipe kd", "created_at": "x", "recipe_digest": "abc",
        "recipe": {"description": "d", "stages": []}}


def result(backend: str, seed: int, top1: float, ms: float) -> dict:
    export = {"name": "export", "type": "export", "status": "ok", "models": {"net": {
        "size_bytes": 1000, "size_mb": 0.001, "params": 10, "macs": 100, "flops": 200, "artifact_top1": top1,
        "latency": {"1": {"p50_ms": ms, "p90_ms": ms * 1.1, "load": {"background_cores": 0.0, "contended": False,
                                                                    "threshold_cores": 0.1}}},
        "runtime": "ONNX Runtime 1.32.0 (shared)", "format": "file"}}}  # like with like: verdicts allowed
    evaluate = {"name": "evaluate", "type": "evaluate", "status": "ok",
                "models": {"net": {"top1": top1, "top5": 1.0, "loss": 0.3}}}
    return {"schema_version": SCHEMA_VERSION, "backend": backend, "seed": seed, "status": "ok", "run_id": "run-1",
            "error": None, "stages": [evaluate, export],
            "environment": {"threads": 2, "device": "cpu", "versions": {backend: "1"}}}


def test_three_backends_get_every_comparison(tmp_path: Path):
    run = tmp_path / "kd" / "run-1"
    figures = {"torch": (0.90, 5.0), "paddle": (0.91, 3.0), "onnx": (0.89, 1.0)}
    for b, (top1, ms) in figures.items():
        for seed in (0, 1, 2):
            atomic_write_json(run / b / f"seed-{seed}" / "result.json", result(b, seed, top1 + seed * 0.01, ms + seed))
    atomic_write_json(run / "run.json", META)
    assert slimbench(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert md.startswith("# kd: PyTorch vs PaddlePaddle vs onnx")
    assert "### PaddlePaddle against PyTorch" in md and "### onnx against PyTorch" in md
    assert "Δ top-1 (PaddlePaddle − PyTorch)" in md and "Δ top-1 (onnx − PyTorch)" in md
    assert "## What differs between the runs" in md
    summary = json.loads((run / "results.json").read_text())["summary"]
    latency = next(r for r in summary if r["group"] == "latency")
    assert set(latency["differences"]) == {"paddle", "onnx"}
    assert latency["differences"]["onnx"]["ahead"] == "onnx"
    assert (run / "plots" / "accuracy_vs_latency.png").is_file()
