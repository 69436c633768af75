# One command runs the workbook, one runs the tests. Both create .venv on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
WORKERS ?= 2
# Kernels started by papermill/nbval must find this environment's python first.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install workbook test bench quality long clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

# Execute every notebook with papermill on the built-in data into runs/<name>/ and refresh figures/.
workbook: install
	$(BIN)/python -m ssmt_lib workbook

# Unit tests, then every notebook under nbval (lax mode: asserts everywhere, outputs
# compared only in cells marked NBVAL_CHECK_OUTPUT).
# One BLAS thread per worker: two workers with two threads each on two cores thrash.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile tests
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile --nbval-lax --nbval-current-env --nbval-cell-timeout=900 \
		notebooks/[0-9][0-9]_*.ipynb

# The stored long CPU runs that notebooks 03, 04 and 06 show beside their live runs (about an hour
# and a half on 2 cores): sweeps into runs/, tables copied into results/<name>/ (commit them).
LONG_RUNS := ablation_long label_efficiency_long transfer_long
long: install
	for name in $(LONG_RUNS); do \
		OMP_NUM_THREADS=1 $(BIN)/python -m ssmt_lib sweep params/$$name.yaml --workers 2 --store --keep-going || exit 1; \
	done

# Speed figures as JSON (phantom throughput, model steps, training loop).
bench: install
	$(BIN)/python benchmarks/run.py

# Quality per CPU-minute: tiny SSMT-Net vs the plain U-Net, 3 minutes each on the phantom (one JSON line).
quality: install
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf runs .pytest_cache
