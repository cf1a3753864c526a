# make demo   set up (first time) and run the default experiment
# make test   set up (first time) and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch by default. GPU users: TORCH=torch==2.13.0 gives PyPI's default CUDA build on Linux;
# for another CUDA or ROCm version pass the --index-url that PyTorch's install page gives for your platform.
TORCH ?= torch==2.13.0

.PHONY: setup demo test bench bench-optim grid clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

demo: setup
	$(BIN)/python -m soul.run

test: setup
	$(BIN)/python -m pytest -q

# make grid GRID=tofu_fo_vs_so   run a ready grid (conf/grid/) and write its report
GRID ?= tofu_fo_vs_so
grid: setup
	$(BIN)/python -m soul.run -m grid=$(GRID); status=$$?; \
	$(BIN)/python -m soul.report outputs/sweeps/$(GRID); exit $$status

bench: setup
	$(BIN)/python experiments/bench_demo.py

bench-optim: setup
	$(BIN)/python experiments/bench_optim.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
