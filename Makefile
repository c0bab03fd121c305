# The two commands of the README: `make serve` (serve and classify) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
WEIGHTS ?= official
ENGINE ?= torchserve
PY := $(VENV)/bin/python

export VENV PYTHON

.PHONY: setup archives serve stop lint format test test-busy mutants bench soak kserve-bundle image smoke clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-serving.txt requirements-dev.txt requirements-kserve.txt requirements-java.txt requirements-ray.txt \
		scripts/setup.sh scripts/client/grpc_stubs.py
	scripts/setup.sh
	touch $@

archives: setup
	$(PY) -m scripts.packaging.build_archives --weights $(WEIGHTS)

# ENGINE: torchserve (default) or ray, the same archives on Ray Serve (docs/engines.md).
serve: setup
	$(PY) -m scripts.server.serve --weights $(WEIGHTS) --engine $(ENGINE)

# The folder to upload to a KServe InferenceService's storageUri: build/kserve/
# (scripts/packaging/kserve_bundle.py; docs/deployment.md). POD_CPUS, POD_GPUS: what each replica gets;
# BUNDLE_VERSIONS, BUNDLE_DEFAULT, BUNDLE: another set of versions (a canary), and where.
POD_CPUS ?= 4
POD_GPUS ?= 0
BUNDLE_VERSIONS ?= 1.0 2.0
BUNDLE_DEFAULT ?= 2.0
BUNDLE ?= build/kserve
kserve-bundle: setup
	$(PY) -m scripts.packaging.kserve_bundle --weights $(WEIGHTS) --pod-cpus $(POD_CPUS) --pod-gpus $(POD_GPUS) \
		--versions $(BUNDLE_VERSIONS) --default $(BUNDLE_DEFAULT) --out $(BUNDLE)

# The serving image (deploy/image/Containerfile; docs/image.md). VARIANT: cpu or cuda. BASE: the
# base image, or `local` for a Debian root made here with mmdebstrap (no registry needed).
VARIANT ?= cpu
BASE ?= docker.io/library/python:3.11-slim-bookworm
IMAGE ?= resnet50-serving:$(VARIANT)
image: setup
	$(PY) -m scripts.packaging.image --variant $(VARIANT) --base $(BASE) --tag $(IMAGE)

stop: setup
	$(PY) -m scripts.server.stop

# Lint, format check and type check (pyproject.toml configures each), over these folders.
LINTED := handler scripts benchmarks tests
lint: setup
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m mypy $(LINTED)

# Apply ruff's safe fixes and its formatting to the same folders.
format: setup
	$(PY) -m ruff check --fix $(LINTED)
	$(PY) -m ruff format $(LINTED)

test: lint
	$(PY) -m pytest

# The tests that drive a real server, with every core kept busy beside them (docs/testing.md):
# timing assumptions must hold on a loaded machine. RUNS in a row, stopping at the first failure.
RUNS ?= 3
test-busy: setup
	$(PY) -m scripts.harness.busy_machine --runs $(RUNS)

# Mutation testing (docs/testing.md#mutation-testing): mutmut mutates handler/ and the config
# builders ([tool.mutmut] in pyproject.toml) and runs the in-process tests that reach each mutant,
# two at a time, one torch thread each. Not part of `make test`: the first run takes most of an
# hour. Results stay in mutants/, and a later run tests only the functions that changed.
# MUTANTS: a glob of mutant names, to run only those (MUTANTS='image_decoding.*').
MUTANTS ?=
mutants: setup
	OMP_NUM_THREADS=1 RESNET50_MUTANTS=1 $(PY) scripts/harness/mutants.py run --max-children 2 $(MUTANTS)
	$(PY) scripts/harness/mutants.py export-cicd-stats

# Benchmark-only extras: locust (load).
$(VENV)/.bench-done: requirements-bench.txt | setup
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-bench.txt
	touch $@

bench: setup $(VENV)/.bench-done
	$(PY) -m benchmarks.run

# A bounded soak against the server `make serve` started: MINUTES (default 10) at CONCURRENCY 16.
MINUTES ?= 10
CONCURRENCY ?= 16
soak: setup
	$(PY) -m scripts.client.soak --minutes $(MINUTES) --concurrency $(CONCURRENCY)

# Smoke-check a deployment from outside (scripts/client/smoke.py; docs/deployment.md), e.g.
#   make smoke URL=http://$$INGRESS SMOKE_ARGS="--host-header resnet50.NS.example.com --isvc resnet50 --namespace NS"
SMOKE_ARGS ?=
smoke: setup
	$(if $(URL),,$(error make smoke needs URL=http://... (docs/deployment.md)))
	$(PY) -m scripts.client.smoke --url $(URL) $(SMOKE_ARGS)

clean: stop
	rm -rf build run results mutants model_store/*.mar model_store/*.inputs
