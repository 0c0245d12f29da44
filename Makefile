# The README's two commands are `make demo` and `make test`; both install what is missing first.
SHELL := /bin/bash
VENV := .venv
HAORCH := $(VENV)/bin/haorch
PYTEST_ARGS ?=
LAB := HAORCH_HOME=.haorch-lab HAORCH_PORT_BASE=17500 $(HAORCH)

.PHONY: setup lint test screenshots demo demo-hpc bench chaos stack-up stack-down stack-status deploy-docker dist clean

setup:
	@bash deploy/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# the console's pages as PNGs in docs/img (the browser tests, which take them anyway)
screenshots: setup
	HAORCH_SCREENSHOTS=$(CURDIR)/docs/img $(VENV)/bin/pytest -q tests/browser

demo: setup
	$(HAORCH) stack up
	$(HAORCH) demo

# the example science workload on the SLURM test site (haorch hpc up): stage in, array job, monitor, stage out
demo-hpc: setup
	$(HAORCH) stack up
	$(HAORCH) demo --hpc

bench: setup
	$(HAORCH) stack up
	$(HAORCH) bench throughput
	$(HAORCH) bench durations
	$(HAORCH) bench failover
	$(HAORCH) bench docker
	$(HAORCH) bench takeover
	$(HAORCH) bench recover
	$(HAORCH) bench hpc
	$(HAORCH) bench console
	$(HAORCH) bench scale
	$(HAORCH) bench soak
	$(LAB) lab up --hosts 3 && $(HAORCH) bench hosts --lab-home .haorch-lab; rc=$$?; $(LAB) lab down; exit $$rc

deploy-docker: setup
	$(HAORCH) deploy up --docker

# dist/haorch-<version>.tar.gz and the wheel built from it, with the pinned `build` and setuptools of .venv (no
# isolated env, so no download). `pip install dist/haorch-*.whl` on a host: see "Installing from a wheel" in README.md
dist: setup
	rm -rf dist
	$(VENV)/bin/python -m build --no-isolation --outdir dist .

# four bounded campaigns (each run bounds its load, faults and waits): the mixed one (~8 min), the adversarial
# one (~5 min: 2-6 s tasks, bursts beyond the prefetch, poison, the failpoint freeze), the host faults on a
# 3-host lab (~25 min: each of 6 kinds 5 times), then jobs on the HPC test site (~6 min: leader kill, worker kill,
# slurmctld restart 3 times each while jobs are queued and running; the run starts the site); the reports in CHAOS.md
chaos: setup
	$(HAORCH) stack up
	$(HAORCH) chaos run mixed --kills 50 --experiments 2000 --seed 1 --report docs/chaos; mixed=$$?; \
	  $(HAORCH) chaos run adversarial --kills 40 --experiments 100 --seed 1 --report docs/chaos-adversarial; adv=$$?; \
	  $(LAB) lab up --hosts 3 && $(LAB) chaos run hosts --kills 30 --experiments 7500 --rate 6 --seed 1 \
	    --report docs/chaos-hosts; hosts=$$?; $(LAB) lab down; \
	  $(HAORCH) chaos run hpc --kills 9 --experiments 80 --interval 12 --seed 1 --report docs/chaos-hpc; hpc=$$?; \
	  $(VENV)/bin/python -m chaos_tests.report docs/CHAOS.md docs/chaos docs/chaos-adversarial docs/chaos-hosts \
	    docs/chaos-hpc; \
	  [ $$mixed -eq 0 ] && [ $$adv -eq 0 ] && [ $$hosts -eq 0 ] && [ $$hpc -eq 0 ]

stack-up: setup
	$(HAORCH) stack up

stack-status:
	$(HAORCH) stack status

stack-down:
	@if [ -x $(HAORCH) ]; then $(HAORCH) stack down; fi

clean: stack-down
	@if [ -x $(HAORCH) ]; then $(HAORCH) hpc down; fi
	@if [ -x $(HAORCH) ] && [ -f .haorch-lab/lab.json ]; then $(LAB) lab down --purge; fi
	@if [ -x $(HAORCH) ]; then HAORCH_HOME=.haorch-test $(HAORCH) stack down --purge; fi
	@if [ -x $(HAORCH) ] && [ -d .haorch-docker-test ]; then \
	  HAORCH_HOME=.haorch-docker-test HAORCH_PORT_BASE=19000 $(HAORCH) deploy down --purge; fi
	rm -rf .haorch .haorch-test .haorch-lab $(VENV) node/assets/neo4j/target build dist *.egg-info .pytest_cache
