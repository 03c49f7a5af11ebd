# Two commands do everything on a fresh machine; each sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/np-mirror demo

bench: setup  # every benchmark, one after another (~15 min); each records nothing by itself
	for b in client store import serve geometry; do [ -f benchmarks/bench_$$b.py ] && $(PY) benchmarks/bench_$$b.py; done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
