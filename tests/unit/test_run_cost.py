"""benchmarks/run_cost.py on committed result files: the parts add up to each backend's wall time, and the
throughput table refuses a ceiling measured on another CPU."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import run_cost  # noqa: E402

from common.results import load_results, read_json  # noqa: E402

RUN = ROOT / "reports" / "compress_resnet50_mobilenet"  # train, distill, prune, quantize, evaluate, export


def test_the_parts_of_every_stage_add_up_to_its_time():
    meta = read_json(RUN / "run.json")
    for r in load_results(RUN):
        for st in r["stages"]:
            parts = run_cost.stage_parts(st, meta)
            assert sum(parts.values()) == pytest.approx(st["time_s"])
            assert all(v >= -1e-6 for v in parts.values()), (st["name"], parts)
        export = next(s for s in r["stages"] if s["type"] == "export")
        assert run_cost.stage_parts(export, meta)["latency measurement"] > 0


def test_the_cost_table_names_the_run_and_gives_each_backends_wall_time():
    table = run_cost.cost_table(RUN)
    assert table.startswith("### compress_resnet50_mobilenet (profile default, seeds 0, 1, 2")
    assert "| part | paddle | torch |" in table and "**wall time**" in table
    assert all(part in table for part in run_cost.PARTS)


@pytest.mark.torch
def test_no_share_of_a_ceiling_measured_on_another_machine():
    peak = {"cpu": "some other CPU", "fp32_gemm_gflops": 100.0, "fp32_conv3x3_gflops": 90.0, "int8_gemm_gops": 200}
    table = run_cost.throughput_table(RUN, peak)
    assert "no share of the ceiling is given for another machine" in table
    assert "`train_teacher` training step (batch 64) | torch |" in table and "| - |" in table
