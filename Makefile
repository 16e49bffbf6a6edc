# Each target installs what it needs (idempotent): the CPU build of torch first, so that
# pip never pulls the multi-GB CUDA build, then the package with its extras.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
STAMP = .venv-stamp

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m vitseg demo

test: $(STAMP)
	$(PYTHON) -m pytest tests

bench: $(STAMP)
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf $(STAMP) work_dirs .pytest_cache
