# Two commands do everything on a fresh machine; each sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-all demo bench clean

setup:
	@bash scripts/setup.sh

test: setup  # the fast suite (what a change should keep green; ~4 min on 2 cores); `slow` tests are left to test-all
	$(PY) -m pytest -q -m "not slow" -n 2 --dist loadfile

test-all: setup  # everything, the slow end-to-end sweeps and notebooks too: what CI runs
	$(PY) -m pytest -q -n 2 --dist loadfile

demo: setup
	$(VENV)/bin/np-mirror demo

bench: setup  # every benchmark, one after another (~15 min); each records nothing by itself
	for b in client store import serve geometry; do [ -f benchmarks/bench_$$b.py ] && $(PY) benchmarks/bench_$$b.py; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
