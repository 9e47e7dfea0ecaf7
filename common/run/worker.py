"""The per-backend subprocess: `python -m common.run.worker {init,run,time} RUN_DIR --backend B --seed N`.

`init` (reference framework only) creates each model's initial weights for a seed and writes them as a
framework-neutral numpy state plus the logits they give on fixed probe inputs. `run` loads those
weights into the backend's models, checks the logits match (fairness rule 2), then runs the stages,
rewriting result.json after each one. `time` is one process of the paired timing phase
(common/run/paired_timing.py): every artifact of a finished (backend, seed) timed again.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import QuantizedModel, load_backend
from backends.capabilities import capability_record, require_supported
from common.data import BatchStream, load_dataset
from common.errors import ParityError, RecipeError, SlimbenchError, Terminated, raise_terminated
from common.load import LoadMeter
from common.metrics import latency_summary, logit_difference, time_alternating
from common.progress import Progress
from common.config import ModelConfig
from common.recipe.loader import Recipe, validate
from common.run import paired_timing
from common.run.runner import file_command, worker_env
from common import onnx_runtime
from common.results import SCHEMA_VERSION, atomic_write_json, init_dir, read_json, seed_dir, timing_round_path
from common.stages.loop import RunContext, artifact_from_record
from common.stages.registry import stage_types
from common.sysinfo import platform_info
from common.weights import WeightsError, file_sha256, fit_checkpoint, read_canonical_npz, reader_of


def load_run_recipe(run_dir: Path) -> Recipe:
    """The run's recipe; a slot whose stand-in checkpoint `pretrain` wrote (run.json `pretrained`) starts from
    that file, while the recorded recipe (and its digest) stays the user's."""
    meta = read_json(run_dir / "run.json")
    data = copy.deepcopy(meta["recipe"])
    for slot, record in (meta.get("pretrained") or {}).items():
        data["models"][slot]["weights"] = record["file"]
    recipe = validate(data, meta["recipe_source"], meta["profile"])
    return dataclasses.replace(recipe, raw=meta["recipe"]) if meta.get("pretrained") else recipe


def _probe_and_stream(recipe: Recipe, seed: int) -> tuple[BatchStream, int, np.ndarray]:
    data = load_dataset(recipe.data)
    stream = BatchStream(data, recipe.data, seed)
    return stream, data.num_classes, stream.val_images(recipe.parity.probe_batch)


def _num_classes(recipe: Recipe, slot: str, data_classes: int) -> int:
    """A model's head fits the dataset (checked in the recipe where the count is known before loading data)."""
    asked = recipe.models[slot].num_classes
    if asked is not None and asked != data_classes:
        raise RecipeError(recipe.source, f"models.{slot}.num_classes", f"{data_classes} (the dataset's class count) "
                          "or no value", asked)
    return data_classes


def cmd_init(run_dir: Path, backend_name: str, seed: int, threads: int) -> None:
    recipe = load_run_recipe(run_dir)
    backend = load_backend(backend_name)
    stream, classes, probe = _probe_and_stream(recipe, seed)
    out = init_dir(run_dir, seed)
    out.mkdir(parents=True, exist_ok=True)
    info = {"reference_framework": backend_name, "seed": seed, "versions": backend.versions(), "models": {}}
    for i, (slot, cfg) in enumerate(recipe.models.items()):
        backend.configure(threads, "cpu", seed * 1000 + i)  # one RNG stream per model slot
        model = backend.build_model(cfg, _num_classes(recipe, slot, classes))
        state = backend.state_to_numpy(model)
        weights = None
        if cfg.weights:
            state, weights = _start_from_checkpoint(backend, model, state, cfg, out, threads)
        tmp = out / f".{slot}.tmp.npz"
        np.savez(tmp, **state)
        tmp.replace(out / f"{slot}.npz")
        np.save(out / f"{slot}.probe.npy", backend.predict(model, probe))
        np.save(out / f"{slot}.probe_batch_stats.npy", backend.predict_batch_statistics(model, probe))
        info["models"][slot] = {"arch": cfg.arch, "tensors": len(state),
                                "params": int(sum(a.size for a in state.values())),
                                **({"weights": weights} if weights else {})}
        if weights:
            head = (f"; classifier head re-initialised from the run's seed ({weights['classes_in_file']} classes in "
                    f"the file, {weights['classes_here']} here)" if weights["head_reinitialised"] else "")
            Progress().say(f"init: {slot} ({cfg.arch}) starts from {weights['path']} (sha256 "
                           f"{weights['sha256'][:12]}, read by {weights['read_by']}){head}")
        else:
            Progress().say(f"init: {slot} ({cfg.arch}) weights created by {backend_name} (framework seed "
                           f"{seed * 1000 + i})")
    atomic_write_json(out / "init.json", info)


