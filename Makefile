# Two commands on a fresh machine (see README.md):
#   make demo   set up everything and run the local demo
#   make test   set up everything and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test demo lint typecheck binaries clean

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

lint: $(STAMP)
	$(BIN)/ruff check operator builder_image tests benchmarks docs
	$(BIN)/mypy
	# The product packages hold to --strict; the test ground and benchmarks to the settings above.
	$(BIN)/mypy --strict operator/tritonresnet builder_image/tritonresnet_builder

# The suite's binaries build in one background process that lives while this make does: through
# pip, then beside the tests that need none of them (tests/conftest.py runs the tests in the
# order the parts are built, and each test waits for its part on that part's lock).
test:
	cd tests && $(PYTHON) -m testground.binaries --background --while-pid $$PPID
	$(MAKE) venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# exec: make passes a SIGTERM on to its recipe's process, which would otherwise be the
# shell, leaving the demo running without its teardown.
demo:
	$(MAKE) -j2 venv binaries
	cd tests && exec ../$(BIN)/python -m testground.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
