# The two commands the README starts with.  Both install what they need first (pinned Debian packages,
# python3-venv included, then a .venv with pinned Python packages); both need root (network namespaces, TAP
# devices): run them in a root shell, or as `sudo make demo` / `sudo make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint deps venv clean

$(BIN)/udpnest: pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(BIN)/udpnest

deps:
	bash scripts/install-deps.sh

test: deps venv
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q -m "not (slow and interop)"

lint: venv
	$(BIN)/ruff check src tests bench

demo: deps venv
	$(BIN)/udpnest demo

clean:
	rm -rf $(VENV) out
