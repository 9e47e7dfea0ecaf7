"""`slimbench report` / `compare` on damaged or foreign run directories: one line, exit 2, nothing overwritten;
reports that embed hostile text stay inert HTML; runs whose stages measured different batch sizes report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.cli import slimbench
from common.results import SCHEMA_VERSION, atomic_write_json
from common.run.runner import _mark_crashed

META = {"recipe_name": "kd", "recipe_source": "kd.yaml", "profile": "default", "backends": ["torch", "paddle"],
        "seeds": [0], "threads": 2, "command": "run-recipe kd", "created_at": "2026-12-01T00:00:00+0000",
        "recipe_digest": "abc", "recipe": {"description": "d", "stages": []}}


def export_stage(batch_sizes: list[int]) -> dict:
    lat = {str(bs): {"p50_ms": 1.0 * bs, "p90_ms": 1.2 * bs} for bs in batch_sizes}
    model = {"size_bytes": 1000, "size_mb": 0.001, "params": 10, "macs": 100, "flops": 200, "artifact_top1": 0.9,
             "latency": lat, "runtime": "eager", "format": "pt2"}
    return {"name": f"export_{'_'.join(map(str, batch_sizes))}", "type": "export", "status": "ok",
            "models": {"net": model}}


def result(backend: str, stages: list[dict], error: dict | None = None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "backend": backend, "seed": 0, "status": "failed" if error else "ok",
            "run_id": "run-1", "error": error, "stages": stages,
            "environment": {"threads": 2, "device": "cpu", "versions": {backend: "1"}}}


def make_run(root: Path, results: list[dict], meta: dict = META) -> Path:
    run = root / "kd" / "run-1"
    for r in results:
        atomic_write_json(run / r["backend"] / "seed-0" / "result.json", r)
    atomic_write_json(run / "run.json", meta)
    return run


def one_line_error(capsys, argv: list[str]) -> str:
    code = slimbench(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


DAMAGE = [
    ("truncated-json", lambda p: p.write_text(p.read_text()[:40]), "not valid JSON"),
    ("binary", lambda p: p.write_bytes(b"\x00\xff\xfe garbage"), "not valid JSON"),
    ("a-list", lambda p: p.write_text("[1, 2]"), "expected a JSON object, got list"),
    ("missing-backend", lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items()
                                                           if k != "backend"})), "backend: expected str, got missing"),
    ("stages-not-list", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "stages": {}})),
     "stages: expected list"),
    ("stage-not-object", lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "stages": [3]})),
     "stages[0]: expected an object"),
    ("metric-not-number", lambda p: p.write_text(p.read_text().replace('"p50_ms": 1.0', '"p50_ms": "fast"')),
     "stages[0].models.net.latency.1.p50_ms: expected a number"),
    ("deep-key-missing", lambda p: p.write_text(p.read_text().replace('"artifact_top1"', '"artifact_top_1"')),
     "lacks a value the report needs"),
]


@pytest.mark.parametrize("damage,expected", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_report_on_damaged_result_files_is_one_line(tmp_path: Path, capsys, damage, expected):
    run = make_run(tmp_path, [result("torch", [export_stage([1, 32])])])
    damage(run / "torch" / "seed-0" / "result.json")
    assert expected in one_line_error(capsys, ["report", str(run)])


@pytest.mark.parametrize("damage,expected", [
    (lambda p: p.write_text("{"), "not valid JSON"),
    (lambda p: p.write_text('"x"'), "expected a JSON object"),
    (lambda p: p.write_text(json.dumps({**META, "backends": "torch"})), "backends: expected list"),
])
def test_report_and_compare_on_damaged_run_json(tmp_path: Path, capsys, damage, expected):
    run = make_run(tmp_path, [result("torch", [export_stage([1])])])
    damage(run / "run.json")
    assert expected in one_line_error(capsys, ["report", str(run)])
    assert expected in one_line_error(capsys, ["compare", str(run), str(run)])


def test_report_out_never_replaces_another_runs_files(tmp_path: Path, capsys):
    run_a = make_run(tmp_path / "a", [result("torch", [export_stage([1])])])
    run_b = make_run(tmp_path / "b", [result("paddle", [export_stage([1])])], {**META, "created_at": "other"})
    before = {p: p.read_bytes() for p in run_b.rglob("*") if p.is_file()}
    assert "holds another run" in one_line_error(capsys, ["report", str(run_a), "--out", str(run_b)])
    assert {p: p.read_bytes() for p in run_b.rglob("*") if p.is_file()} == before
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert "holds other files" in one_line_error(capsys, ["report", str(run_a), "--out", str(other)])
    assert "must not be inside" in one_line_error(capsys, ["report", str(run_a), "--out", str(run_a / "torch")])
    # a new directory, then the same one again (an earlier report of the same run), are fine
    assert slimbench(["report", str(run_a), "--out", str(tmp_path / "pub")]) == 0
    assert slimbench(["report", str(run_a), "--out", str(tmp_path / "pub")]) == 0
    assert json.loads((tmp_path / "pub" / "run.json").read_text()) == META


def test_compare_out_never_overwrites(tmp_path: Path, capsys):
    run = make_run(tmp_path, [result("torch", [export_stage([1])])])
    existing = tmp_path / "cmp.md"
    existing.write_text("keep me")
    assert "never overwrites" in one_line_error(capsys, ["compare", str(run), str(run), "--out", str(existing)])
    assert existing.read_text() == "keep me"
    assert slimbench(["compare", str(run), str(run), "--out", str(tmp_path / "new.md")]) == 0
    assert (tmp_path / "new.md").read_text().strip()


def test_export_stages_with_different_batch_sizes_report(tmp_path: Path):
    """Two export stages measured at different batch sizes: every size gets a column, '–' where not measured."""
    run = make_run(tmp_path, [result(b, [export_stage([1, 32]), export_stage([1, 8])]) for b in ("torch", "paddle")])
    assert slimbench(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model | backend | params"))
    assert "batch 1 latency" in header and "batch 8 latency" in header and "batch 32 latency" in header
    assert header.index("batch 8") < header.index("batch 32")


def test_hostile_text_from_results_is_escaped_in_html(tmp_path: Path):
    hostile = '<img src=x onerror="alert(1)"> <script>alert(2)</script> [click](javascript:alert(3))'
    run = make_run(tmp_path, [result("torch", [export_stage([1])]),
                              result("paddle", [], {"type": "Boom", "stage": "train", "message": hostile})],
                   {**META, "recipe": {"description": hostile, "stages": []}})
    assert slimbench(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "<img src=x" not in page and "<script>" not in page and "javascript:" not in page
    assert "&lt;img src=x onerror=" in page and "&lt;script&gt;" in page


def test_a_worker_that_fails_while_starting_is_reported_with_its_real_error(tmp_path: Path):
    log = tmp_path / "log.txt"
    log.write_text("$ python -m common.run.worker run ...\nTraceback (most recent call last):\n  File x\n"
                   "ModuleNotFoundError: No module named 'torchvision'\n# exit code 1\n")
    path = tmp_path / "torch" / "seed-0" / "result.json"
    _mark_crashed(path, 1, "torch", 0, log)
    err = json.loads(path.read_text())["error"]
    assert err["stage"] == "setup" and "No module named 'torchvision'" in err["message"]
    assert "exit code 1" in err["message"]


def test_a_worker_killed_mid_stage_names_the_stage(tmp_path: Path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {**result("torch", [{"name": "train_teacher", "type": "train", "status": "running"}]),
                             "status": "running"})
    log = tmp_path / "log.txt"
    log.write_text("[slimbench] train_teacher  epoch 1/3  step 4/22\n")
    _mark_crashed(path, -9, "torch", 0, log)
    data = json.loads(path.read_text())
    assert data["status"] == "failed" and data["error"]["stage"] == "train_teacher"
    assert "killed by SIGKILL" in data["error"]["message"] and data["stages"][0]["status"] == "failed"
