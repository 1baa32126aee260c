# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv, make):
#   make run    create .venv, install the pinned dependencies, run the whole pipeline on the embedded
#               default (sklearn 8x8 digits, CPU): tables and figures under results/digits/
#   make run-full  the same run with every experiment of the paper (config/full.yaml; make run leaves some rows out)
#   make test   same set-up, then the unit tests and a tiny end-to-end workflow (.test/)
# Further targets: make test-integration (local SLURM cluster + container; needs root/apt), make test-long
# (real kills, the paper configs at reduced scale, the report in Chromium: what CI adds), make report.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
STAMP  := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run run-full seeds test test-long test-integration report dag schema clean-results

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements-lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) all

# Every experiment of the paper on the default's data: the rows `make run` leaves out (config/full.yaml).
run-full: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) all --configfile config/config.yaml config/full.yaml

# The spread over seeds (docs/benchmarks.md): the default run plus replicate runs <run>_seed<s>, Table 1 only.
CONFIG ?= config/config.yaml
SEEDS  ?= 1 2
RUN    ?= $(shell $(BIN)/python -c "import yaml,sys; print(yaml.safe_load(open('$(CONFIG)'))['run'])" 2>/dev/null || echo digits)
seeds: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) tables --configfile $(CONFIG)
	for s in $(SEEDS); do \
	  $(BIN)/snakemake --profile profiles/local --cores $(CORES) tables --configfile $(CONFIG) config/replicate.yaml \
	    --config run=$(RUN)_seed$$s seed=$$s || exit 1; \
	done
	$(BIN)/python -m nfpi spread results/$(RUN) $(foreach s,$(SEEDS),results/$(RUN)_seed$(s)) --out results/$(RUN)/tables

# The unit tests and the tiny end-to-end workflow; the long workflow suites (kill, paper, report) are
# `make test-long`, which CI runs too.
LONG := kill or paper or report
test: setup
	$(BIN)/python -m pytest -m "not integration and not ($(LONG))" -q

test-long: setup
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -m "$(LONG)" -q -p no:cacheprovider

test-integration: setup
	$(BIN)/python -m pytest -m integration -q -p no:cacheprovider

report: setup
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) all --report results/report.html

dag: setup
	$(BIN)/snakemake all --profile profiles/local --rulegraph | dot -Tsvg > docs/dag.svg

schema: setup
	$(BIN)/python -m nfpi.schema --write

clean-results:
	rm -rf results .snakemake
