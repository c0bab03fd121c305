# The two commands of the README: `make serve` (serve and classify) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
WEIGHTS ?= official
PY := $(VENV)/bin/python

export VENV PYTHON

.PHONY: setup archives serve stop test clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-dev.txt requirements-java.txt scripts/setup.sh scripts/grpc_stubs.py
	scripts/setup.sh
	touch $@

archives: setup
	$(PY) -m scripts.build_archives --weights $(WEIGHTS)

serve: setup
	$(PY) -m scripts.serve --weights $(WEIGHTS)

stop: setup
	$(PY) -m scripts.stop

test: setup
	$(PY) -m pytest

clean: stop
	rm -rf build run model_store/*.mar model_store/*.inputs
