# Halo Weave. Every target sets up what it needs: on a fresh clone `make demo` and `make test`
# are all there is to it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 5001
STAMP  := $(VENV)/.installed

.PHONY: install test lint mock demo bench bench-quality clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference,test,lint,agreement]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install halo-weave with its test and lint tools

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff and mypy --strict on the package
	$(BIN)/ruff check client tests bench
	$(BIN)/mypy

mock: $(STAMP)  ## run the mock server on $(PORT)
	$(BIN)/halo-client mock-server --port $(PORT)

demo: $(STAMP)  ## start the reference server (SmolLM2-135M, fetched once) and chat with it
	@$(BIN)/halo-client serve --port $(PORT) & pid=$$!; \
	trap "kill $$pid 2>/dev/null" EXIT INT TERM; \
	$(BIN)/halo-client --url http://127.0.0.1:$(PORT) --timeout 300 wait && \
	$(BIN)/halo-client --url http://127.0.0.1:$(PORT) chat

bench: $(STAMP)  ## transport, tracker and reference-model benchmarks
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_tracker.py
	$(BIN)/python bench/bench_reference.py

bench-quality: $(STAMP)  ## the pruning-quality benchmark on SmolLM2 (about 30 minutes)
	$(BIN)/halo-client eval pruning --out out/pruning

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
