# Two commands on a fresh machine (see README.md):
#   make demo   set up everything and run the local demo
#   make test   set up everything and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo lint typecheck binaries test-binaries clean

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip -q
	# Pinned set from .ci/constraints.txt; numpy stays < 2 for Triton's python backend.
	$(BIN)/pip install -q -c .ci/constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The binaries' builder needs only the standard library, so it runs while pip fills the venv:
# on a fresh machine the two overlap (pip mostly waits on downloads, go on the CPU).
binaries:
	cd tests && $(PYTHON) -m testground.binaries

# The control plane and what the suite would otherwise build on demand (pod network, Karpenter,
# Prometheus); KEDA, the longest, builds in the background during the suite (tests/conftest.py).
test-binaries:
	cd tests && $(PYTHON) -m testground.binaries --all

lint: $(STAMP)
	$(BIN)/ruff check operator builder_image tests benchmarks docs
	$(BIN)/mypy
	# The product packages hold to --strict; the test ground and benchmarks to the settings above.
	$(BIN)/mypy --strict operator/tritonresnet builder_image/tritonresnet_builder

test:
	$(MAKE) -j2 venv test-binaries
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# exec: make passes a SIGTERM on to its recipe's process, which would otherwise be the
# shell, leaving the demo running without its teardown.
demo:
	$(MAKE) -j2 venv binaries
	cd tests && exec ../$(BIN)/python -m testground.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
