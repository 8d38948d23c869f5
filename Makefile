# The two commands the README starts with.  Both create .venv and install pinned dependencies first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean

$(BIN)/udpnest: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(BIN)/udpnest

test: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests bench

demo: venv
	$(BIN)/udpnest demo

clean:
	rm -rf $(VENV) out
