# lrjob: two commands do all the set-up on a fresh machine.
#   make run    builds the environment if missing, then trains MNIST on 2 local workers
#   make test   builds the environment if missing, then runs the tests
VENV   ?= .venv
PY     := $(VENV)/bin/python
LRJOB  := $(VENV)/bin/lrjob
WORKERS ?= 2
JOB    ?= jobs/mnist_softmax.yaml
RUN_ARGS ?=
MUTANTS_JOBS ?= 2
# make test: the fast tier (no Ray, no Horovod, not slow) runs on TEST_JOBS processes
# (pytest-xdist), then the slow in-process ones (MNIST tutorial runs, lrjob processes killed
# and run again, tracking-server waits) on TEST_JOBS processes too, then the distributed
# ones (one Ray for the session) in one process.
TEST_JOBS ?= 2

.PHONY: help install run test test-fast test-heavy bench bench-data bench-scaling clean doctor mutants

help:
	@echo "make run          build the environment if missing, then train MNIST on 2 local workers"
	@echo "                  (JOB=jobs/... WORKERS=N RUN_ARGS='--set train.epochs=3')"
	@echo "make test         the tests: fast tier, slow in-process tier, distributed tier (TEST_JOBS=2)"
	@echo "make test-fast    the fast tier alone (no Ray, no Horovod, under 3 minutes)"
	@echo "make test-heavy   heavy proofs kept out of make test (a sweep of Horovod trials)"
	@echo "make bench        test-heavy, then every benchmark, as JSON in bench-results/"
	@echo "make bench-data   data at scale: ingest, prepared MNIST, out-of-core runs in memory cgroups"
	@echo "make bench-scaling  the scaling map: samples/s by workers x global batch x model"
	@echo "make doctor       what this machine has: MXNet, Horovod's build, Ray, data, GPUs"
	@echo "make mutants      mutation testing, about 21 min on 2 cores; rewrites docs/mutants.md"
	@echo "make install      the environment in .venv (.ci/install; every other target runs it)"
	@echo "make clean        remove runs/, bench-results/, mutants/ and pytest's cache"

install:
	@VENV=$(VENV) bash .ci/install

run: install
	$(LRJOB) run $(JOB) --workers $(WORKERS) $(RUN_ARGS)

test: install
	@rc=0; \
	$(PY) -m pytest -q tests -n $(TEST_JOBS) -m "not distributed and not slow" --durations=10 || rc=1; \
	$(PY) -m pytest -q tests -n $(TEST_JOBS) -m "slow and not distributed" || rc=1; \
	$(PY) -m pytest -q tests -m "distributed and not slow" --durations=15 || rc=1; \
	exit $$rc

test-fast: install
	$(PY) -m pytest -q tests -n $(TEST_JOBS) -m "not distributed and not slow"

# Heavy proofs kept out of make test's 20 minutes (a 3x2 sweep with 2 Horovod workers per trial).
test-heavy: install
	$(PY) -m pytest -q tests -m "distributed and slow"

bench: install test-heavy
	$(PY) -m benchmarks.run --out bench-results/bench.json
	$(PY) -m benchmarks.update_step --out bench-results/update_step.json
	$(PY) -m benchmarks.data_scale --out bench-results/data_scale.json
	$(PY) -m benchmarks.scaling --out bench-results/scaling.json

# The scaling map: MNIST samples/s for workers {in-process, 1, 2, 3} x global batch x model, each
# cell an lrjob run, with horovodrun and a bare horovod.ray script as floors (10 min on 2 idle
# cores; benchmarks/results/scaling-2026-11-26-idle.md).
bench-scaling: install
	$(PY) -m benchmarks.scaling --out bench-results/scaling.json

# Data at scale: ingest (old CSV reader vs prepared data), MNIST from the prepared memory map,
# out-of-core training in memory cgroups (needs root for that part; ~30 min, ~7 GB of temp disk).
bench-data: install
	$(PY) -m benchmarks.data_scale --out bench-results/data_scale.json

doctor: install
	$(LRJOB) doctor

# Mutation testing of lr_core, the run directory, parity and resume (mutmut); rewrites
# the generated part of docs/mutants.md. Two mutants at once (MUTANTS_JOBS=2): about
# 10,000 mutants in about 21 minutes on 2 idle cores (docs/mutants.md); MUTANTS_JOBS=1 on
# a machine others use.
mutants: install
	$(PY) .ci/mutants.py --jobs $(MUTANTS_JOBS)

clean:
	rm -rf runs bench-results .pytest_cache mutants
