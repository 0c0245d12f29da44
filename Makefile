# The README's two commands are `make demo` and `make test`; both install what is missing first.
SHELL := /bin/bash
VENV := .venv
HAORCH := $(VENV)/bin/haorch
PYTEST_ARGS ?=

.PHONY: setup lint test demo bench chaos stack-up stack-down stack-status deploy-docker clean

setup:
	@bash deploy/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup
	$(HAORCH) stack up
	$(HAORCH) demo

bench: setup
	$(HAORCH) stack up
	$(HAORCH) bench throughput
	$(HAORCH) bench failover
	$(HAORCH) bench docker
	$(HAORCH) bench takeover

deploy-docker: setup
	$(HAORCH) deploy up --docker

# two bounded campaigns (each run bounds its load, faults and waits): the mixed one (~8 min), then the adversarial
# one (~5 min: 2-6 s tasks, bursts beyond the prefetch, poison, the failpoint freeze); both reports in CHAOS.md
chaos: setup
	$(HAORCH) stack up
	$(HAORCH) chaos run mixed --kills 50 --experiments 2000 --seed 1 --report docs/chaos; mixed=$$?; \
	  $(HAORCH) chaos run adversarial --kills 40 --experiments 100 --seed 1 --report docs/chaos-adversarial; adv=$$?; \
	  $(VENV)/bin/python -m chaos_tests.report docs/CHAOS.md docs/chaos docs/chaos-adversarial; \
	  [ $$mixed -eq 0 ] && [ $$adv -eq 0 ]

stack-up: setup
	$(HAORCH) stack up

stack-status:
	$(HAORCH) stack status

stack-down:
	@if [ -x $(HAORCH) ]; then $(HAORCH) stack down; fi

clean: stack-down
	@if [ -x $(HAORCH) ]; then HAORCH_HOME=.haorch-test $(HAORCH) stack down --purge; fi
	@if [ -x $(HAORCH) ] && [ -d .haorch-docker-test ]; then \
	  HAORCH_HOME=.haorch-docker-test HAORCH_PORT_BASE=19000 $(HAORCH) deploy down --purge; fi
	rm -rf .haorch .haorch-test $(VENV) deploy/neo4j/target build *.egg-info .pytest_cache
