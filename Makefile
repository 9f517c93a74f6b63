# Quick start: `make run` (set up, generate the embedded dataset, run the analysis), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser-deps xrootd-deps run workflow image reana-client docs-figures binder-link references test lint sync-notebooks clean-outputs

setup: $(STAMP)

# torch first, exactly pinned, always the CPU build: a local wheel when pip finds one without an
# index (its find-links, e.g. a wheel folder in pip.conf), else the official CPU-only index.
# Override the index: `make setup TORCH_INDEX_URL=https://mirror.example/whl/cpu`.
# Then the single specification; torch==2.13.0 is already satisfied by 2.13.0+cpu and stays.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -E '^torch==' requirements.txt)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-index --no-deps "$(TORCH_PIN)" 2>/dev/null || \
	  $(BIN)/pip install --quiet --index-url $(TORCH_INDEX_URL) "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -r requirements.txt
	@! $(BIN)/pip list 2>/dev/null | grep -qi '^nvidia-' || { echo "setup: CUDA libraries were installed; expected the CPU build of torch"; exit 1; }
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

run: setup
	$(BIN)/agc generate --preset quickstart --workers 2
	$(BIN)/agc run --dataset embedded:quickstart --validate references/histograms_quickstart.json

# The preserved workflow (generation, processing per sample, merge, model, fit, limits) with Snakemake
workflow: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake -s workflow/Snakefile --cores 2 --directory outputs/workflow

# The container image of every workflow step (workflow/config.yaml `container`)
IMAGE ?= agc-ttbar:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f workflow/Dockerfile -t $(IMAGE) .

# reana-client in a tool environment of its own (its pins clash with the analysis's): validates
# workflow/reana.yaml (tests/preservation/test_workflow.py uses it when present)
REANA_VENV ?= .venv-reana
reana-client: $(REANA_VENV)/bin/reana-client
$(REANA_VENV)/bin/reana-client:
	$(PYTHON) -m venv $(REANA_VENV)
	$(REANA_VENV)/bin/pip install --quiet "reana-client==$(REANA_CLIENT_VERSION)"
REANA_CLIENT_VERSION ?= 0.9.6

# The README's fit result and docs/figures/ from one quick-start run (utils/run/docs.py)
docs-figures: setup
	$(BIN)/agc generate --preset quickstart --workers 2
	rm -rf outputs/docs-quickstart
	$(BIN)/agc run --dataset embedded:quickstart --output outputs/docs-quickstart --validate references/histograms_quickstart.json
	$(BIN)/python -m utils.run.docs outputs/docs-quickstart

# The Binder link and badge of this repository, from its GitHub remote (none: says so)
binder-link:
	@url="$$(git remote get-url origin 2>/dev/null)" || { echo "binder-link: no git remote 'origin'; push to GitHub first" >&2; exit 1; }; \
	slug="$$(echo "$$url" | sed -E 's#^(https://github.com/|git@github.com:)##; s#\.git$$##')"; \
	case "$$slug" in */*) ;; *) echo "binder-link: $$url is not a GitHub repository" >&2; exit 1;; esac; \
	link="https://mybinder.org/v2/gh/$$slug/HEAD?urlpath=lab/tree/notebooks/ttbar_analysis_pipeline.ipynb"; \
	echo "$$link"; echo "[![Binder](https://mybinder.org/badge_logo.svg)]($$link)"

# Regenerate the reference histograms of the embedded datasets: only on purpose (see utils/run/references.py)
references: setup
	$(BIN)/python -m utils.run.references tiny quickstart

# Debian's chromium for tests/run/test_browser.py (Playwright drives it; it downloads no browser).
# Installed with apt-get when missing and we are root; otherwise that test skips, saying why.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "browser-deps: installing chromium with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "browser-deps: chromium missing and apt-get unavailable or not root: the browser test will skip"; \
	  fi; }

# Debian's xrootd-server for the remote-input tests and benchmarks (a real file server on
# loopback) and iproute2 (tc netem, the benchmark's added latency); installed with apt-get when
# missing and we are root; otherwise those tests skip, saying why.
xrootd-deps:
	@command -v xrootd >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "xrootd-deps: installing xrootd-server and iproute2 with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xrootd-server iproute2 >/dev/null; \
	  else \
	    echo "xrootd-deps: xrootd missing and apt-get unavailable or not root: the remote-input tests will skip"; \
	  fi; }

test: setup browser-deps xrootd-deps
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check utils tests
	$(BIN)/ruff format --check utils tests
	$(BIN)/mypy

sync-notebooks: setup
	$(BIN)/jupytext --sync notebooks/*.ipynb

clean-outputs:
	rm -rf outputs
