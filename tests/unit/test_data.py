from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from common.data import BatchStream, load_dataset
from common.errors import DataError
from common.config import AugmentConfig, DataConfig


def batches(cfg: DataConfig, seed: int, epoch: int = 0, n: int = 3):
    stream = BatchStream(load_dataset(cfg), cfg, seed)
    out = []
    for i, b in enumerate(stream.train_epoch(epoch)):
        if i == n:
            break
        out.append(b)
    return out


def test_digits_is_the_real_bundled_dataset_resized_to_3x32x32():
    data = load_dataset(DataConfig())
    assert len(data.train) + len(data.val) == 1797 and data.num_classes == 10
    x = data.val.take(np.arange(4))
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
    assert np.array_equal(x[:, 0], x[:, 1])  # replicated channels
    assert np.array_equal(x[..., 0:4, 0:4].min(axis=(-1, -2)), x[..., 0:4, 0:4].max(axis=(-1, -2)))  # 4x4 blocks


def test_same_seed_same_batches_other_seed_other_order():
    cfg = DataConfig(augment=AugmentConfig(crop_padding=2, hflip=True))
    a, b, c = batches(cfg, 0), batches(cfg, 0), batches(cfg, 1)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a[0][1], c[0][1])
    assert not np.array_equal(batches(cfg, 0, epoch=1)[0][1], a[0][1])


def test_recalibration_draw_is_fixed_per_seed_and_not_an_epochs_batches():
    """Batch norm is recalibrated on the same images before every validation, so a change in top-1 between epochs
    is the weights'; the draw depends on the run seed (both backends of a seed share it), not on the epoch."""
    cfg = DataConfig(augment=AugmentConfig(crop_padding=2, hflip=True))
    stream = BatchStream(load_dataset(cfg), cfg, 0)
    first, again = list(stream.recalibration_batches(3)), list(stream.recalibration_batches(3))
    assert len(first) == 3 and all(x.shape == (cfg.batch_size, 3, 32, 32) for x in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    other_seed = next(BatchStream(load_dataset(cfg), cfg, 1).recalibration_batches(1))
    assert not np.array_equal(first[0], other_seed)
    assert not any(np.array_equal(first[0], batches(cfg, 0, epoch=e, n=1)[0][0]) for e in range(4))
    assert len(list(stream.recalibration_batches(10_000))) == stream.steps_per_epoch


def test_digest_is_stable_across_processes_and_versions():
    """Pinned values: a change here means the data stream changed and old runs are no longer comparable."""
    cfg = DataConfig()
    d = BatchStream(load_dataset(cfg), cfg, 0).digest()
    assert d["split"] == "c320efe7984e16eb"
    assert d["first_batches"] == "5ca992e034f8801e"
    assert (d["train_size"], d["val_size"]) == ("1438", "359")


def test_split_does_not_depend_on_the_run_seed():
    cfg = DataConfig()
    a, b = BatchStream(load_dataset(cfg), cfg, 0).digest(), BatchStream(load_dataset(cfg), cfg, 7).digest()
    assert a["split"] == b["split"] and a["first_batches"] != b["first_batches"]


def test_normalization_uses_training_statistics():
    cfg = DataConfig(dataset="synthetic", image_size=8, synthetic_samples=200, batch_size=16)
    stream = BatchStream(load_dataset(cfg), cfg, 0)
    x = np.concatenate([b[0] for b in stream.train_epoch(0)])
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1
    assert stream.steps_per_epoch == 160 // 16


def test_val_batches_cover_the_split_in_fixed_order():
    cfg = DataConfig(eval_batch_size=100)
    stream = BatchStream(load_dataset(cfg), cfg, 0)
    labels = np.concatenate([y for _, y in stream.val_batches()])
    assert np.array_equal(labels, stream.data.val.labels)


def _write_cifar10(root: Path, n: int = 20) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, n))}, fh)


def test_cifar10_python_pickles(tmp_path: Path):
    _write_cifar10(tmp_path)
    data = load_dataset(DataConfig(dataset="cifar10", path=str(tmp_path), batch_size=8))
    assert len(data.train) == 100 and len(data.val) == 20 and data.num_classes == 10


