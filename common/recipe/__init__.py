"""Recipes: the YAML loader and validation (loader.py) and the `pretrain` key (pretrain.py).

Above common/stages (validation asks the stage registry), below common/run and common/report. Kept empty of
imports so a module can import one part without the rest (docs/ARCHITECTURE.md, section 1)."""
