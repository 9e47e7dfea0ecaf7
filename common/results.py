"""Run directories and result files: schema-versioned JSON, atomic writes, nothing overwritten."""
from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

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
    base.mkdir(parents=True, exist_ok=True)
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


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def load_results(run_dir: Path) -> list[dict]:
    """Every result.json of a run: PyTorch first (the reference), then other backends, each by seed."""
    results = []
    for path in sorted(run_dir.glob("*/seed-*/result.json")):
        data = read_json(path)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: result schema version {data.get('schema_version')}, "
                             f"this slimbench reads {SCHEMA_VERSION}")
        data["_path"] = str(path)
        results.append(data)
    return sorted(results, key=lambda r: (r["backend"] != "torch", r["backend"], r["seed"]))
