# The two set-up commands of the README. Both install what they need on a fresh machine.
#   make demo   -> install bioflow, run the demo pipeline, open results/demo_pneumonia/report.html
#   make test   -> install bioflow + test extras + SLURM (Debian packages), run the test suite
#                  on 2 pytest-xdist workers
#   make test-fast -> the unit tests alone (no end-to-end runs), under 2 minutes
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
CORES ?= all
# pytest-xdist workers of `make test` and `make test-fast`; loadgroup keeps each xdist_group (tests/conftest.py: the
# SLURM cluster's tests, the modules sharing one Snakemake run) on one worker.
TEST_WORKERS ?= 2

.PHONY: install install-test system-deps demo test test-fast

install:
	$(PIP) install -e .

install-test:
	$(PIP) install -e ".[test]"

# SLURM for the cluster integration test (needs root and apt-get; skipped elsewhere, and the
# test then skips naming the missing binaries).
system-deps:
	bash .ci/install_system_deps.sh

demo: install
	$(PYTHON) -m snakemake --cores $(CORES)
	@echo "report: results/demo_pneumonia/report.html"

test: system-deps install-test
	$(PYTHON) -m pytest -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup

# Unit tests only (no Snakemake runs, no SLURM, no training beyond a few steps): under 2 minutes.
test-fast: install-test
	$(PYTHON) -m pytest -ra -m "not e2e" --durations=10 -n $(TEST_WORKERS) --dist loadgroup
