"""What each backend cannot run, declared once and readable without importing a framework.

The CLI checks a recipe against this table before any worker starts, so a stage a backend cannot run is a
one-line recipe error instead of a failure after hours of training; the backends raise UnsupportedStage with
the same reason if they are reached anyway (a run directory made by an older slimbench).
"""
from __future__ import annotations

from typing import Any

from common.errors import RecipeError

PADDLE_DYNAMIC_QUANT = ("Paddle Inference has no dynamic (run-time) int8 activation quantization on CPU, and "
                        "PaddleSlim's quant_post_dynamic is weight-only storage (fp32 compute) that rejects "
                        "matmul_v2, the op Paddle 2.6 exports nn.Linear as; use mode ptq_static or qat")

# backend -> (stage type, config field, value) -> why that backend cannot run it.
UNSUPPORTED: dict[str, dict[tuple[str, str, Any], str]] = {
    "torch": {},
    "paddle": {("quantize", "mode", "dynamic"): PADDLE_DYNAMIC_QUANT},
}


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
