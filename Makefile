# Both entry points bootstrap .venv themselves: a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra arguments for pytest, e.g. make pytest PYTEST_ARGS="-x tests/test_budget.py"
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck pytest bench bench-smoke test-pythons test-lowest clean

# Reinstall when pyproject.toml changes, so a stale .venv never runs old dependencies.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/afterwork demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src tests examples benchmarks

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

# The suite on every other Python 3.11+ this machine has (pyenv's), each in a venv of its own.
test-pythons:
	@for py in $$(ls -d $$HOME/.pyenv/versions/3.1[2-9]* 2>/dev/null); do \
		version=$$(basename $$py | cut -d. -f1,2); \
		echo "== Python $$version"; \
		$(MAKE) --no-print-directory pytest PYTHON=$$py/bin/python VENV=.venv-$$version \
			PYTEST_ARGS="$(PYTEST_ARGS)" || exit 1; \
	done

# The suite against the lowest versions pyproject.toml declares for each direct dependency.
test-lowest: $(STAMP)
	test -x .venv-lowest/bin/python || $(BIN)/uv venv --quiet -p $(PYTHON) .venv-lowest
	VIRTUAL_ENV=.venv-lowest $(BIN)/uv pip install --quiet --resolution lowest-direct -e '.[dev]'
	.venv-lowest/bin/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-smoke: $(STAMP)
	$(BIN)/python -m benchmarks --smoke

clean:
	rm -rf $(VENV) .venv-* .mypy_cache .pytest_cache .ruff_cache
