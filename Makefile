# The two commands of the quick start: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt bench bench-flows bench-campaigns bench-segments bench-channels clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/herald dev --demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/flows.py
	$(BIN)/python bench/campaigns.py
	$(BIN)/python bench/segments.py
	$(BIN)/python bench/channels.py

bench-flows: $(STAMP)
	$(BIN)/python bench/flows.py

bench-campaigns: $(STAMP)
	$(BIN)/python bench/campaigns.py

bench-segments: $(STAMP)
	$(BIN)/python bench/segments.py

bench-channels: $(STAMP)
	$(BIN)/python bench/channels.py

clean:
	rm -rf $(VENV) .herald
