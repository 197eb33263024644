# The two set-up commands (see README): `make run` and `make test`.
# Both create the virtualenv and install everything on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint format bench clean

run: $(INSTALLED)
	$(BIN)/fleet demo

test: lint
	$(BIN)/pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

$(INSTALLED): pyproject.toml package-lock.json scripts/bootstrap.sh scripts/vendor.sh
	PYTHON=$(PYTHON) scripts/bootstrap.sh $(VENV)
	touch $@

# Run records too, but never a running stack's (fleet runs prune keeps it).
clean:
	[ ! -x $(BIN)/fleet ] || $(BIN)/fleet runs prune --keep 0
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
