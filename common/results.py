"""Run directories and result files: schema-versioned JSON, atomic writes, nothing overwritten."""
from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from common.backend_names import order_key
from common.errors import RunFilesError

SCHEMA_VERSION = 1


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide reports from other users of a shared machine
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def new_run_dir(out: Path, recipe_name: str) -> Path:
    """runs/<recipe>/<run-id>/ created exclusively: a run never lands in another run's directory."""
    base = out / recipe_name
    if Path(recipe_name).name != recipe_name or recipe_name in ("", ".", ".."):  # validated in the recipe too
        raise RunFilesError(f"recipe name {recipe_name!r} cannot name a directory inside {out}")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFilesError(f"cannot create {base}: {e.strerror or e}") from None
    for _ in range(20):
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        path = base / run_id
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {base}")


def seed_dir(run_dir: Path, backend: str, seed: int) -> Path:
    return run_dir / backend / f"seed-{seed}"


def init_dir(run_dir: Path, seed: int) -> Path:
    return run_dir / "init" / f"seed-{seed}"


TIMING_DIR = "timing"  # the paired timing phase's files (common/run/paired_timing.py, common/report/paired.py)


def timing_round_path(run_dir: Path, seed: int, round_no: int, backend: str) -> Path:
    return run_dir / TIMING_DIR / f"seed-{seed}" / f"round-{round_no}.{backend}.json"


def timing_round_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob(f"{TIMING_DIR}/seed-*/round-*.json"))


def read_json(path: Path) -> dict:
    """A JSON object from a file we wrote; anything else (missing, truncated, binary, a list) is a RunFilesError."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise RunFilesError(f"{path}: file not found") from None
    except OSError as e:
        raise RunFilesError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise RunFilesError(f"{path}: not valid JSON ({str(e)[:100]})") from None
    if not isinstance(data, dict):
        raise RunFilesError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# run.json keys a run needs to be resumed or reported, and their types.
_RUN_KEYS = {"recipe": dict, "recipe_source": str, "profile": str, "backends": list, "seeds": list, "threads": int}
# result.json keys every report reads, and their types.
_RESULT_KEYS = {"backend": str, "seed": int, "status": str, "stages": list}
_STAGE_KEYS = {"name": str, "type": str, "status": str}
# Keys whose values a report computes with: where present they must be numbers (or null).
_NUMERIC_KEYS = {"top1", "top5", "loss", "size_bytes", "size_mb", "params", "macs", "flops", "artifact_top1",
                 "p50_ms", "p90_ms", "train_time_s", "time_per_step_s", "epochs", "steps", "train_loss", "val_top1",
                 "max_abs", "max_rel", "rtol", "accuracy_drop", "size_ratio", "agreement", "mcnemar_p"}


def read_run_meta(run_dir: Path) -> dict:
    """A run directory's run.json, checked for what resume and reports read."""
    if "\0" in str(run_dir):
        raise RunFilesError(f"{run_dir!r}: a path cannot contain a NUL character")
    if not (run_dir / "run.json").is_file():
        raise RunFilesError(f"{run_dir} is not a run directory (no run.json): pass runs/<recipe>/<run-id>")
    meta = read_json(run_dir / "run.json")
    _check_types(meta, _RUN_KEYS, run_dir / "run.json", "")
    return meta


def _check_types(obj: dict, keys: dict[str, type], path: Path, where: str) -> None:
    for key, kind in keys.items():
        value = obj.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "missing" if key not in obj else type(value).__name__
            raise RunFilesError(f"{path}: {where}{key}: expected {kind.__name__}, got {got}")


def _check_numbers(obj: Any, path: Path, where: str) -> None:
    """Metric values a report does arithmetic on must be numbers: a string there is a damaged file."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{where}.{k}" if where else str(k)
            if k in _NUMERIC_KEYS and v is not None and not isinstance(v, (dict, list)):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise RunFilesError(f"{path}: {sub}: expected a number, got {v!r:.40}")
            _check_numbers(v, path, sub)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_numbers(v, path, f"{where}[{i}]")


def check_result(data: dict, path: Path) -> None:
    """The structure every report relies on; raises RunFilesError naming the file and the key."""
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RunFilesError(f"{path}: result schema version {data.get('schema_version')!r:.20}, this slimbench "
                            f"reads {SCHEMA_VERSION}")
    _check_types(data, _RESULT_KEYS, path, "")
    for i, st in enumerate(data["stages"]):
        if not isinstance(st, dict):
            raise RunFilesError(f"{path}: stages[{i}]: expected an object, got {type(st).__name__}")
        _check_types(st, _STAGE_KEYS, path, f"stages[{i}].")
    for key in ("init_parity", "environment", "data", "error"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise RunFilesError(f"{path}: {key}: expected an object, got {type(data[key]).__name__}")
    _check_numbers({"stages": data["stages"], "init_parity": data.get("init_parity")}, path, "")


def load_results(run_dir: Path) -> list[dict]:
    """Every result.json of a run in backend order (common/backend_names), each by seed."""
    results = []
    for path in sorted(run_dir.glob("*/seed-*/result.json")):
        data = read_json(path)
        check_result(data, path)
        data["_path"] = str(path)
        results.append(data)
    return sorted(results, key=lambda r: (order_key(r["backend"]), r["seed"]))


def check_publish_target(run_dir: Path, out_dir: Path) -> None:
    """`slimbench report RUN --out DIR` writes into DIR only when DIR is new or empty, is RUN itself, or holds an
    earlier report of the same run: it never replaces another run's run.json and result files."""
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run:
        return
    if run in out.parents or out in run.parents:
        raise RunFilesError(f"--out {out_dir}: must not be inside the run directory {run_dir} or contain it")
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / "run.json").is_file():
        raise RunFilesError(f"--out {out_dir}: holds other files; publish into a new or empty directory (or an earlier "
                            "report of the same run)")
    mine, theirs = read_json(run / "run.json"), read_json(out / "run.json")
    identity = ("created_at", "recipe_digest", "command")
    if any(mine.get(k) != theirs.get(k) for k in identity):
        raise RunFilesError(f"--out {out_dir}: holds another run (its run.json differs from {run_dir}'s); "
                            "slimbench never writes into another run's directory")