def _start_from_checkpoint(backend: Any, model: Any, own: dict[str, np.ndarray], cfg: Any, out: Path,
                           threads: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The slot's checkpoint fitted onto its fresh state (common/weights.py) and loaded into `model`. The file is
    read by the framework whose format it is (in this process, or in a worker of that backend) once per run:
    later seeds reuse its canonical copy while the file's sha256 is unchanged; only the fit is per seed."""
    path = Path(cfg.weights)
    reader = reader_of(path)
    sha256 = file_sha256(path)
    # out is init/seed-N; the copy serves every seed (a .pdparams is read through a model of the slot's arch)
    copy = out.parent / "checkpoints" / f"{sha256}.{cfg.arch}{'.small_input' if cfg.small_input else ''}.npz"
    if copy.is_file():
        loaded = read_canonical_npz(copy)
    else:
        if reader is None:
            loaded = read_canonical_npz(path)
        elif reader == backend.name:
            loaded = backend.read_checkpoint(path, cfg)
        else:
            loaded = _read_in_other_backend(path, reader, cfg, out, threads)
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_name(f".{copy.stem}.tmp.npz")
        np.savez(tmp, **loaded)
        tmp.replace(copy)
    head_weight = backend.head_name(model)
    head = [head_weight, head_weight[: -len("weight")] + "bias"]
    state, fit = fit_checkpoint(own, loaded, head, path, cfg.arch)
    backend.load_numpy_state(model, state)
    return state, {"path": str(path), "sha256": sha256, "read_by": reader or "numpy", **fit}


def _read_in_other_backend(path: Path, reader: str, cfg: Any, out: Path, threads: int) -> dict[str, np.ndarray]:
    """Frameworks never share a process (docs/ARCHITECTURE.md, section 6): a `read-weights` worker of the
    format's own backend converts the file to canonical numpy."""
    target = out / f".{path.stem}.{reader}.canonical.npz"
    said = file_command("read-weights", [str(path), "--backend", reader, "--arch", cfg.arch, "--out", str(target),
                                         *(["--small-input"] if cfg.small_input else [])], worker_env(threads))
    if said is not None:
        raise WeightsError(f"{said} (read by the {reader} backend)")
    try:
        return read_canonical_npz(target)
    finally:
        target.unlink(missing_ok=True)


def cmd_read_weights(path: Path, backend_name: str, arch: str, small_input: bool, out: Path) -> None:
    backend = load_backend(backend_name)
    state = backend.read_checkpoint(path, ModelConfig(arch=arch, small_input=small_input))
    np.savez(out, **state)


class ResultWriter:
    def __init__(self, path: Path, base: dict[str, Any]):
        self.path, self.data = path, base
        self.flush()

    def flush(self) -> None:
        self.data["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        atomic_write_json(self.path, self.data)


def _completed_stages(recipe: Recipe, result_path: Path) -> list[dict]:
    """Stage records of an earlier attempt that finished, as long as they match the recipe's order."""
    if not result_path.is_file():
        return []
    done = []
    for stage, record in zip(recipe.stages, read_json(result_path).get("stages", [])):
        if record.get("name") != stage.name or record.get("status") != "ok":
            break
        done.append(record)
    return done


def _restore_outputs(ctx: RunContext, stage: Any, record: dict, out: Path) -> None:
    """Outputs of a stage an earlier attempt completed: reopened by the stage type (an int8 slot is its
    artifact), else rebuilt (filter-pruned architectures first) and loaded from the stage's checkpoints."""
    if stage_types()[stage.type].reopen(ctx, stage, record, out):
        return
    for dst, src in stage.config.derived_from().items():
        model = ctx.output_model(src, dst)
        if record.get("structure_edit"):  # a filter-pruned output: rebuild its architecture first
            edit = dict(record["structure_edit"], example_shape=tuple(record["structure_edit"]["example_shape"]))
            ctx.apply_structure(dst, edit)
        ctx.backend.load_checkpoint(model, out / record["checkpoints"][dst])


def cmd_run(run_dir: Path, backend_name: str, seed: int, threads: int, resume: bool = False) -> int:
    """Run one (backend, seed): set up, load and check the shared initial weights, restore what an earlier
    attempt completed, run the remaining stages; result.json is rewritten after each step."""
    recipe = load_run_recipe(run_dir)
    out = seed_dir(run_dir, backend_name, seed)
    out.mkdir(parents=True, exist_ok=True)
    done = _completed_stages(recipe, out / "result.json") if resume else []
    if not resume and (out / "result.json").is_file():
        raise SlimbenchError(f"{out / 'result.json'} exists: a run never overwrites another (use --resume)")
    t_start = time.time()
    res = ResultWriter(out / "result.json", {
        "schema_version": SCHEMA_VERSION, "recipe": recipe.name, "recipe_digest": recipe.digest(),
        "profile": recipe.profile, "backend": backend_name, "seed": seed, "run_id": run_dir.name,
        "status": "running", "error": None, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {**platform_info(), "threads": threads}, "stages": list(done),
        "resumed_stages": [r["name"] for r in done]})
    where = {"stage": "setup"}  # where a failure happened, for the result
    progress = Progress()
    try:
        ctx = _set_up(recipe, backend_name, seed, threads, out, res, progress)
        where["stage"] = "init"
        _load_initial_weights(ctx, init_dir(run_dir, seed), res)
        for stage, record in zip(recipe.stages, done):
            where["stage"] = stage.name
            _restore_outputs(ctx, stage, record, out)
            progress.say(f"{stage.name}: completed earlier" + (", outputs reloaded from checkpoints"
                                                                if stage.config.derived_from() else ": kept"))
        for stage in recipe.stages[len(done):]:
            where["stage"] = stage.name
            stage_types()[stage.type].preflight(ctx, stage)
        for stage in recipe.stages[len(done):]:
            where["stage"] = stage.name
            _run_stage(ctx, stage, res)
        res.data["status"] = "ok"
        return_code = 0
    except (Exception, KeyboardInterrupt, Terminated) as e:  # recorded in result.json; the exit status says how
        return_code = _record_failure(res, e, where["stage"], progress)
    res.data["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res.data["wall_time_s"] = time.time() - t_start
    res.flush()
    return return_code


def _set_up(recipe: Recipe, backend_name: str, seed: int, threads: int, out: Path, res: ResultWriter,
            progress: Progress) -> RunContext:
    """The backend configured (threads, device, seed, runtime options) and the shared batch stream, recorded."""
    backend = load_backend(backend_name)
    res.data["environment"]["versions"] = backend.versions()
    res.data["capabilities"] = capability_record(backend_name)
    res.data["environment"].update(backend.configure(threads, recipe.runtime.device, seed, recipe.runtime))
    stream, classes, _ = _probe_and_stream(recipe, seed)
    def class_counts(labels: np.ndarray) -> list[int]:
        return np.bincount(labels, minlength=classes).tolist()

    res.data["data"] = {"dataset": recipe.data.dataset, "image_size": recipe.data.image_size,
                        "batch_size": recipe.data.batch_size, "num_classes": classes,
                        "train_class_counts": class_counts(stream.data.train.labels),
                        "val_class_counts": class_counts(stream.data.val.labels), **stream.digest()}
    return RunContext(backend, recipe, stream, classes, out, threads, progress, seed)


def _load_initial_weights(ctx: RunContext, src: Path, res: ResultWriter) -> None:
    """Fairness rule 2: every slot starts from the reference framework's weights, checked on probe logits."""
    recipe, backend = ctx.recipe, ctx.backend
    probe = ctx.stream.val_images(recipe.parity.probe_batch)
    made = read_json(src / "init.json").get("models", {})
    checkpoints = {slot: m["weights"] for slot, m in made.items() if m.get("weights")}
    if checkpoints:
        res.data["initial_weights"] = checkpoints
    parity = {}
    for slot, cfg in recipe.models.items():
        model = backend.build_model(cfg, _num_classes(recipe, slot, ctx.num_classes))
        backend.load_numpy_state(model, dict(np.load(src / f"{slot}.npz")))
        parity[slot] = _parity(backend, model, probe, src, slot, recipe)
        res.data["init_parity"] = parity
        if parity[slot]["max_rel"] > parity[slot]["rtol"]:
            raise ParityError(f"initial weights of '{slot}' ({cfg.arch}) converted from "
                              f"{recipe.reference_framework} give {parity[slot]['compared']} off by "
                              f"{parity[slot]['max_rel']:.2e} (relative), over the tolerance "
                              f"{parity[slot]['rtol']:.0e} ({parity[slot]['rtol_key']})")
        p = parity[slot]
        ctx.progress.say(f"init parity {slot}: max abs {p['max_abs']:.2e}, relative {p['max_rel']:.2e} "
                         f"({p['compared']})")
        ctx.models[slot], ctx.model_cfgs[slot] = model, cfg
    res.flush()


# Eval-mode logits smaller than this compare numbers too small to show a conversion error reliably.
DEGENERATE_LOGITS = 1e-3


def _parity(backend: Any, model: Any, probe: np.ndarray, src: Path, slot: str, recipe: Recipe) -> dict[str, Any]:
    """Logit difference against the reference framework on the probe images. At initialisation eval-mode logits
    can be ~1e-10 (MobileNetV2/V3: running statistics 0/1 shrink every block), where a relative difference says
    little: then the check compares logits with batch norm on the probe batch's own statistics (O(1) values),
    and records which it compared."""
    eval_diff = logit_difference(np.load(src / f"{slot}.probe.npy"), backend.predict(model, probe))
    record = {**eval_diff, "rtol": recipe.parity.rtol, "rtol_key": "parity.rtol",
              "reference": recipe.reference_framework, "compared": "eval-mode logits"}
    batch_ref = src / f"{slot}.probe_batch_stats.npy"
    if eval_diff["ref_scale"] < DEGENERATE_LOGITS and batch_ref.is_file():
        diff = logit_difference(np.load(batch_ref), backend.predict_batch_statistics(model, probe))
        record = {**diff, "rtol": recipe.parity.batch_stats_rtol, "rtol_key": "parity.batch_stats_rtol",
                  "reference": recipe.reference_framework,
                  "compared": f"logits with batch statistics (eval-mode logits are {eval_diff['ref_scale']:.1e})",
                  "eval_mode": eval_diff}
    return record


def _run_stage(ctx: RunContext, stage: Any, res: ResultWriter) -> None:
    """One stage through its type's executor, its outputs checkpointed, the result rewritten."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"name": stage.name, "type": stage.type, "status": "running"}
    res.data["stages"].append(record)
    res.flush()
    require_supported(ctx.backend.name, stage.type, stage.config)
    record.update(stage_types()[stage.type].run(ctx, stage))
    record["status"] = "ok"
    record["time_s"] = time.perf_counter() - t0
    for slot in stage.config.outputs():
        record.setdefault("checkpoints", {})[slot] = _checkpoint(ctx, slot, record)
    res.flush()


def _checkpoint(ctx: RunContext, slot: str, record: dict[str, Any]) -> str:
    """Save a stage output in the backend's format and as a canonical .npz; return its path in the seed dir."""
    model, backend, out = ctx.models[slot], ctx.backend, ctx.out_dir
    if isinstance(model, QuantizedModel):  # the int8 artifact is its own checkpoint
        return record["int8"]["entry"]
    ckpt = out / "checkpoints" / f"{slot}{backend.checkpoint_suffix()}"
    ckpt.parent.mkdir(exist_ok=True)
    backend.save_checkpoint(model, ckpt)
    # Framework-neutral copy: lets another backend start a later stage from these exact weights.
    tmp = ckpt.with_name(f".{slot}.tmp.npz")
    np.savez(tmp, **backend.state_to_numpy(model))
    tmp.replace(ckpt.with_name(f"{slot}.npz"))
    return str(ckpt.relative_to(out))


def _record_failure(res: ResultWriter, e: BaseException, stage: str, progress: Progress) -> int:
    """Record a failure or an interruption in the result; return the worker's exit code (1, 130, 143)."""
    kind = type(e).__name__
    interrupted = isinstance(e, (KeyboardInterrupt, Terminated))
    res.data["status"] = "interrupted" if interrupted else "failed"
    res.data["error"] = {"type": kind, "stage": stage, "message": str(e), "user_error": isinstance(e, SlimbenchError)}
    for record in res.data["stages"]:
        if record.get("status") == "running":
            record["status"] = "failed"
    res.flush()  # record the failure before anything else can go wrong
    if interrupted:
        progress.say(f"interrupted in {stage}")
        return 143 if isinstance(e, Terminated) else 130
    traceback.print_exc()
    progress.say(f"FAILED in {stage}: {kind}: {e}")
    return 1


def cmd_time(run_dir: Path, backend_name: str, seed: int, threads: int, round_no: int) -> int:
    """One process of the paired timing phase: reopen every artifact this (backend, seed) measured, time each
    batch size with its stage's warm-up and repeats on the same inputs, the artifacts in alternation, and write
    RUN/timing/seed-N/round-K.<backend>.json (status failed, with the error, if anything goes wrong)."""
    sdir = seed_dir(run_dir, backend_name, seed)
    result = read_json(sdir / "result.json")
    path = timing_round_path(run_dir, seed, round_no, backend_name)
    record: dict[str, Any] = {"backend": backend_name, "seed": seed, "round": round_no, "status": "running",
                              "result_finished_at": result.get("finished_at"),
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "environment": {**platform_info(), "threads": threads}, "items": []}
    progress = Progress()
    try:
        recipe = load_run_recipe(run_dir)
        backend = load_backend(backend_name)
        record["environment"].update(backend.configure(threads, recipe.runtime.device, seed, recipe.runtime))
        stream, _, _ = _probe_and_stream(recipe, seed)
        measures = {s.name: s.config.measure for s in recipe.stages if hasattr(s.config, "measure")}
        loaded: dict[str, Any] = {}
        for item in paired_timing.timed_items(result):
            artifact = artifact_from_record(item["record"], sdir)
            ident = f"{item['stage']}.{item['key']}"
            loaded[ident] = (backend.load_artifact(artifact, threads) if item["kind"] == "fp32"
                             else onnx_runtime.load_predictor(artifact.entry, threads) if item["kind"] == "onnx"
                             else backend.load_quantized(artifact, threads).predict)
            record["items"].append({"stage": item["stage"], "key": item["key"], "kind": item["kind"],
                                    "runtime": item["record"].get("runtime"), "latency": {}})
        # Artifacts on the same runtime, measured with the same warm-up and repeats, are timed together, in
        # alternation, per batch size. Not across runtimes: a runtime's worker threads spin on after a call (ONNX
        # Runtime's pool, OpenMP's), and alternating with another runtime's pool made both slower (on a 2-core AMD
        # EPYC a ResNet50 teacher's eager batch-1 latency went from 16 to 90 ms beside ONNX Runtime sessions).
        groups: dict[tuple[int, int, int, str], list[dict]] = {}
        for entry in record["items"]:
            m = measures[entry["stage"]]
            for bs in m.batch_sizes:
                groups.setdefault((bs, m.warmup, m.repeats, str(entry["runtime"])), []).append(entry)
        for (bs, warmup, repeats, _), entries in groups.items():
            x = stream.val_images(bs)
            fns = {f"{e['stage']}.{e['key']}": (lambda f=loaded[f"{e['stage']}.{e['key']}"]: f(x)) for e in entries}
            progress.say(f"timing round {round_no + 1}: {len(fns)} artifact(s) at batch {bs}, alternating "
                         f"({warmup} warm-up, {repeats} timed each)")
            for fn in fns.values():  # first calls outside the window: a runtime may compile per input shape
                fn()
            with LoadMeter() as load:
                times = time_alternating(fns, warmup, repeats)
            window = load.record()
            if load.warning(f"the paired batch-{bs} latency"):
                progress.say(load.warning(f"the paired batch-{bs} latency"))
            for e in entries:
                t = times[f"{e['stage']}.{e['key']}"]
                e["latency"][str(bs)] = {**latency_summary(t), "times_ms": [round(v * 1e3, 4) for v in t],
                                         "load": dict(window)}
        record["status"] = "ok"
        code = 0
    except (Exception, KeyboardInterrupt, Terminated) as e:  # recorded in the round file; the exit status says how
        record["status"] = "interrupted" if isinstance(e, (KeyboardInterrupt, Terminated)) else "failed"
        record["error"] = {"type": type(e).__name__, "message": str(e)}
        if record["status"] == "failed":
            traceback.print_exc()
            progress.say(f"FAILED in paired timing: {type(e).__name__}: {e}")
        code = 1 if record["status"] == "failed" else 143 if isinstance(e, Terminated) else 130
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return code


def cmd_write_weights(trained: Path, backend_name: str, run_dir: Path, slot: str, out: Path) -> None:
    """A canonical .npz written as the framework's user-format checkpoint (pretrain), then read back through the
    same reader a user's file goes through and compared tensor by tensor: the stand-in is a real user file."""
    backend = load_backend(backend_name)
    recipe = load_run_recipe(run_dir)
    cfg = recipe.models[slot]
    state = read_canonical_npz(trained)
    classes = read_json(trained.parents[1] / "result.json")["data"]["num_classes"]  # the sub-run's dataset
    model = backend.build_model(cfg, classes)
    backend.load_numpy_state(model, state)
    out.parent.mkdir(parents=True, exist_ok=True)
    backend.write_user_checkpoint(model, out)
    back = backend.read_checkpoint(out, cfg)
    for k, a in state.items():
        if k not in back or not np.array_equal(back[k], a):
            raise WeightsError(f"{out}: tensor '{k}' does not read back as written")


def _file_command(name: str, argv: list[str]) -> int:
    """`read-weights FILE` / `write-weights TRAINED`: one checkpoint file converted by a worker of the file's own
    framework; a bad file is one line on stderr and exit 2, which the caller passes on."""
    p = argparse.ArgumentParser(prog=f"python -m common.run.worker {name}")
    p.add_argument("file", type=Path)
    p.add_argument("--backend", required=True)
    p.add_argument("--out", type=Path, required=True)
    if name == "read-weights":
        p.add_argument("--arch", required=True)
        p.add_argument("--small-input", action="store_true")
    else:
        p.add_argument("--run", type=Path, required=True)
        p.add_argument("--slot", required=True)
    a = p.parse_args(argv)
    try:
        if name == "read-weights":
            cmd_read_weights(a.file, a.backend, a.arch, a.small_input, a.out)
        else:
            cmd_write_weights(a.file, a.backend, a.run, a.slot, a.out)
    except SlimbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["read-weights"], ["write-weights"]):
        return _file_command(argv[0], argv[1:])
    p = argparse.ArgumentParser(prog="python -m common.run.worker")
    p.add_argument("command", choices=["init", "run", "time"])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--backend", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--resume", action="store_true", help="keep completed stages of an earlier attempt")
    p.add_argument("--round", type=int, default=0, help="time: which round of the paired timing phase")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if a.command == "init":
            try:
                cmd_init(a.run_dir, a.backend, a.seed, a.threads)
            except SlimbenchError as e:
                Progress().say(f"FAILED in init: {e}")
                return 1
            return 0
        if a.command == "time":
            return cmd_time(a.run_dir, a.backend, a.seed, a.threads, a.round)
        try:
            return cmd_run(a.run_dir, a.backend, a.seed, a.threads, a.resume)
        except SlimbenchError as e:
            Progress().say(f"FAILED: {e}")
            return 1
    except Terminated:
        return 143
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
