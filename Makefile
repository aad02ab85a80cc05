# DeltaPrompts. The two commands a newcomer needs: `make demo` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
DP      := $(VENV)/bin/deltaprompts
CONFIG  ?= configs/demo.yaml
RUN     ?=
ARGS    ?=
RUNARG  := $(if $(RUN),run.name=$(RUN),)
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test stage-1 stage-2 stage-3 stage-4 stage-5 stage-6 all status \
        push train eval bench tiny-models toy-models lint

setup:
	@bash scripts/setup.sh $(VENV)

demo: setup
	$(PY) -m pipeline.demo --config $(CONFIG) $(RUNARG) $(ARGS)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(ARGS)

stage-%: setup
	$(DP) stage $* --config $(CONFIG) $(RUNARG) $(ARGS)

all: setup
	$(DP) run --config $(CONFIG) $(RUNARG) $(ARGS)

status: setup
	$(DP) status --run $(if $(RUN),$(RUN),demo)

push: setup
	$(DP) push --run $(if $(RUN),$(RUN),demo) --repo-id $(REPO_ID) $(ARGS)

# After `make demo`: distil the student on the demo's high-Δ set (OPD; ARGS="--set mode=va_opd"
# for VA-OPD), then compare it with the untrained student on held-out chart-world questions.
TRAIN_CONFIG ?= configs/opd.yaml
HELDOUT      ?= data/chartworld-heldout
BEFORE       ?= models/chartworld/student
AFTER        ?= runs/opd-demo/final

train: setup
	$(DP) train opd --config $(TRAIN_CONFIG) $(ARGS)

$(HELDOUT): | setup
	$(PY) -m seeds.chartworld --out $(HELDOUT) --n 2000 --seed 2

eval: setup $(HELDOUT)
	$(DP) eval --model before=$(BEFORE) --model after=$(AFTER) --data $(HELDOUT) --config $(CONFIG) --out runs/eval-demo $(ARGS)

bench: setup
	$(PY) -m benchmarks $(ARGS)

tiny-models: setup
	$(PY) -m tools.tiny_models --out models/tiny

toy-models: setup
	$(PY) -m tools.train_toys --out models/chartworld $(ARGS)

lint: setup
	$(VENV)/bin/ruff check pipeline stages seeds trainer tools tests benchmarks
