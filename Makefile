# Two commands on a fresh machine:  make demo   and   make test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.lungfuse-installed
DEMO_OUT ?= demo-output

.PHONY: setup demo test lint schema bench clean

setup: $(STAMP)

# An editable install of this layout (package-dir mapping) makes setuptools print a
# ten-line notice that folders named like the package could shadow it; the repository has
# none, so the notice is silenced and a fresh `make setup` prints only its commands.
$(STAMP): export PYTHONWARNINGS = ignore:Editable installation
$(STAMP): pyproject.toml constraints.txt examples/lungfuse-cnv/pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install -q -c constraints.txt -e examples/lungfuse-cnv
	@touch $(STAMP)

demo: setup
	$(BIN)/lungfuse demo $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

schema: setup
	$(BIN)/lungfuse schema

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)
