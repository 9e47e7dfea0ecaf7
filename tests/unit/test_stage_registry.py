"""The stage registry is the one place stage types are known: every built-in type is registered with a config
the recipe schema can read, and report code asks the registry instead of switching on type names."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from backends.capabilities import capability_record, require_supported
from common.errors import UnsupportedStage
from common.stages.registry import BUILTIN, SECTION_ORDER, StageType, stage_types

ROOT = Path(__file__).resolve().parents[2]


def test_every_builtin_stage_type_is_registered_with_a_config():
    types = stage_types()
    assert list(types)[:len(BUILTIN)] == list(BUILTIN)
    for name, kind in types.items():
        assert isinstance(kind, StageType) and kind.name == name
        fields = {f.name for f in dataclasses.fields(kind.config)}
        assert "name" in fields
        for method in ("outputs", "inputs", "derived_from"):
            assert callable(getattr(kind.config, method)), (name, method)
    assert set(SECTION_ORDER) <= set(types)


def test_report_code_does_not_switch_on_stage_type_names():
    """Only the stage modules name their own type: report, decision, plots, summary and worker ask the registry."""
    pattern = re.compile(r"""["'](train|distill|prune|quantize|export)["']""")
    for rel in ("common/report/build.py", "common/report/decision.py", "common/report/plots.py", "common/report/summary.py",
                "common/run/worker.py", "common/recipe/loader.py"):
        hits = [line for line in (ROOT / rel).read_text().splitlines() if pattern.search(line)]
        assert not hits, (rel, hits)


def test_capabilities_are_recorded_and_enforced_with_one_message_form():
    from common.stages.quantize import QuantizeStage
    rec = capability_record("paddle")
    assert rec["unsupported"] == [{"stage": "quantize", "setting": "mode", "value": "dynamic",
                                   "why": rec["unsupported"][0]["why"]}]
    assert set(rec["options_not_applied"]) == {"amp", "channels_last", "compile"}
    assert capability_record("torch") == {"unsupported": [], "options_not_applied": {}}
    with pytest.raises(UnsupportedStage, match=r"backend 'paddle' does not support quantize.mode 'dynamic': Paddle"):
        require_supported("paddle", "quantize", QuantizeStage(name="q", model="m", mode="dynamic"))
    require_supported("torch", "quantize", QuantizeStage(name="q", model="m", mode="dynamic"))
