# prolink developer entry points. Every target that runs code depends on `venv`,
# so `make demo` and `make test` work on a fresh machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo lint bench clean

venv: $(STAMP)

# Re-install whenever pyproject.toml changes (dependencies, entry points).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: venv
	$(BIN)/prolink demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict protocol/ keys/

bench: venv
	@set -e; for f in bench/*.py; do \
	    [ -e "$$f" ] || continue; \
	    echo "== $$f"; $(BIN)/python "$$f"; \
	done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
