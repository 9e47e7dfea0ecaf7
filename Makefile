# `make run` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SEEDS ?= 0
BACKEND ?= all
PROFILE ?= default
RECIPE ?= kd_resnet50_mobilenet

.PHONY: run test test-all install clean reports

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[torch,paddle,test,ray,tracking]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/run-recipe $(RECIPE) --backend $(BACKEND) --profile $(PROFILE) --seeds $(SEEDS)

test: $(STAMP)
	$(BIN)/python -m pytest

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu"

# Every built-in recipe, default profile, the recipe's seeds (3), both backends: hours on a 2-core CPU.
# Each run stays in runs/<recipe>/<run-id>/; its report and result files are published to reports/<recipe>/.
RECIPES ?= $(basename $(notdir $(wildcard common/recipes/*.yaml)))
# A run with a failed backend is still published (its report says what failed); make exits 1 at the end.
# A run timed under background load is not published unless FORCE=1 (common/load.py).
reports: $(STAMP)
	@failed=""; for r in $(RECIPES); do \
	  $(BIN)/run-recipe $$r --backend all --out runs || failed="$$failed $$r"; \
	  run=$$(ls -d runs/$$r/*/ | sort | tail -1); \
	  rm -rf reports/.$$r.new && $(BIN)/slimbench report $$run --out reports/.$$r.new $(if $(FORCE),--allow-contended) \
	    && rm -rf reports/$$r && mv reports/.$$r.new reports/$$r || exit 1; \
	done; test -z "$$failed" || { echo "runs with failures:$$failed (see their reports)"; exit 1; }

clean:
	rm -rf $(VENV) build *.egg-info
