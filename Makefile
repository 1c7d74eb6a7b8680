# Two commands for a fresh machine: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp changes when setup.cfg does, so an edited dependency list reinstalls.
STAMP := $(VENV)/.installed-$(shell cksum setup.cfg | cut -d' ' -f1)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]"
	# open_clip's own trainer pins webdataset<=0.2.86; keep that copy beside the venv for the
	# compatibility test (tests/wds_tools/test_open_clip_compat.py), never on the venv's path.
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/openclip-train-wds "webdataset==0.2.86"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q tests

# Style (ruff, configured in pyproject.toml) and layering (import-linter contracts in setup.cfg).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean-demo:
	rm -rf demo_out
