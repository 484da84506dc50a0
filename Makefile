# The two contract commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench bench-latency clean

install: $(STAMP)

# torch first and pinned: 2.13.0 is a local CPU wheel; letting the resolver pick torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/bneck run

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/cost_model_speed.py
	$(BIN)/python benchmarks/export_speed.py
	$(BIN)/python benchmarks/predictor_throughput.py

bench-latency: install
	$(BIN)/python benchmarks/latency_fidelity.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
