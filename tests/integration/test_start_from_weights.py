"""Starting from real weights (models.<slot>.weights) on both backends, through the real CLI: a torchvision
state_dict and a paddle.vision .pdparams, each read by its own framework, converted, parity-checked on the other;
bad checkpoints stop the run with one line naming the file; mnist5k gives both backends the same split."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.integration.test_run_recipe import ROOT, cli

pytestmark = [pytest.mark.torch, pytest.mark.paddle]


def _recipe(tmp: Path, arch: str, weights: str, reference: str = "torch", **data) -> Path:
    path = tmp / "start.yaml"
    path.write_text(yaml.safe_dump({
        "name": "start", "description": "start from a checkpoint", "seeds": [0], "reference_framework": reference,
        "data": {"dataset": "synthetic", "image_size": 16, "synthetic_samples": 96, "batch_size": 32,
                 "eval_batch_size": 64, **data},
        "models": {"net": {"arch": arch, "weights": str(tmp / weights)}},
        "stages": [{"evaluate": {"name": "evaluate", "models": ["net"]}}]}))
    return path


def _make(code: str, tmp: Path) -> None:
    """Checkpoints are written in a process of their own framework (frameworks never share one)."""
    subprocess.run([sys.executable, "-c", code], cwd=tmp, check=True, env={"PYTHONPATH": str(ROOT)},
                   capture_output=True)


def _run(tmp: Path, recipe: Path) -> tuple[subprocess.CompletedProcess, Path]:
    p = cli("run-recipe", str(recipe), "--backend", "all", "--out", str(tmp / "runs"))
    runs = list((tmp / "runs" / "start").iterdir())
    return p, runs[0]


def test_a_torchvision_state_dict_starts_both_backends_with_its_head_reinitialised(tmp_path: Path):
    _make("import torch, torchvision; torch.manual_seed(3); "
          "torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), 'r18.pth')", tmp_path)
    p, run = _run(tmp_path, _recipe(tmp_path, "resnet18", "r18.pth"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "classifier head re-initialised from the run's seed (1000 classes in the file, 10 here)" in p.stdout
    init = dict(np.load(run / "init" / "seed-0" / "net.npz"))
    _make("import torch, numpy as np; sd = torch.load('r18.pth'); "
          "np.savez('file.npz', **{k: v.numpy() for k, v in sd.items() if 'num_batches' not in k})", tmp_path)
    file = dict(np.load(tmp_path / "file.npz"))
    assert all(np.array_equal(init[k], file[k]) for k in init if not k.startswith("fc."))
    assert init["fc.weight"].shape == (10, 512)
    for backend in ("torch", "paddle"):
        r = json.loads((run / backend / "seed-0" / "result.json").read_text())
        assert r["status"] == "ok" and r["init_parity"]["net"]["max_rel"] < 1e-4
        w = r["initial_weights"]["net"]
        assert w["read_by"] == "torch" and w["head_reinitialised"] and len(w["sha256"]) == 64
    report = (run / "report.md").read_text()
    assert "`net` starts from `r18.pth`" in report and "re-initialised from the run's seed" in report


def test_a_paddle_checkpoint_is_read_by_paddle_when_torch_is_the_reference(tmp_path: Path):
    _make("import paddle; from backends.paddle.models import build_model; from common.config import ModelConfig; "
          "paddle.seed(5); paddle.save(build_model(ModelConfig(arch='resnet18'), 10).state_dict(), 'r18.pdparams')",
          tmp_path)
    p, run = _run(tmp_path, _recipe(tmp_path, "resnet18", "r18.pdparams"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "read by paddle" in p.stdout
    for backend in ("torch", "paddle"):
        r = json.loads((run / backend / "seed-0" / "result.json").read_text())
        assert r["status"] == "ok" and r["init_parity"]["net"]["max_rel"] < 1e-4
        assert r["initial_weights"]["net"]["read_by"] == "paddle"
        assert not r["initial_weights"]["net"]["head_reinitialised"]


def test_a_checkpoint_is_converted_once_per_run_and_serves_every_seed(tmp_path: Path):
    _make("import paddle; from backends.paddle.models import build_model; from common.config import ModelConfig; "
          "paddle.seed(5); paddle.save(build_model(ModelConfig(arch='tiny_cnn'), 10).state_dict(), 't.pdparams')",
          tmp_path)
    recipe = _recipe(tmp_path, "tiny_cnn", "t.pdparams")
    p = cli("run-recipe", str(recipe), "--backend", "torch", "--seeds", "0,1", "--out", str(tmp_path / "runs"))
    assert p.returncode == 0, p.stdout + p.stderr
    run, = (tmp_path / "runs" / "start").iterdir()
    copies = list((run / "init" / "checkpoints").iterdir())
    assert len(copies) == 1 and copies[0].name.endswith(".tiny_cnn.npz")
    seeds = [dict(np.load(run / "init" / f"seed-{s}" / "net.npz")) for s in (0, 1)]
    assert all(np.array_equal(seeds[0][k], seeds[1][k]) for k in seeds[0])  # the file's weights, head included
    assert p.stdout.count("read by paddle") == 2


@pytest.mark.parametrize("arch,make,expected", [
    ("resnet50", "import torch, torchvision; torch.save(torchvision.models.resnet18().state_dict(), 'w.pth')",
     "w.pth: lacks tensor 'layer1.0.conv3.weight' of resnet50 (and"),
    ("resnet18", "open('w.pth', 'wb').write(b'PK not really')", "w.pth: not a PyTorch checkpoint torch.load can read"),
    ("resnet18", "import torch; torch.save([1, 2], 'w.pth')", "w.pth: expected a state_dict"),
    ("tiny_cnn", "import numpy as np; np.savez('w.npz', **{'features.0.weight': np.zeros((16, 3, 5, 5))})",
     "w.npz: lacks tensor"),
    ("mobilenet_v3_small", "open('w.pdparams', 'wb').write(b'x')", "for mobilenet_v3_small give a .pth or"),
])
def test_a_checkpoint_that_does_not_fit_stops_the_run_with_one_line(tmp_path: Path, arch: str, make: str,
                                                                   expected: str):
    _make(make, tmp_path)
    name = next(f.name for f in tmp_path.iterdir() if f.name.startswith("w."))
    p, run = _run(tmp_path, _recipe(tmp_path, arch, name))
    assert p.returncode != 0
    assert expected in p.stdout, p.stdout
    assert "Traceback" not in p.stdout.split("FAILED in init")[1]


def test_mnist5k_gives_both_backends_the_same_split(tmp_path: Path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "start", "description": "mnist5k", "seeds": [0],
        "data": {"dataset": "mnist5k", "image_size": 16, "train_limit": 320, "batch_size": 32},
        "models": {"net": {"arch": "tiny_cnn_small"}},
        "stages": [{"train": {"name": "train", "model": "net", "optimizer": {"lr": 0.05}}},
                   {"evaluate": {"name": "evaluate", "models": ["net"]}}]}))
    p = cli("run-recipe", str(recipe), "--backend", "all", "--out", str(tmp_path / "runs"))
    assert p.returncode == 0, p.stdout + p.stderr
    run, = (tmp_path / "runs" / "start").iterdir()
    data = [json.loads((run / b / "seed-0" / "result.json").read_text())["data"] for b in ("torch", "paddle")]
    assert data[0] == data[1]
    assert int(data[0]["val_size"]) == 1000 and int(data[0]["train_size"]) == 320
    counts = data[0]["val_class_counts"]  # 500 per class, a seeded 20% split: about 100 each
    assert sum(counts) == 1000 and min(counts) > 60


def test_weights_fetch_keeps_only_a_file_matching_torchvisions_published_hash(tmp_path: Path):
    """No test downloads: a local server stands in for a mirror and serves a file under torchvision's name whose
    content is not the published one; an unreachable mirror is a one-line error too."""
    import functools
    import http.server
    import threading
    served = tmp_path / "mirror"
    served.mkdir()
    (served / "resnet18-f37072fd.pth").write_bytes(b"not the published weights")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = cli("slimbench", "weights", "fetch", "resnet18", "--dir", str(tmp_path / "cache"), "--mirror",
                f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()  # the port is closed now: the next download is refused at once
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [
        f"error: http://127.0.0.1:{server.server_address[1]}/resnet18-f37072fd.pth: the download's sha256 does not "
        "start with f37072fd, the hash torchvision publishes for resnet18-f37072fd.pth; nothing kept"]
    assert list((tmp_path / "cache").iterdir()) == []
    p = cli("slimbench", "weights", "fetch", "mobilenet_v2", "--dir", str(tmp_path / "cache"), "--mirror",
            f"http://127.0.0.1:{server.server_address[1]}")
    assert p.returncode != 0 and p.stderr.startswith("error: cannot download http://127.0.0.1")
    assert len(p.stderr.strip().splitlines()) == 1
