"""Stage types: one module each (config, executor, report contributions), found through the registry.

    common/stages/registry.py   StageType (the hooks), Stage, SlotState, register(), stage_types()
    common/stages/loop.py       RunContext and the training loop every stage shares
    common/stages/<type>.py     train, distill, prune, quantize, evaluate, export

See docs/ARCHITECTURE.md, "Adding a stage type".
"""
from common.stages.registry import Stage, StageType, register, stage_type, stage_types  # noqa: F401
