"""Writes common/stages/distill_layers.json: which layer names distillation can tap on both backends.

Why a committed table: a recipe names layers in canonical (torchvision) naming and is validated before any
worker starts, without importing a framework; this generator, which needs both, builds the table from the
real models and tests/integration/test_distill_layers.py checks the committed file still equals its output.

Where paddle.vision uses torchvision's module names (ResNet, MobileNetV2, the tiny pair) a name maps to itself.
MobileNetV3 differs (`conv`, `blocks.N`, `lastconv`): there the block-level names map through the stage order,
and every mapped pair is checked to give the same output shape on a probe input.

    python -m backends.layer_table > common/stages/distill_layers.json
"""
from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _mobilenet_v3_map(torch_model: Any, paddle_model: Any) -> dict[str, str]:
    """canonical block name -> paddle.vision block name, in stage order."""
    n_blocks = len(list(paddle_model.blocks.children()))
    mapping = {"features.0": "conv", f"features.{n_blocks + 1}": "lastconv"}
    mapping.update({f"features.{i + 1}": f"blocks.{i}" for i in range(n_blocks)})
    if len(list(torch_model.features.children())) != n_blocks + 2:
        raise ValueError("torchvision and paddle.vision MobileNetV3 have different stage counts")
    return mapping


def arch_table(arch: str) -> dict[str, Any]:
    import torch

    from backends.paddle.distill import feature_shapes as paddle_shapes
    from backends.paddle.models import build_model as paddle_build
    from backends.torch.distill import feature_shapes as torch_shapes
    from backends.torch.models import build_model as torch_build
    from common.config import ModelConfig
    tm, pm = torch_build(ModelConfig(arch=arch), 10), paddle_build(ModelConfig(arch=arch), 10)
    torch_names = [n for n, _ in tm.named_modules() if n]
    paddle_names = [n for n, _ in pm.named_sublayers() if n]
    mapping = {n: n for n in torch_names if n in set(paddle_names)}
    if arch.startswith("mobilenet_v3"):
        mapping.update(_mobilenet_v3_map(tm, pm))
    # The shapes the distill stage itself probes with (backends/<name>/distill.feature_shapes): a name both
    # frameworks have but whose outputs differ in shape, or that gives no tensor, is not a layer to tap.
    probe = np.zeros((1, 3, 32, 32), np.float32)
    ts = torch_shapes(tm, list(mapping), probe, torch.device("cpu"))
    ps = paddle_shapes(pm, list(mapping.values()), probe)
    mapping = {c: p for c, p in mapping.items() if ts[c][0] and ts[c][0] == ps[p][0]}
    mapped_paddle = set(mapping.values())
    return {"layers": list(mapping),
            "paddle_names": {c: p for c, p in mapping.items() if c != p},
            "torch_only": [n for n in torch_names if n not in mapping],
            "paddle_only": [n for n in paddle_names if n not in mapped_paddle]}


def table() -> dict[str, Any]:
    from backends.torch.models import TINY_WIDTHS, TORCHVISION_ARCHS
    return {arch: arch_table(arch) for arch in (*TORCHVISION_ARCHS, *TINY_WIDTHS)}


def main() -> None:
    json.dump(table(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
