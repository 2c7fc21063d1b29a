# Every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint proto bench venv test-compose

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

proto: $(STAMP)
	$(BIN)/python -m control_plane_stub.generate_proto

bench: $(STAMP)
	$(BIN)/python -m bench $(if $(LARGE),--large,)

# Builds the images (local debootstrap base, wheels from the host) and runs the compose `tests`
# service against the other services; starts a private dockerd when none runs, stops it after.
test-compose: $(STAMP)
	docker/test-compose.sh
