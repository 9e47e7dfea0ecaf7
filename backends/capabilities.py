"""What each backend cannot run, declared once and readable without importing a framework.

The CLI checks a recipe against this table before any worker starts, so a stage a backend cannot run is a
one-line recipe error instead of a failure after hours of training; the worker checks each stage against it
again before running it (`require_supported`: a run directory made by an older slimbench), and every result
records its backend's entry so the report can show it. Runtime options a backend does not use are declared
here too (NOT_APPLIED): the run goes on and the report lists them.
"""
from __future__ import annotations

from typing import Any

from common.errors import RecipeError, UnsupportedStage

PADDLE_DYNAMIC_QUANT = ("Paddle Inference has no dynamic (run-time) int8 activation quantization on CPU, and "
                        "PaddleSlim's quant_post_dynamic is weight-only storage (fp32 compute) that rejects "
                        "matmul_v2, the op Paddle 2.6 exports nn.Linear as; use mode ptq_static or qat")

# backend -> (stage type, config field, value) -> why that backend cannot run it.
UNSUPPORTED: dict[str, dict[tuple[str, str, Any], str]] = {
    "torch": {},
    "paddle": {("quantize", "mode", "dynamic"): PADDLE_DYNAMIC_QUANT},
}


# backend -> runtime option -> why the backend records it as not applied instead of using it (the run goes on;
# the report lists the difference).
NOT_APPLIED: dict[str, dict[str, str]] = {
    "torch": {},
    "paddle": {"amp": "autocast is a torch-backend option", "channels_last": "NHWC training is a torch-backend "
               "option (Paddle's depthwise speed-up is cpu_tuning's oneDNN program)",
               "compile": "torch.compile is a torch-backend option"},
}


def capability_record(backend: str) -> dict[str, Any]:
    """The table entry of one backend in result-file form (the report shows it from there)."""
    return {"unsupported": [{"stage": t, "setting": f, "value": v, "why": why}
                            for (t, f, v), why in UNSUPPORTED.get(backend, {}).items()],
            "options_not_applied": dict(NOT_APPLIED.get(backend, {}))}


def require_supported(backend: str, stage_type: str, config: Any) -> None:
    """Raise UnsupportedStage (one message form) if `backend` cannot run this stage's settings."""
    found = unsupported_reason(backend, stage_type, config)
    if found:
        fname, value, why = found
        raise UnsupportedStage(backend, f"{stage_type}.{fname} '{value}'", why)


def unsupported_reason(backend: str, stage_type: str, config: Any) -> tuple[str, Any, str] | None:
    """(field, value, reason) of the first setting of a stage `backend` cannot run, else None."""
    for (stype, fname, value), why in UNSUPPORTED.get(backend, {}).items():
        if stype == stage_type and getattr(config, fname, None) == value:
            return fname, value, why
    return None


def check_capabilities(recipe: Any, backends: list[str]) -> None:
    """Raise a RecipeError for the first stage one of `backends` cannot run (recipe file and key path named)."""
    for i, stage in enumerate(recipe.stages):
        for backend in backends:
            found = unsupported_reason(backend, stage.type, stage.config)
            if found:
                fname, value, why = found
                others = [b for b in UNSUPPORTED if b != backend and not unsupported_reason(b, stage.type, stage.config)]
                hint = f" (or run only {', '.join(others)} with --backend)" if others else ""
                raise RecipeError(recipe.source, f"stages[{i}].{stage.type}.{fname}",
                                  f"a setting backend '{backend}' supports: {why}{hint}", value)
