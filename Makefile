# Two commands a new user needs: `make demo` and `make test`. Both create .venv on first use.
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRA  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
PYTEST_ARGS ?=

.PHONY: install test lint unit e2e demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e ".[$(EXTRA),dev]"
	@# the published torchvision/torchaudio fail to import beside the CPU torch build
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import torch, vllm, ray, deepspeed, transformers, datasets, wandb" 2>/dev/null
	@# DeepSpeed's JIT ops (on CPU: the shm comm op), built once into the venv, not at the first run
	$(PY) -c "from rlpost.runtime.learner import build_ds_ops; print('deepspeed ops:', build_ds_ops())"
	touch $@

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest tests/unit tests/e2e -q -rs --durations=15 $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

e2e: install
	$(PY) -m pytest tests/e2e -q -rs --durations=15 $(PYTEST_ARGS)

demo: install
	$(PY) -m rlpost.cli demo

bench: install
	$(PY) -m rlpost.cli bench

clean:
	rm -rf $(VENV) runs .pytest_cache
