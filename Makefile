# The two contract commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install fashion postgres run test lint bench bench-latency clean

install: $(STAMP) fashion

# torch first and pinned: 2.13.0 is a local CPU wheel; letting the resolver pick torch pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's PostgreSQL server binaries for the tests that start a throwaway server (tests/pg.py); they skip without
# them. Only the binaries are used (the package's own cluster is left alone). Never fails the build.
PG_APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ]; then \
	  echo "make postgres: no apt-get or not root, PostgreSQL not installed: its tests will skip"; \
	elif $(PG_APT) 2>/dev/null || { apt-get update -qq >/dev/null && $(PG_APT); }; then \
	  echo "make postgres: installed Debian's postgresql"; \
	else echo "make postgres: apt-get install postgresql failed: PostgreSQL tests will skip"; fi

# Debian's dataset-fashion-mnist (Fashion-MNIST, MIT, 31 MB) for builtin:fashion: no download at run time, ever.
# Installed when it can be (root + apt-get); without it builtin:fashion is a one-line error. Never fails the build.
FASHION_APT := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
fashion:
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ]; then \
	  echo "make fashion: no apt-get or not root: builtin:fashion unavailable (apt-get install dataset-fashion-mnist)"; \
	elif $(FASHION_APT) 2>/dev/null || { apt-get update -qq >/dev/null && $(FASHION_APT); }; then \
	  echo "make fashion: installed Debian's dataset-fashion-mnist"; \
	else echo "make fashion: apt-get install dataset-fashion-mnist failed: builtin:fashion unavailable"; fi

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
