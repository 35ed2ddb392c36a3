# forge: `make demo` and `make test` work on a fresh clone with nothing else done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-all lint bench clean

setup: $(STAMP)

# torch first, pinned to the CPU wheel, so that pip never pulls a multi-GB CUDA build when resolving ">=2.4"
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/python bench/demo.py

# the chat page's browser test drives Debian's Chromium: installed here when missing and possible
# (root with apt-get, as in CI); otherwise that one test is skipped with a message saying why
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium for the browser test"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
				|| echo "chromium could not be installed: the browser test will be skipped"; \
		else echo "chromium is not installed (apt-get install chromium): the browser test will be skipped"; fi; }

# pytest exits 5 when it collects no tests; that is not a failure of the suite
test: setup browser
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# peer comparisons, one after another (never two at once: they would share the cores)
bench: setup
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/data.py

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache .mypy_cache .ruff_cache
