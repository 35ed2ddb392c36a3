# forge: `make demo` and `make test` work on a fresh clone with nothing else done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel, so that pip never pulls a multi-GB CUDA build when resolving ">=2.4"
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python bench/demo.py

# pytest exits 5 when it collects no tests; that is not a failure of the suite
test: setup
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup
	@for script in bench/bench_*.py; do \
		[ -e "$$script" ] || { echo "no benchmarks yet"; break; }; \
		echo "== $$script"; $(BIN)/python "$$script" || exit $$?; \
	done

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache
