"""`pretrain`: a recipe's stand-in for a user's checkpoint.

A recipe built around a user checkpoint (`models.<slot>.weights`) must still run, and be tested, where nobody
has one. For each slot listed under `pretrain` that has no `weights` file, the runner first trains the slot from
scratch with one framework in a sub-run of its own (RUN/pretrain/<slot>/, an ordinary run directory) and writes
the result as that framework's own user-format file (a torchvision `.pth` state dict, or a paddle.vision
`.pdparams`). The run then starts the slot from that file exactly as from a user's: the same reader, the same
conversion to the other framework, the same fit and the same parity check. A slot that does have `weights`
(e.g. `--set models.teacher.weights=mine.pth`) skips its pretrain: the user's file wins.

The recorded recipe stays the user's; run.json's `pretrained` says which file stands in for which slot, and
workers read the slot's weights from there (common/run/worker.load_run_recipe).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.config import OptimizerConfig, ScheduleConfig
from common.errors import SlimbenchError
from common.schema import bounds
from common.weights import file_sha256

USER_FORMAT = {"torch": ".pth", "paddle": ".pdparams"}  # the file each framework's users save and load


@dataclass(frozen=True)
class PretrainConfig:
    """How the stand-in checkpoint of one slot is trained: one framework, one seed, plain cross-entropy."""
    framework: Literal["torch", "paddle"] = "torch"
    epochs: int = field(default=1, metadata=bounds(gt=0))
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))
    seed: int = field(default=0, metadata=bounds(ge=0, lt=2**31))


class PretrainFailed(SlimbenchError):
    """The sub-run that writes a stand-in checkpoint failed: the run cannot start that slot."""


def pending(recipe: Any) -> dict[str, PretrainConfig]:
    """The slots whose stand-in checkpoint must be written: listed under `pretrain`, no `weights` of their own."""
    return {slot: cfg for slot, cfg in recipe.pretrain.items() if recipe.models[slot].weights is None}


def checkpoint_path(run_dir: Path, slot: str, cfg: PretrainConfig) -> Path:
    return run_dir / "pretrain" / f"{slot}{USER_FORMAT[cfg.framework]}"


def sub_recipe_data(recipe: Any, slot: str, cfg: PretrainConfig) -> dict[str, Any]:
    """The sub-run's recipe: the same data, the slot alone (without weights), one `train` stage, one seed."""
    raw = recipe.raw
    model = {k: v for k, v in raw["models"][slot].items() if k != "weights"}
    return {"name": f"pretrain-{slot}"[:100],
            "description": f"stand-in checkpoint of slot '{slot}' for recipe {recipe.name} (its `pretrain`)",
            "data": raw["data"], "models": {slot: model},
            "stages": [{"train": {"name": f"pretrain_{slot}", "model": slot, "epochs": cfg.epochs,
                                  "optimizer": asdict(cfg.optimizer), "schedule": asdict(cfg.schedule),
                                  "bn_recalibration_batches": cfg.bn_recalibration_batches}}],
            "seeds": [cfg.seed], "reference_framework": cfg.framework,
            **{k: raw[k] for k in ("runtime", "parity") if k in raw}}


def write_weights_args(sub_dir: Path, slot: str, cfg: PretrainConfig, target: Path) -> list[str]:
    """Arguments of the `write-weights` worker that saves the sub-run's trained weights (its canonical .npz) as
    the framework's user-format file and reads it back to check it (common/run/worker.cmd_write_weights)."""
    trained = sub_dir / cfg.framework / f"seed-{cfg.seed}" / "checkpoints" / f"{slot}.npz"
    return [str(trained), "--backend", cfg.framework, "--run", str(sub_dir), "--slot", slot, "--out", str(target)]


def pretrain_record(sub_dir: Path, slot: str, cfg: PretrainConfig, target: Path, result: dict) -> dict[str, Any]:
    """What run.json keeps about a stand-in checkpoint, and the report shows."""
    stage = next((s for s in result.get("stages", []) if s.get("name") == f"pretrain_{slot}"), {})
    return {"file": str(target), "sha256": file_sha256(target), "framework": cfg.framework, "epochs": cfg.epochs,
            "seed": cfg.seed, "val_top1": (stage.get("final") or {}).get("val_top1"),
            "train_time_s": stage.get("train_time_s"), "run": str(sub_dir.name)}
