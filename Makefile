# convx: one command each for the main jobs (see README.md).
#   make test    set up .venv, build the extension, run the test suite
#   make demo    set up, build, run the main job (python -m convx train)
#   make bench   set up, build, run the benchmarks beside torch
#   make build   (re)build the extension in place; CONVX_CUDA=0 for CPU only
#   make sanitize  build the CPU kernels + the emulated CUDA backend with
#                AddressSanitizer/UBSan into build/sanitize and run the tests there
#   make test-slow the tests marked slow (large tensors, long sweeps)
#   make test-large the > 2^31-element CPU tensors alone (about 2 minutes, 17 GB; .ci/run runs it)
PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.deps-installed
JOBS   ?= $(shell nproc 2>/dev/null || echo 2)
# One architecture (H100/H200) keeps the build fast here; `pip install .` builds
# for the visible GPU or a list covering current GPUs (convx/_archs.py).
export TORCH_CUDA_ARCH_LIST ?= 9.0
PYTEST_ARGS ?=
BENCH_ARGS ?=

SAN_DIR := build/sanitize
SAN_TESTS ?= tests
# The emulated kernels run about 8x slower under ASan: their benchmark-size
# cases and gradchecks (the same code paths as the small cases, about 12 of
# the 16 minutes) are left to `make test`.
SAN_SELECT ?= not (simt and (benchmark_shapes or gradcheck))
SAN_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libubsan.so)

.PHONY: all venv deps build test test-slow test-large sanitize wheel-check demo bench clean info

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

test-slow: build
	$(VPY) -m pytest tests -q --run-slow -m slow $(PYTEST_ARGS)

test-large: build
	$(VPY) -m pytest tests/test_large.py -q --run-slow $(PYTEST_ARGS)

# The CPU kernels and the emulated CUDA backend built with -fsanitize=address,undefined
# (no nvcc build) into $(SAN_DIR), next to a copy of the Python package; the test
# suite then runs against that copy with the sanitizer runtimes preloaded into Python.
# Any report aborts the run (halt_on_error), so passing means zero reports.
sanitize: $(STAMP)
	rm -rf $(SAN_DIR)/convx && mkdir -p $(SAN_DIR) && cp -r convx $(SAN_DIR)/convx
	rm -f $(SAN_DIR)/convx/*.so $(SAN_DIR)/convx/_build_config.py
	CONVX_SANITIZE=1 CONVX_BUILD_LIB=$(SAN_DIR) MAX_JOBS=$(JOBS) $(VPY) setup.py -q build_ext \
		--build-lib $(SAN_DIR) --build-temp build/sanitize-tmp
	cd $(SAN_DIR) && LD_PRELOAD="$(SAN_PRELOAD)" \
		ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_stack_use_after_return=0 \
		UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		$(abspath $(VPY)) -m pytest $(addprefix $(CURDIR)/,$(SAN_TESTS)) -q -p no:cacheprovider -k "$(SAN_SELECT)" \
		$(PYTEST_ARGS)

# Build the sdist and the wheel (from the sdist) as a user would, install the
# wheel into a fresh venv and smoke-test it from outside the source tree.
wheel-check: $(STAMP)
	PYTHON=$(VPY) bash scripts/check_wheel.sh

demo: build
	$(VPY) -m convx train

bench: build
	$(VPY) -m pytest bench -q -o python_files='bench_*.py' --benchmark-group-by=group --benchmark-columns=min,median,ops $(BENCH_ARGS)

info: build
	$(VPY) -m convx info

clean:
	rm -rf build dist *.egg-info convx/_C*.so convx/_simt*.so convx/_build_config.py .pytest_cache .benchmarks
