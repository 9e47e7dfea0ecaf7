"""The recipe's shared settings as frozen dataclasses: data, models, optimizers, schedules, measurement, runtime.

Stage types keep their own config in their module (common/stages/<type>.py) and build on these; the recipe
(common/recipe/loader.py) assembles everything and validates it with common/schema.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from common.schema import bounds

MODEL_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "tiny_cnn", "tiny_cnn_small")
BACKENDS = ("torch", "paddle")
PROFILES_BUILTIN = ("smoke", "default", "paper")
MAX_MEASURE_BATCH = 1024
# A recipe name becomes a directory under --out: one path component of safe characters, never "." or "..".
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Class counts known without reading the data (imagefolder is counted from its class folders in the worker).
DATASET_CLASSES = {"digits": 10, "mnist5k": 10, "cifar10": 10, "cifar100": 100}
# Nesting deeper than this is not a recipe (and unbounded nesting exhausts Python's recursion limit).
MAX_YAML_DEPTH = 50
# Checkpoint suffix -> the framework that reads it (None: numpy alone).
WEIGHT_FORMATS = {".pth": "torch", ".pt": "torch", ".pdparams": "paddle", ".npz": None}


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = field(default=0, metadata=bounds(ge=0))
    hflip: bool = False


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["digits", "mnist5k", "synthetic", "cifar10", "cifar100", "imagefolder"] = "digits"
    path: str | None = None
    image_size: int = field(default=32, metadata=bounds(ge=8))
    val_fraction: float = field(default=0.2, metadata=bounds(gt=0, lt=1))
    split_seed: int = 0
    train_limit: int | None = field(default=None, metadata=bounds(gt=0))
    val_limit: int | None = field(default=None, metadata=bounds(gt=0))
    batch_size: int = field(default=64, metadata=bounds(gt=0))
    eval_batch_size: int = field(default=256, metadata=bounds(gt=0))
    augment: AugmentConfig = AugmentConfig()
    synthetic_samples: int = field(default=512, metadata=bounds(gt=1))
    synthetic_classes: int = field(default=10, metadata=bounds(gt=1))


@dataclass(frozen=True)
class ModelConfig:
    arch: str = field(metadata={"choices": MODEL_ARCHS})
    num_classes: int | None = field(default=None, metadata=bounds(gt=1))
    small_input: bool = False
    dropout: float | None = field(default=None, metadata=bounds(ge=0, lt=1))
    # A checkpoint to start from instead of random weights: a PyTorch state_dict (.pth/.pt, torchvision
    # naming), a Paddle .pdparams (paddle.vision naming) or slimbench's canonical .npz (common/weights.py).
    weights: str | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.1, metadata=bounds(gt=0, le=100))  # 1e300 only overflowed mid-training
    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=bounds(ge=0, le=1))


@dataclass(frozen=True)
class ScheduleConfig:
    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = field(default=0.0, metadata=bounds(ge=0))
    milestones: tuple[int, ...] = ()
    gamma: float = field(default=0.1, metadata=bounds(gt=0, le=1))
    min_lr: float = field(default=0.0, metadata=bounds(ge=0))


@dataclass(frozen=True)
class MeasureConfig:
    # Bounded: 0 or a negative size timed nothing, and a huge one exhausted memory in the timing loop.
    batch_sizes: tuple[int, ...] = field(default=(1, 32), metadata={"nonempty": True, **bounds(ge=1, le=MAX_MEASURE_BATCH)})
    warmup: int = field(default=10, metadata=bounds(ge=0))
    repeats: int = field(default=30, metadata=bounds(gt=0))


@dataclass(frozen=True)
class RuntimeConfig:
    threads: int | None = field(default=None, metadata=bounds(gt=0))
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Training-speed options applied by the torch backend (autocast, NHWC memory format, torch.compile of the
    # training forward). The paddle backend records them as not applied; the report lists the difference.
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    # Each framework's fastest correct CPU training configuration for models with depthwise convolutions
    # (torch: channels_last; paddle: a to_static program with oneDNN depthwise kernels). false: plain eager
    # defaults. Measured in benchmarks/paddle_cpu_training.py; recorded in every result.
    cpu_tuning: bool = True


@dataclass(frozen=True)
class TimingConfig:
    """The paired timing phase after every backend and seed has finished (common/run/paired_timing.py): each
    exported and int8 artifact timed again in fresh processes, backends alternating A B B A, so a cross-framework
    latency difference is measured at the same time on the same machine. `rounds` processes per backend and seed
    (2: A B B A); the report pools their timings and uses them instead of the per-stage ones."""
    paired: bool = True
    rounds: int = field(default=2, metadata=bounds(ge=1, le=10))


@dataclass(frozen=True)
class ParityConfig:
    """How closely a backend's logits at initialisation must match the reference framework's.

    `rtol` bounds eval-mode logits. `batch_stats_rtol` bounds the logits with batch statistics, compared where
    eval-mode logits are degenerate: normalising by the variance of a few values per channel (8 probe images at
    1x1 maps) amplifies float32 rounding. On a 2-core Intel Xeon (AVX-512) MobileNetV2 at initialisation on the
    digits probe gave torch float32 7.8e-5 and Paddle 7.6e-5 off the float64 result, and 1.28e-4 off each
    other; a conversion error (a transposed kernel, a missing layer) gives differences of order 1."""
    rtol: float = field(default=1e-4, metadata=bounds(gt=0))
    batch_stats_rtol: float = field(default=1e-3, metadata=bounds(gt=0))
    probe_batch: int = field(default=8, metadata=bounds(gt=0))
