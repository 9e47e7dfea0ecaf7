"""Recipe schema: YAML -> frozen dataclasses, profiles as overrides, `--set` overrides, stage registry.

Stages are registered by type name with `register_stage`; `validate` still knows each type's slot rules
(which stage trains, prunes or quantizes a slot), so a new stage type also touches `validate`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from common.errors import RecipeError, UsageError
from common.schema import bounds, convert, parse

MODEL_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "tiny_cnn", "tiny_cnn_small")
BACKENDS = ("torch", "paddle")
PROFILES_BUILTIN = ("smoke", "default", "paper")
MAX_MEASURE_BATCH = 1024
# A recipe name becomes a directory under --out: one path component of safe characters, never "." or "..".
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Class counts known without reading the data (imagefolder is counted from its class folders in the worker).
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}
# Nesting deeper than this is not a recipe (and unbounded nesting exhausts Python's recursion limit).
MAX_YAML_DEPTH = 50


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = field(default=0, metadata=bounds(ge=0))
    hflip: bool = False


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["digits", "synthetic", "cifar10", "cifar100", "imagefolder"] = "digits"
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


class _OneModelStage:
    """Slot bookkeeping for stages that read `model` and write `output` (default: the same slot)."""
    model: str
    output: str | None

    def outputs(self) -> tuple[str, ...]:
        return (self.output or self.model,)

    def inputs(self) -> tuple[str, ...]:
        return (self.model,)

    def derived_from(self) -> dict[str, str]:
        """output slot -> the input slot whose architecture it has."""
        return {self.output or self.model: self.model}


@dataclass(frozen=True)
class TrainStage(_OneModelStage):
    name: str
    model: str
    output: str | None = None
    epochs: int = field(default=1, metadata=bounds(gt=0))
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Recompute BN running statistics over this many training batches after the last epoch ("precise BN").
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))


@dataclass(frozen=True)
class DistillStage:
    name: str
    teacher: str
    student: str
    output: str | None = None
    method: Literal["hinton"] = "hinton"
    temperature: float = field(default=4.0, metadata=bounds(gt=0))
    alpha: float = field(default=0.9, metadata=bounds(ge=0, le=1))
    epochs: int = field(default=1, metadata=bounds(gt=0))
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    # Recompute BN running statistics over this many training batches after the last epoch ("precise BN").
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))

    def outputs(self) -> tuple[str, ...]:
        return (self.output or self.student,)

    def inputs(self) -> tuple[str, ...]:
        return (self.teacher, self.student)

    def derived_from(self) -> dict[str, str]:
        return {self.output or self.student: self.student}


@dataclass(frozen=True)
class PruneStage(_OneModelStage):
    """`magnitude`: unstructured, one-shot or gradual (AGP) while fine-tuning.
    `filter`: structured, removes output channels for real (one-shot; fine-tune with a following train stage)."""
    name: str
    model: str
    output: str | None = None
    method: Literal["magnitude", "filter"] = "magnitude"
    sparsity: float | None = field(default=None, metadata=bounds(ge=0, lt=1))  # magnitude: share of weights zeroed
    criterion: Literal["l1", "l2", "fpgm"] = "l1"  # filter: how filters are ranked
    # Prune the reference framework's trained weights on every backend (loaded from its canonical checkpoint),
    # so both backends prune the same model; false: each prunes the model it trained itself.
    start_from_reference: bool = True
    ratio: float | None = field(default=None, metadata=bounds(ge=0, lt=1))  # filter: share of channels per layer
    layer_ratios: dict[str, float] = field(default_factory=dict)  # filter: per-layer overrides (module names)
    scope: Literal["local", "global"] = "global"
    schedule: Literal["one_shot", "agp"] = "one_shot"
    skip_layers: tuple[str, ...] = ()
    prune_head: bool = False  # a global threshold otherwise removes MobileNetV2's whole classifier (DESIGN.md 5)
    # Depthwise convs ([C, 1, k, k]) hold few weights of small magnitude: a global threshold empties them
    # and disconnects the network (MobileNetV2 at 80% falls to chance), so they stay dense by default.
    skip_depthwise: bool = True
    # agp only: the sparsity ramps from initial_sparsity to sparsity while training for `epochs`
    initial_sparsity: float = field(default=0.0, metadata=bounds(ge=0, lt=1))
    epochs: int = field(default=1, metadata=bounds(gt=0))
    prune_every_steps: int = field(default=10, metadata=bounds(gt=0))
    ramp_end_fraction: float = field(default=0.75, metadata=bounds(gt=0, le=1))
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_schedule: ScheduleConfig = ScheduleConfig()
    bn_recalibration_batches: int = field(default=0, metadata=bounds(ge=0))


@dataclass(frozen=True)
class MeasureConfig:
    # Bounded: 0 or a negative size timed nothing, and a huge one exhausted memory in the timing loop.
    batch_sizes: tuple[int, ...] = field(default=(1, 32), metadata={"nonempty": True, **bounds(ge=1, le=MAX_MEASURE_BATCH)})
    warmup: int = field(default=10, metadata=bounds(ge=0))
    repeats: int = field(default=30, metadata=bounds(gt=0))


@dataclass(frozen=True)
class QuantizeStage:
    """int8 quantization of a trained model into a new slot (default `<model>_int8`), exported and measured
    against the fp32 model with the same inputs, warm-up, repeats and threads.

    `ptq_static`: observers calibrated on `calibration_batches` batches of the shared training stream.
    `dynamic`: Linear weights int8, activations quantized at run time (CNNs gain little: only the head is Linear).
    `qat`: fake-quant fine-tuning for `epochs` under `optimizer`/`schedule`, then conversion.
    """
    name: str
    model: str
    output: str | None = None
    mode: Literal["ptq_static", "dynamic", "qat"] = "ptq_static"
    # How activation ranges are estimated (ptq_static): named the same on both backends; each backend
    # records which of its observers/algorithms realises it.
    calibration: Literal["histogram", "minmax", "moving_average"] = "histogram"
    calibration_batches: int = field(default=8, metadata=bounds(gt=0))
    per_channel_weights: bool = True
    # Quantize the reference framework's trained weights on every backend (as prune does), so the two
    # toolchains quantize the same fp32 model; false: each quantizes the model it trained itself.
    start_from_reference: bool = True
    epochs: int = field(default=1, metadata=bounds(gt=0))  # qat only
    optimizer: OptimizerConfig = OptimizerConfig(name="sgd", lr=0.001, weight_decay=0.0)  # qat only
    schedule: ScheduleConfig = ScheduleConfig()  # qat only
    measure: MeasureConfig = MeasureConfig()

    def outputs(self) -> tuple[str, ...]:
        return (self.output or f"{self.model}_int8",)

    def inputs(self) -> tuple[str, ...]:
        return (self.model,)

    def derived_from(self) -> dict[str, str]:
        return {self.outputs()[0]: self.model}


@dataclass(frozen=True)
class EvaluateStage:
    name: str
    models: tuple[str, ...] = field(metadata={"nonempty": True})

    def outputs(self) -> tuple[str, ...]:
        return ()

    def inputs(self) -> tuple[str, ...]:
        return self.models

    def derived_from(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class ExportStage:
    name: str
    models: tuple[str, ...] = field(metadata={"nonempty": True})
    measure: MeasureConfig = MeasureConfig()

    def outputs(self) -> tuple[str, ...]:
        return ()

    def inputs(self) -> tuple[str, ...]:
        return self.models

    def derived_from(self) -> dict[str, str]:
        return {}


STAGE_TYPES: dict[str, type] = {}


def register_stage(type_name: str, config_cls: type) -> None:
    """Make a stage type available to recipes. Its config needs `name`, `inputs()`, `outputs()` and
    `derived_from()` (output slot -> input slot it is built from)."""
    STAGE_TYPES[type_name] = config_cls


for _t, _c in (("train", TrainStage), ("distill", DistillStage), ("prune", PruneStage),
               ("quantize", QuantizeStage), ("evaluate", EvaluateStage), ("export", ExportStage)):
    register_stage(_t, _c)


@dataclass(frozen=True)
class Stage:
    """One pipeline step: its type name and its validated config."""
    type: str
    config: Any

    @property
    def name(self) -> str:
        return self.config.name


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
class ParityConfig:
    rtol: float = field(default=1e-4, metadata=bounds(gt=0))
    probe_batch: int = field(default=8, metadata=bounds(gt=0))


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    data: DataConfig
    models: dict[str, ModelConfig]
    stages: tuple[Stage, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    reference_framework: Literal["torch", "paddle"] = "torch"
    runtime: RuntimeConfig = RuntimeConfig()
    parity: ParityConfig = ParityConfig()
    profile: str = "default"
    source: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def digest(self) -> str:
        """Hash of the resolved recipe without its seed list, recorded in results so reports can tell runs of
        different recipes apart; seeds are replicates of one experiment (a run extended by more seeds keeps it)."""
        return recipe_digest(self.raw)


def recipe_digest(raw: dict) -> str:
    """sha256 (16 hex digits) of a resolved recipe's data without its seed list."""
    body = {k: v for k, v in raw.items() if k != "seeds"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class DuplicateKey(yaml.YAMLError):
    """A mapping names one key twice: YAML would silently keep the last value."""

    def __init__(self, key: object, mark: Any):
        self.key, self.problem_mark, self.problem = key, mark, f"duplicate key {key!r}"
        super().__init__(self.problem)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; users write both), and refuses
    duplicate keys and absurd nesting instead of silently keeping the last value or overflowing the stack."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: SafeLoader reports it itself below
                continue
            if duplicate:
                raise DuplicateKey(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


def _yaml_problem(e: Exception) -> tuple[str, str]:
    """(where, what) of a YAML error, for a one-line message."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}" if mark else ""
    return where, str(getattr(e, "problem", None) or e)


_TOP_KEYS = ("name", "description", "data", "models", "stages", "seeds", "reference_framework", "runtime",
             "parity", "profiles")


def recipes_dir() -> Path:
    """Built-in recipes ship inside the package, in `common/recipes/` (package data, so a wheel has them too);
    SLIMBENCH_RECIPES overrides the folder."""
    env = os.environ.get("SLIMBENCH_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parent / "recipes"


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(recipes_dir().glob("*.yaml"))}


def find_recipe(name_or_path: str) -> Path:
    """A built-in recipe name or a path to a regular YAML file (a directory, FIFO or device is refused before
    it is read: reading a FIFO or /dev/zero would hang or fill memory)."""
    if "\0" in name_or_path:
        raise UsageError(f"recipe {name_or_path!r}: a file name cannot contain a NUL character")
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in name_or_path:
        if not p.exists():
            raise UsageError(f"recipe file not found: {p}")
        if p.is_dir():
            raise UsageError(f"recipe {p} is a directory: expected a .yaml file")
        if not p.is_file():
            raise UsageError(f"recipe {p} is not a regular file (a device, FIFO or socket): expected a .yaml file")
        return p
    known = builtin_recipes()
    if name_or_path not in known:
        raise UsageError(f"unknown recipe '{name_or_path}': built-in recipes are {', '.join(known) or '(none)'}; "
                         "or pass a path to a .yaml file")
    return known[name_or_path]


def load_recipe(name_or_path: str, profile: str = "default", overrides: list[str] | None = None,
                seeds: tuple[int, ...] | None = None) -> Recipe:
    """Read, apply the profile and `--set` overrides, validate. Every problem is a RecipeError."""
    path = find_recipe(name_or_path)
    source = path.name
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read recipe {path}: {e.strerror or e}") from None
    if len(raw) > 1 << 20:
        raise RecipeError(source, "", "a recipe file under 1 MiB", f"{len(raw)} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise RecipeError(source, f"line {line}", "UTF-8 text", f"the byte 0x{raw[e.start]:02x}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as e:
        where, what = _yaml_problem(e)
        raise RecipeError(source, where, "valid YAML", what) from None
    except (ValueError, RecursionError) as e:  # an integer of thousands of digits; nesting past the stack
        raise RecipeError(source, "", "valid YAML with numbers of at most 4300 digits", str(e)[:120]) from None
    return resolve(data, source, profile, overrides or [], seeds)


def resolve(data: Any, source: str, profile: str = "default", overrides: list[str] | tuple[str, ...] = (),
            seeds: tuple[int, ...] | None = None) -> Recipe:
    """Apply a profile and overrides to raw recipe data and validate the result."""
    if not isinstance(data, dict):
        raise RecipeError(source, "", "a mapping at the top level", data)
    for key in data:
        if key not in _TOP_KEYS:
            raise RecipeError(source, str(key), f"one of the keys [{', '.join(_TOP_KEYS)}] (unknown key)",
                              has_got=False)
    data = copy.deepcopy(data)
    profiles = data.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise RecipeError(source, "profiles", "a mapping of profile name to overrides", profiles)
    available = sorted(set(profiles) | {"default"})
    if profile not in available:
        raise RecipeError(source, "profiles", f"a profile among {', '.join(available)}", profile)
    if profile != "default":
        # The base recipe is checked on its own too: a profile that replaces a bad value must not hide it.
        validate(copy.deepcopy(data), source, "default")
        data = merge_profile(data, profiles[profile], source, f"profiles.{profile}")
    for item in overrides:
        data = apply_set(data, item, source)
    if seeds is not None:
        data["seeds"] = list(seeds)
    return validate(data, source, profile)


def merge_profile(base: dict, override: Any, source: str, path: str) -> dict:
    """Deep-merge a profile into the recipe. `stages` in a profile is a mapping stage-name -> partial config."""
    if not isinstance(override, dict):
        raise RecipeError(source, path, "a mapping of overrides", override)
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key == "stages":
            if not isinstance(value, dict):
                raise RecipeError(source, f"{path}.stages", "a mapping of stage name to overrides", value)
            for stage_name, patch in value.items():
                cfg = _stage_body(out, str(stage_name), source, f"{path}.stages.{stage_name}")
                cfg.update(_deep_merge(cfg, patch, source, f"{path}.stages.{stage_name}"))
        elif key not in _TOP_KEYS or key == "profiles":
            raise RecipeError(source, f"{path}.{key}", "a top-level recipe key to override (unknown key)",
                              has_got=False)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value, source, f"{path}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_set(data: dict, item: str, source: str) -> dict:
    """`--set a.b.c=value`; value parsed as YAML. `stages.X` picks a stage by name, or by type if unique."""
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. stages.distill.temperature=2")
    key, raw_value = item.split("=", 1)
    try:
        value = yaml_load(raw_value)
    except yaml.YAMLError:
        value = raw_value
    except (ValueError, RecursionError) as e:  # e.g. an integer of thousands of digits
        raise UsageError(f"--set {item[:60]!r}: value not readable: {str(e)[:100]}") from None
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UsageError(f"--set {item!r}: empty key path")
    if parts[0] not in _TOP_KEYS or parts[0] == "profiles":
        keys = ", ".join(k for k in _TOP_KEYS if k != "profiles")
        hint = " (choose a profile with --profile)" if parts[0] == "profiles" else ""
        raise UsageError(f"--set {key.strip()}: '{parts[0]}' is not a recipe key; expected one of {keys}{hint}")
    out = copy.deepcopy(data)
    where = f"{source} (--set {key})"
    if parts[0] == "stages":
        if len(parts) < 3:
            raise UsageError(f"--set {item!r}: address a stage field, e.g. stages.<stage name or type>.<key>=value")
        node = _stage_body(out, parts[1], where, f"stages.{parts[1]}")
        parts = parts[2:]
    else:
        node = out
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise UsageError(f"--set {key.strip()}: '{p}' is not a mapping in the recipe")
        node = nxt
    node[parts[-1]] = value
    return out


def _stage_body(data: dict, ref: str, source: str, path: str) -> dict:
    """Find a stage's config mapping by stage name, or by stage type when only one stage has it."""
    stages = data.get("stages")
    if not isinstance(stages, list):
        raise RecipeError(source, "stages", "a list of stages", stages)
    bodies = []
    for item in stages:
        if isinstance(item, dict) and len(item) == 1:
            (stype, body), = item.items()
            if isinstance(body, dict):
                bodies.append((stype, body))
    by_name = [b for t, b in bodies if b.get("name") == ref]
    if by_name:
        return by_name[0]
    by_type = [b for t, b in bodies if t == ref]
    if len(by_type) == 1:
        return by_type[0]
    names = ", ".join(str(b.get("name")) for _, b in bodies)
    if len(by_type) > 1:
        raise RecipeError(source, path, f"a stage name (several '{ref}' stages: {names})", ref)
    raise RecipeError(source, path, f"a stage name or type among: {names}", ref)


def _deep_merge(base: dict, patch: Any, source: str, path: str) -> dict:
    if not isinstance(patch, dict):
        raise RecipeError(source, path, "a mapping of overrides", patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v, source, f"{path}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def validate(data: dict, source: str, profile: str) -> Recipe:
    """Validate merged recipe data (profile and overrides already applied)."""
    for key in data:
        if key not in _TOP_KEYS or key == "profiles":
            keys = ", ".join(k for k in _TOP_KEYS if k != "profiles")
            raise RecipeError(source, str(key), f"one of the keys [{keys}] (unknown key)", has_got=False)
    for key in ("name", "description", "data", "models", "stages"):
        if key not in data:
            raise RecipeError(source, key, "a value; the key is required", has_got=False)
    name = convert(str, data["name"], source, "name")
    if not NAME_PATTERN.fullmatch(name):
        raise RecipeError(source, "name", "a name of letters, digits, '_', '.' and '-' starting with a letter or "
                          "digit, at most 100 characters (it names the run's directory)", name)
    description = convert(str, data["description"], source, "description")
    dcfg = parse(DataConfig, data["data"], source, "data")
    if dcfg.dataset in ("cifar10", "cifar100", "imagefolder") and not dcfg.path:
        raise RecipeError(source, "data.path", f"a directory path for dataset '{dcfg.dataset}'", None)
    models = convert(dict[str, ModelConfig], data["models"], source, "models")
    if not models:
        raise RecipeError(source, "models", "at least one model", data["models"])
    classes = dataset_classes(dcfg)
    for slot, mcfg in models.items():
        if not NAME_PATTERN.fullmatch(slot):
            raise RecipeError(source, f"models.{slot}", "a slot name of letters, digits, '_', '.' and '-' (it names "
                              "checkpoint files)", slot)
        if classes is not None and mcfg.num_classes is not None and mcfg.num_classes != classes:
            raise RecipeError(source, f"models.{slot}.num_classes", f"{classes} (dataset '{dcfg.dataset}' has "
                              f"{classes} classes) or no value", mcfg.num_classes)
    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise RecipeError(source, "stages", "a non-empty list of stages", raw_stages)
    stages: list[Stage] = []
    slots = set(models)
    trained: set[str] = set()  # slots holding weights some stage trained (or derived from such weights)
    quantized: set[str] = set()  # int8 slots: only `evaluate` can read them
    masked: set[str] = set()  # slots carrying unstructured pruning masks (kept through later training)
    for i, item in enumerate(raw_stages):
        spath = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(source, spath, f"a mapping with one stage type key among {sorted(STAGE_TYPES)}", item)
        (stype, body), = item.items()
        if stype not in STAGE_TYPES:
            raise RecipeError(source, f"{spath}.{stype}", f"a stage type among {', '.join(sorted(STAGE_TYPES))}",
                              has_got=False)
        cfg = parse(STAGE_TYPES[stype], body, source, f"{spath}.{stype}")
        if any(s.name == cfg.name for s in stages):
            raise RecipeError(source, f"{spath}.{stype}.name", "a stage name not used by an earlier stage", cfg.name)
        for fname in ("model", "teacher", "student", "models"):
            refs = getattr(cfg, fname, None)
            for j, ref in enumerate((refs,) if isinstance(refs, str) else (refs or ())):
                if ref not in slots:
                    key = f"{spath}.{stype}.{fname}" + (f"[{j}]" if fname == "models" else "")
                    raise RecipeError(source, key, f"a model defined in `models` or produced by an earlier stage "
                                      f"({', '.join(sorted(slots))})", ref)
        if stype == "prune":
            _check_prune(cfg, source, f"{spath}.prune")
        _check_slot_use(stype, cfg, trained, quantized, source, f"{spath}.{stype}")
        if stype == "quantize" and cfg.mode == "qat" and cfg.model in masked:
            raise RecipeError(source, f"{spath}.quantize.mode", "'ptq_static' for a magnitude-pruned model: "
                              "fake-quant training would regrow the pruned weights", cfg.mode)
        for out_slot, in_slot in cfg.derived_from().items():
            if in_slot in masked or (stype == "prune" and cfg.method == "magnitude"):
                masked.add(out_slot)
            else:
                masked.discard(out_slot)
        slots.update(cfg.outputs())
        if stype in ("train", "distill"):
            trained.update(cfg.outputs())
        elif stype == "prune":
            trained.update(o for o, i in cfg.derived_from().items() if i in trained)
        elif stype == "quantize":
            quantized.update(cfg.outputs())
        stages.append(Stage(stype, cfg))
    seeds = convert(tuple[int, ...], data.get("seeds", [0, 1, 2]), source, "seeds",
                    {"nonempty": True, **bounds(ge=0, lt=2**31)})
    if len(set(seeds)) != len(seeds):
        raise RecipeError(source, "seeds", "distinct seeds", list(seeds))
    ref = convert(Literal["torch", "paddle"], data.get("reference_framework", "torch"), source,
                  "reference_framework")
    runtime = parse(RuntimeConfig, data.get("runtime", {}) or {}, source, "runtime")
    parity = parse(ParityConfig, data.get("parity", {}) or {}, source, "parity")
    raw = copy.deepcopy(data)
    return Recipe(name=name, description=description, data=dcfg, models=models, stages=tuple(stages), seeds=seeds,
                  reference_framework=ref, runtime=runtime, parity=parity, profile=profile, source=source, raw=raw)


def dataset_classes(cfg: DataConfig) -> int | None:
    """The class count a dataset has, where it is known without reading the data."""
    if cfg.dataset == "synthetic":
        return cfg.synthetic_classes
    return DATASET_CLASSES.get(cfg.dataset)


def _check_prune(cfg: PruneStage, source: str, path: str) -> None:
    """Settings that depend on the method."""
    if cfg.method == "magnitude":
        if cfg.sparsity is None:
            raise RecipeError(source, f"{path}.sparsity", "a number in [0, 1) for method 'magnitude'", None)
        if cfg.initial_sparsity > cfg.sparsity:
            raise RecipeError(source, f"{path}.initial_sparsity", f"a value <= sparsity ({cfg.sparsity})",
                              cfg.initial_sparsity)
        return
    if cfg.ratio is None and not cfg.layer_ratios:
        raise RecipeError(source, f"{path}.ratio", "a number in [0, 1) (or layer_ratios) for method 'filter'", None)
    if cfg.schedule != "one_shot":
        raise RecipeError(source, f"{path}.schedule", "'one_shot' for method 'filter' (fine-tune with a train stage)",
                          cfg.schedule)
    for layer, ratio in cfg.layer_ratios.items():
        if not 0 <= ratio < 1:
            raise RecipeError(source, f"{path}.layer_ratios.{layer}", "a number >= 0 and < 1", ratio)


def _check_slot_use(stype: str, cfg: Any, trained: set[str], quantized: set[str], source: str, path: str) -> None:
    """int8 slots feed `evaluate` only; quantization needs trained weights (random weights give garbage int8)."""
    if stype != "evaluate":
        for fname in ("model", "teacher", "student", "models"):
            refs = getattr(cfg, fname, None)
            for ref in (refs,) if isinstance(refs, str) else (refs or ()):
                if ref in quantized:
                    what = ("the quantize stage already exports and measures it" if stype == "export"
                            else "int8 models cannot be trained, pruned or quantized again")
                    raise RecipeError(source, f"{path}.{fname}", f"an fp32 model: '{ref}' is an int8 model from a "
                                      f"quantize stage and only `evaluate` can use it ({what})", ref)
    if stype == "quantize":
        if cfg.model not in trained:
            raise RecipeError(source, f"{path}.model", "a model trained by an earlier train/distill stage (or "
                              "pruned from one): quantizing untrained weights gives meaningless int8 outputs",
                              f"{cfg.model} (initial weights)")


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (what `slimbench show` prints and what runs record)."""
    def plain(obj: Any) -> Any:
        if isinstance(obj, Stage):
            return {obj.type: plain(obj.config)}
        if dataclasses.is_dataclass(obj):
            return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj
    d = {f.name: plain(getattr(recipe, f.name)) for f in dataclasses.fields(recipe) if f.name not in ("raw",)}
    return d