def test_missing_or_corrupt_cifar_names_path_and_layout(tmp_path: Path):
    with pytest.raises(DataError, match=r"dataset not found: .*missing data_batch_1.*python-pickle files"):
        load_dataset(DataConfig(dataset="cifar10", path=str(tmp_path)))
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"corrupt dataset file .*test_batch"):
        load_dataset(DataConfig(dataset="cifar10", path=str(tmp_path)))


def test_imagefolder_tree(tmp_path: Path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(d / f"{i}.png")
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path), image_size=16, batch_size=4)
    data = load_dataset(cfg)
    assert data.num_classes == 2 and len(data.train) == 12 and len(data.val) == 4
    x, y = next(BatchStream(data, cfg, 0).train_epoch(0))
    assert x.shape == (4, 3, 16, 16)
    with pytest.raises(DataError, match="ImageNet layout"):
        load_dataset(replace(cfg, path=str(tmp_path / "nowhere")))


def _cifar_file(root: Path, name: str, payload) -> None:
    with open(root / "cifar-10-batches-py" / name, "wb") as fh:
        pickle.dump(payload, fh)


class _Exploit:
    """A pickle that would run a command when loaded by plain pickle.load."""

    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/slimbench-pwned",))


@pytest.mark.parametrize("payload,expected", [
    ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 19}, "20 images but 19 labels"),
    ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [12] * 20}, r"label 12 outside 0\.\.9"),
    ({b"data": np.zeros((20, 3072), np.uint8), b"labels": [-1] * 20}, r"label -1 outside 0\.\.9"),
    ([1, 2, 3], "expected a dict with keys b'data'"),
    ({b"data": np.zeros((20, 100), np.uint8), b"labels": [0] * 20}, "not N x 3072"),
    (_Exploit(), "refusing to load posix.system"),
])
def test_bad_cifar_files_are_data_errors_naming_the_file(tmp_path: Path, payload, expected):
    _write_cifar10(tmp_path)
    _cifar_file(tmp_path, "data_batch_3", payload)
    with pytest.raises(DataError, match=expected) as e:
        load_dataset(DataConfig(dataset="cifar10", path=str(tmp_path), batch_size=8))
    assert "data_batch_3" in str(e.value)
    assert not Path("/tmp/slimbench-pwned").exists()


def _image_tree(root: Path, layout: dict[str, dict[str, int]]) -> None:
    from PIL import Image
    for split, classes in layout.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(d / f"{i}.png")


@pytest.mark.parametrize("layout,expected", [
    ({"train": {"a": 3, "b": 0}, "val": {"a": 1, "b": 1}}, "empty class folder"),
    ({"train": {"a": 3, "b": 3}, "val": {"a": 1, "b": 0}}, "empty class folder"),
    ({"train": {"a": 3, "b": 3}, "val": {"a": 1}}, "no folder for class"),
    ({"train": {"a": 3}, "val": {"a": 1}}, "at least 2"),
])
def test_imagefolder_trees_that_cannot_be_classified_fairly(tmp_path: Path, layout, expected):
    _image_tree(tmp_path, layout)
    with pytest.raises(DataError, match=expected):
        load_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path), image_size=8, batch_size=2))


def test_limits_keep_every_class_and_are_seeded(tmp_path: Path):
    """A limit draws class by class: a class-sorted prefix (ImageFolder) would keep only the first classes."""
    _image_tree(tmp_path, {"train": {c: 6 for c in "abcd"}, "val": {c: 3 for c in "abcd"}})
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path), image_size=8, batch_size=2, train_limit=8,
                     val_limit=4)
    data = load_dataset(cfg)
    assert sorted(np.bincount(data.train.labels)) == [2, 2, 2, 2]
    assert sorted(np.bincount(data.val.labels)) == [1, 1, 1, 1]
    again = load_dataset(cfg)
    assert [str(f) for f in data.train.files] == [str(f) for f in again.train.files]
