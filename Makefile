# Build, test and regenerate the book. Every target first runs the shared set-up
# (a stamp file), so `make test` and `make book` both work from a fresh clone with
# nothing installed but python3.11 and pip.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SETUP := $(VENV)/.rsa-setup.stamp
# The machine is shared: long jobs run at low priority.
NICE ?= nice -n 10
SANITIZE := tests/nbval_sanitize.cfg
CHAPTERS := $(wildcard book/*.ipynb)

.PHONY: setup book test unit nbval nbval-isa figures chapter reproduce lint bench clean

setup: $(SETUP)

# Where torch comes from: PyPI by default (on Linux its wheel brings the CUDA libraries,
# several GB); on a machine without a GPU, PyTorch's CPU-only wheels are much smaller:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

# torch first, then the package with its book, dev and cluster extras (the cluster extra,
# submitit and tensorboard, is optional for users; the tests use it), pinned by constraints.txt,
# then the venv's python as the `python3` kernel the chapters use. Everything goes into
# the project's own venv: the package's import name, rsa, is also that of Python-RSA.
$(SETUP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade-strategy only-if-needed \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch==2.13.0
	$(BIN)/python -m pip install -c constraints.txt -e ".[book,dev,cluster,compiled]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 \
		--display-name "Python 3 (rsa)"
	touch $@

# The book renders the committed outputs; warnings (and nitpicks) are errors.
book: $(SETUP)
	$(NICE) $(BIN)/jupyter-book build book/ --all -W -n --keep-going

test: unit nbval

unit: $(SETUP)
	$(NICE) $(BIN)/python -m pytest tests

# Re-execute every chapter and compare with its committed outputs.
nbval: $(SETUP)
	$(NICE) $(BIN)/python -m pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with $(SANITIZE) $(CHAPTERS)

# The chapters' outputs must not depend on the CPU: re-execute them with torch's vector
# kernels and MKL restricted to other instruction sets than this CPU's, on 1 and 2
# threads (CI runs it after `make test`). A chapter whose printed numbers hang on
# last-bit rounding fails here.
ISA_RUNS := "ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1" \
	"ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2"
nbval-isa: $(SETUP)
	@for vars in $(ISA_RUNS); do \
		echo "== nbval with $$vars"; \
		env $$vars $(NICE) $(BIN)/python -m pytest -p no:cacheprovider --nbval \
			--nbval-current-env --nbval-sanitize-with $(SANITIZE) $(CHAPTERS) -q \
			|| { echo "FAILED: nbval with $$vars"; exit 1; }; \
	done

# Re-execute every chapter in place with its default parameters (papermill).
figures: $(SETUP)
	$(NICE) $(BIN)/python tools/run_chapter.py

# Re-run one chapter with other parameters and look at it, figures included: runs it
# with papermill into _build/chapters/<chapter>/ and renders it to <chapter>.html there
# (the chapter in book/ is not touched). For example:
#   make chapter CHAPTER=relevancy_screening PARAMS="-p T 200 -p rho 8"
CHAPTER ?=
PARAMS ?=
chapter: $(SETUP)
	@test -n "$(CHAPTER)" || { echo 'usage: make chapter CHAPTER=<name> [PARAMS="-p NAME VALUE ..."]' >&2; exit 2; }
	$(NICE) $(BIN)/python tools/rerun_chapter.py $(CHAPTER) $(PARAMS)

# Regenerate the long results under data/ (hours on a CPU; resumable). The experiments'
# entry point: see `python -m rsa reproduce --help` for scales and stages; pass them
# with e.g. `make reproduce REPRODUCE_ARGS="--stages cost"` (the default scale is
# `converged`, what the experiment chapters read).
REPRODUCE_ARGS ?=
reproduce: $(SETUP)
	$(NICE) $(BIN)/python -m rsa reproduce $(REPRODUCE_ARGS)

lint: $(SETUP)
	$(BIN)/ruff check rsa tests tools

bench: $(SETUP)
	$(NICE) $(BIN)/python -m rsa bench

clean:
	rm -rf _build
