# Set-up and the two everyday commands. `make demo` and `make test` each set up a fresh machine
# first (a virtual environment in .venv, torch, the pinned dependencies, the compiled extension).
PYTHON ?= python3
# torch==2.13.0 is the CPU build on this project's machines; elsewhere pick the build you want,
# e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lrc_fast_installed
SOURCES := setup.py pyproject.toml requirements/dev.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/* csrc/simt/*)

.PHONY: setup demo test bench cuda-check triton-check ci-clone gpu-baseline gpu-data gpu-wheels clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements/dev.txt
	# setup.py imports torch: build against the torch installed above, not an isolated one.
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

demo: setup
	$(PY) -m lrc_fast.cli demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_felzenszwalb.py

# Compile-check the CUDA sources for Hopper with the machine's nvcc (no GPU needed), then the
# dispatch files as a CUDA build compiles them (-DWITH_CUDA: code a CPU build never sees; a name
# clash there once broke every CUDA build). The CPU torch lacks one generated CUDA header, which an
# empty stand-in replaces for this syntax check.
cuda-check: setup
	@for f in csrc/cuda/*.cu; do \
	  echo "nvcc $$f"; nvcc -std=c++17 -O3 -arch=sm_90 -fmad=false --expt-relaxed-constexpr -c $$f -o /dev/null || exit 1; \
	done
	@shim=$$(mktemp -d) && mkdir -p $$shim/c10/cuda/impl && echo '#pragma once' > $$shim/c10/cuda/impl/cuda_cmake_macros.h \
	  && inc="$$($(PY) -c 'import sysconfig; from torch.utils.cpp_extension import include_paths; print(" ".join("-isystem" + p for p in include_paths() + [sysconfig.get_paths()["include"]]))')" \
	  && cuda_inc=$$(nvcc --dryrun -E -x cu /dev/null 2>&1 | sed -n 's/^#\$$ INCLUDES="\(-I[^"]*\)".*/\1/p') \
	  && for f in csrc/*.cpp; do \
	    echo "c++ -DWITH_CUDA $$f"; $(CXX) -std=c++17 -fsyntax-only -DWITH_CUDA -I$$shim $$inc $$cuda_inc -Icsrc $$f || { rm -rf $$shim; exit 1; }; \
	  done; rm -rf $$shim

# Every Triton launch variant compiled for sm_90 by the Triton of the lent GPU machines (3.6.0),
# in its own small environment: the test suite's newer Triton accepts code 3.6 may reject and
# allocates registers differently (3.6 gave the NCHW pooling gather 218 registers, 3.9 56).
TRITON_GPU ?= triton==3.6.0
TRITON_VENV := .venv-triton
triton-check:
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet $(TORCH) $(TRITON_GPU) numpy==2.4.6 pytest==9.2.0
	PYTHONPATH=$(CURDIR) $(TRITON_VENV)/bin/python benchmarks/triton_resources.py --check

# CI as it runs after a session: .ci/run on a fresh clone of the committed HEAD. The clone (with
# its ~2.5 GB .venv) is removed afterwards, whatever the outcome: clones left in /tmp once filled
# the shared disk and CI's own torch install failed for lack of space.
ci-clone:
	@d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && git clone -q . "$$d" && cd "$$d" && CI=true bash .ci/run

# A baseline for benchmarks/gpu_check.sh: commit REV unpacked into .baseline/ (ignored; carry it).
gpu-baseline:
	@test -n "$(REV)" || { echo "usage: make gpu-baseline REV=<commit>"; exit 1; }
	rm -rf .baseline && mkdir .baseline && git archive "$(REV)" | tar -x -C .baseline
	git rev-parse --short "$(REV)" > .baseline/REV

# Real CT for the lent GPU machine, into .gpu_data/ (ignored; carry it): the abdominal series and
# the first GPU_DATA_VOLUMES OpenKBP CTs (pt_1 to pt_3 among them, which the realdata GPU tests
# read). With 20 (9 MB in all) it fits the device tool's 64 MiB carry beside .whl (54 MB) and the tree.
GPU_DATA_VOLUMES ?= 20
SHARED_DATA ?= $(or $(LRC_FAST_SHARED_DATA),../shared/data)
gpu-data:
	rm -rf .gpu_data && mkdir -p .gpu_data/openkbp-train
	cp -r $(SHARED_DATA)/totalseg-abdomen .gpu_data/
	ls $(SHARED_DATA)/openkbp-train/*_ct.nii.gz | sort -V | head -n $(GPU_DATA_VOLUMES) \
	  | xargs -I{} cp {} .gpu_data/openkbp-train/
	chmod -R u+w .gpu_data
	test "$$(ls .gpu_data/openkbp-train | wc -l)" -eq $(GPU_DATA_VOLUMES) \
	  || { echo "fewer than $(GPU_DATA_VOLUMES) OpenKBP CTs in $(SHARED_DATA)"; exit 1; }
	du -sh .gpu_data

# Wheels the lent GPU machine (Python 3.12, no network) lacks, into .whl/ (ignored; carry it):
# SimpleITK for lrc_fast.data, MONAI for bench_elastic's per-sample row. gpu_check installs them.
gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --platform manylinux2014_x86_64 -d .whl SimpleITK==2.5.7 monai==1.6.1

# the stamp too: without the extension, `make test` must build it again
clean:
	rm -rf build *.egg-info lrc_fast/_C*.so out $(STAMP)
