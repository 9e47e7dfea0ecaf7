"""Recipes: YAML -> frozen dataclasses, profiles as overrides, `--set` overrides, validation.

The shared settings live in common/config.py and each stage type's settings in its own module
(common/stages/<type>.py); validation asks the stage registry for the type's config and rules, so a new
stage type needs no change here (docs/ARCHITECTURE.md).
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

from common.config import (BACKENDS, DATASET_CLASSES, MAX_YAML_DEPTH, MODEL_ARCHS, NAME_PATTERN,  # noqa: F401
                           AugmentConfig, DataConfig, MeasureConfig, ModelConfig, OptimizerConfig, ParityConfig,
                           RuntimeConfig, ScheduleConfig, TimingConfig, WEIGHT_FORMATS)
from common.errors import RecipeError, UsageError
from common.recipe.pretrain import PretrainConfig
from common.schema import bounds, convert, one_key_item, parse
from common.stages.registry import SlotState, Stage, check_refs, stage_types


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
    timing: TimingConfig = TimingConfig()
    pretrain: dict[str, PretrainConfig] = field(default_factory=dict)  # slot -> its stand-in checkpoint
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


_TOP_KEYS = ("name", "description", "data", "models", "pretrain", "stages", "seeds", "reference_framework",
             "runtime", "parity", "timing", "profiles")


def recipes_dir() -> Path:
    """Built-in recipes ship inside the package, in `common/recipes/` (package data, so a wheel has them too);
    SLIMBENCH_RECIPES overrides the folder."""
    env = os.environ.get("SLIMBENCH_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "recipes"


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
        validate(_absolute_weights(copy.deepcopy(data)), source, "default")
        data = merge_profile(data, profiles[profile], source, f"profiles.{profile}")
    for item in overrides:
        data = apply_set(data, item, source)
    if seeds is not None:
        data["seeds"] = list(seeds)
    return validate(_absolute_weights(data), source, profile)


def _absolute_weights(data: dict) -> dict:
    """`models.<slot>.weights` relative to the directory the command runs in, made absolute: the workers run
    elsewhere and read the recorded recipe."""
    models = data.get("models")
    for cfg in (models.values() if isinstance(models, dict) else ()):
        path = cfg.get("weights") if isinstance(cfg, dict) else None
        if isinstance(path, str) and path and "\0" not in path and not Path(path).is_absolute():
            cfg["weights"] = str(Path.cwd() / path)
    return data


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
        if mcfg.weights is not None:
            _check_weights_file(mcfg.weights, source, f"models.{slot}.weights")
        if classes is not None and mcfg.num_classes is not None and mcfg.num_classes != classes:
            raise RecipeError(source, f"models.{slot}.num_classes", f"{classes} (dataset '{dcfg.dataset}' has "
                              f"{classes} classes) or no value", mcfg.num_classes)
    pretrain = convert(dict[str, PretrainConfig], data.get("pretrain", {}) or {}, source, "pretrain")
    for slot in pretrain:
        if slot not in models:
            raise RecipeError(source, f"pretrain.{slot}", f"a model slot among {', '.join(models)}", slot)
    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise RecipeError(source, "stages", "a non-empty list of stages", raw_stages)
    stages: list[Stage] = []
    state = SlotState(slots=set(models), archs={slot: m.arch for slot, m in models.items()},
                      trained={slot for slot, m in models.items() if m.weights or slot in pretrain})  # a checkpoint
    # (the user's, or the stand-in `pretrain` writes) is trained weights
    types = stage_types()
    for i, item in enumerate(raw_stages):
        spath = f"stages[{i}]"
        stype, body = one_key_item(item, types, source, spath, f"a mapping with one stage type key among "
                                   f"{sorted(types)}", f"a stage type among {', '.join(sorted(types))}")
        kind = types[stype]
        cfg = parse(kind.config, body, source, f"{spath}.{stype}")
        if any(s.name == cfg.name for s in stages):
            raise RecipeError(source, f"{spath}.{stype}.name", "a stage name not used by an earlier stage", cfg.name)
        check_refs(cfg, stype, state, source, f"{spath}.{stype}")
        kind.check(cfg, state, source, f"{spath}.{stype}")
        kind.update(cfg, state)
        state.slots.update(cfg.outputs())
        stages.append(Stage(stype, cfg))
    seeds = convert(tuple[int, ...], data.get("seeds", [0, 1, 2]), source, "seeds",
                    {"nonempty": True, **bounds(ge=0, lt=2**31)})
    if len(set(seeds)) != len(seeds):
        raise RecipeError(source, "seeds", "distinct seeds", list(seeds))
    ref = convert(Literal["torch", "paddle"], data.get("reference_framework", "torch"), source,
                  "reference_framework")
    runtime = parse(RuntimeConfig, data.get("runtime", {}) or {}, source, "runtime")
    parity = parse(ParityConfig, data.get("parity", {}) or {}, source, "parity")
    timing = parse(TimingConfig, data.get("timing", {}) or {}, source, "timing")
    raw = copy.deepcopy(data)
    return Recipe(name=name, description=description, data=dcfg, models=models, stages=tuple(stages), seeds=seeds,
                  reference_framework=ref, runtime=runtime, parity=parity, timing=timing, pretrain=pretrain,
                  profile=profile, source=source, raw=raw)


def _check_weights_file(path: str, source: str, key: str) -> None:
    suffixes = ", ".join(WEIGHT_FORMATS)
    if "\0" in path or Path(path).suffix not in WEIGHT_FORMATS:
        raise RecipeError(source, key, f"a checkpoint file ending in one of {suffixes}", path)
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist" if not p.exists() else "is not a regular file"
        raise RecipeError(source, key, f"an existing checkpoint file ({path} {what})", has_got=False)


def dataset_classes(cfg: DataConfig) -> int | None:
    """The class count a dataset has, where it is known without reading the data."""
    if cfg.dataset == "synthetic":
        return cfg.synthetic_classes
    return DATASET_CLASSES.get(cfg.dataset)


def recipe_to_dict(recipe: Recipe) -> dict:
    """The resolved recipe as plain data (what `slimbench show` prints and what runs record)."""
    def plain(obj: Any) -> Any:
        if isinstance(obj, Stage):
            return {obj.type: plain(obj.config)}
        if dataclasses.is_dataclass(obj):
            body = {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            tag = getattr(obj, "tag", None)  # an item of a tagged list (schema.tagged) is written as {tag: body}
            return {tag: body} if isinstance(tag, str) else body
        if isinstance(obj, (list, tuple)):
            return [plain(v) for v in obj]
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return obj
    d = {f.name: plain(getattr(recipe, f.name)) for f in dataclasses.fields(recipe) if f.name not in ("raw",)}
    return d
