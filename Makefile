# convx: one command each for the main jobs (see README.md).
#   make test    set up .venv, build the extension, run the test suite
#   make demo    set up, build, run the main job (python -m convx train)
#   make bench   set up, build, run the benchmarks beside torch
#   make build   (re)build the extension in place; CONVX_CUDA=0 for CPU only
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: all venv deps build test demo bench clean info

all: test

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt | $(VPY)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

deps: $(STAMP)

build: $(STAMP)
	MAX_JOBS=$(JOBS) $(VPY) setup.py -q build_ext --inplace

test: build
	$(VPY) -m pytest tests -q $(PYTEST_ARGS)

demo: build
	$(VPY) -m convx train

bench: build
	$(VPY) -m pytest bench -q -o python_files='bench_*.py' --benchmark-group-by=group --benchmark-columns=min,median,ops $(BENCH_ARGS)

info: build
	$(VPY) -m convx info

clean:
	rm -rf build convx/_C*.so convx/_build_config.py .pytest_cache .benchmarks
