# The two commands of the README: `make demo` and `make test`.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages lint typecheck unit test demo render lock clean

setup: $(STAMP)

$(STAMP): runtime/pyproject.toml infra/requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r infra/requirements.txt -r requirements-dev.txt
	touch $@

system-packages:
	scripts/install-system-packages

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

test: setup system-packages lint typecheck
	$(BIN)/pytest

# The cluster in a box (needs root): 3 nodes in network namespaces, two failovers with their
# timelines; exits non-zero if any invariant broke. Logs of a failed run: test-artifacts/demo/.
demo: setup system-packages
	tests/lab/mailcow-ha-lab --log-level WARNING demo

render: setup
	$(BIN)/mailcow-ha render --stack prod --out out/render

# Re-pin the runtime's dependencies with hashes for nodes (needs PyPI).
lock: setup
	scripts/lock-runtime

clean:
	rm -rf $(VENV) out test-artifacts .mypy_cache .ruff_cache .pytest_cache
