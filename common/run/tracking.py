"""`--mlflow [URI]`: a finished run's result files logged to MLflow, so a team's tracking server sees every run.

One MLflow experiment per recipe; per slimbench run a parent MLflow run, and under it one run per (backend, seed)
with the resolved recipe and the versions as params, each training epoch's validation metrics (step = epoch),
every per-stage metric of results.csv, the exported artifacts and the report. Tags (`slimbench.backend`,
`slimbench.seed`, `slimbench.recipe`, ...) let the MLflow UI group and compare PyTorch and PaddlePaddle side by
side. Logging reads the run directory only (after the report is written), so it never changes a result, and a
run logged again (after --resume) replaces its earlier MLflow runs instead of adding duplicates. MLflow is
optional: `pip install 'slimbench[tracking]'`.
"""
from __future__ import annotations

import csv
import logging
import re
import time
from pathlib import Path
from typing import Any

from common.errors import UsageError
from common.results import load_results, read_json, seed_dir

PARAM_VALUE_LIMIT = 500  # MLflow accepts longer values, but a params table of paragraphs helps nobody
BATCH = 100  # MLflow's log_batch takes at most 100 params (and 1000 metrics) per call


def default_uri(out: Path) -> str:
    """A SQLite store inside the runs directory (`--out`): nothing is written outside what the user named. (MLflow 3
    refuses new file stores: `./mlruns` is in maintenance mode.) Artifacts go to `mlartifacts/` beside it."""
    return f"sqlite:///{out.resolve() / 'mlflow.db'}"


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UsageError("--mlflow needs MLflow: pip install 'slimbench[tracking]'") from None
    for name in ("mlflow", "alembic"):  # their INFO lines (creating tables...) are not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str, uri: str) -> str:
    """The recipe's experiment; a new one in a local SQLite store keeps its artifacts beside the database (MLflow's
    default would be ./mlartifacts under whatever directory the command runs in)."""
    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested recipe data as `key.path` -> text; list items by index (`stages.2.distill.alpha`: MLflow names
    take no brackets)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        text = str(data)
        out[_key(prefix)] = text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."
    return out


def _key(text: str) -> str:
    """MLflow names allow letters, digits and _ - . space : /; anything else becomes '_'."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", text)[:250]


def _epoch_metrics(result: dict) -> list[tuple[str, float, int]]:
    out = []
    for st in result.get("stages", []):
        for e in st.get("history") or []:
            for k in ("val_top1", "val_top5", "val_loss", "train_loss"):
                if isinstance(e.get(k), (int, float)):
                    out.append((_key(f"{st['name']}.{k}"), float(e[k]), int(e["epoch"])))
    return out


def _csv_metrics(run_dir: Path) -> dict[tuple[str, int], list[tuple[str, float, int]]]:
    """(backend, seed) -> every numeric row of the report's results.csv, keyed `stage.model.metric`."""
    out: dict[tuple[str, int], list[tuple[str, float, int]]] = {}
    path = run_dir / "results.csv"
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                value = float(row["value"])
            except (TypeError, ValueError):
                continue
            if value == value and abs(value) != float("inf"):
                key = _key(".".join(p for p in (row["stage"], row["model"], row["metric"]) if p))
                out.setdefault((row["backend"], int(row["seed"])), []).append((key, value, 0))
    return out


def log_run(run_dir: Path, uri: str) -> dict[str, Any]:
    """Log a run directory (its report already written) to MLflow; return what was logged, for the console."""
    from mlflow.entities import Metric, Param
    client = _client(uri)
    meta = read_json(run_dir / "run.json")
    recipe = meta["recipe_name"]
    exp_id = _experiment(client, recipe, uri)
    for old in client.search_runs([exp_id], filter_string=f"tags.`slimbench.run_dir` = '{run_dir.resolve()}'"):
        client.delete_run(old.info.run_id)  # logged before this resume: replaced, not duplicated
    common = {"slimbench.recipe": recipe, "slimbench.profile": meta["profile"], "slimbench.run_dir":
              str(run_dir.resolve()), "slimbench.recipe_digest": meta["recipe_digest"]}
    parent = client.create_run(exp_id, run_name=f"{recipe} {run_dir.name}", tags={**common, "slimbench.kind": "run"})
    params = flatten(meta["recipe"], "recipe")
    _batches(client, parent.info.run_id, params=[Param(k, v) for k, v in params.items()])
    for name in ("report.md", "report.html", "results.csv", "results.json"):
        if (run_dir / name).is_file():
            client.log_artifact(parent.info.run_id, str(run_dir / name))
    csv_rows = _csv_metrics(run_dir)
    now = int(time.time() * 1000)
    children = []
    for r in load_results(run_dir):
        backend, seed = r["backend"], int(r["seed"])
        env = r.get("environment") or {}
        tags = {**common, "slimbench.kind": "backend-seed", "slimbench.backend": backend, "slimbench.seed": str(seed),
                "slimbench.status": str(r.get("status")), "slimbench.host": str(env.get("host", "?")),
                "mlflow.parentRunId": parent.info.run_id}
        child = client.create_run(exp_id, run_name=f"{backend} seed {seed}", tags=tags)
        run_params = {**params, **{f"versions.{k}": str(v) for k, v in (env.get("versions") or {}).items()},
                      "backend": backend, "seed": str(seed), "threads": str(env.get("threads", "?")),
                      "cpu": str((env.get("cpu") or {}).get("model", "?"))}
        metrics = _epoch_metrics(r) + csv_rows.get((backend, seed), [])
        _batches(client, child.info.run_id, params=[Param(k, v) for k, v in run_params.items()],
                 metrics=[Metric(k, v, now, step) for k, v, step in metrics])
        artifacts = seed_dir(run_dir, backend, seed) / "artifacts"
        if artifacts.is_dir():
            client.log_artifacts(child.info.run_id, str(artifacts), artifact_path="artifacts")
        client.log_artifact(child.info.run_id, str(seed_dir(run_dir, backend, seed) / "result.json"))
        client.set_terminated(child.info.run_id, "FINISHED" if r.get("status") == "ok" else "FAILED")
        children.append(child.info.run_id)
    client.set_terminated(parent.info.run_id)
    return {"uri": uri, "experiment": recipe, "experiment_id": exp_id, "parent": parent.info.run_id,
            "runs": children}


def _batches(client: Any, run_id: str, params: list | None = None, metrics: list | None = None) -> None:
    params, metrics = params or [], metrics or []
    for i in range(0, max(len(params), 1), BATCH):
        client.log_batch(run_id, params=params[i:i + BATCH])
    for i in range(0, len(metrics), 10 * BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + 10 * BATCH])
