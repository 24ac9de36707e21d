# Halo Weave. Every target sets up what it needs: on a fresh clone `make demo` and `make test`
# are all there is to it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 5001
UI_PORT ?= 8765
STAMP  := $(VENV)/.installed
# what running Halo Weave needs (the demo): the package and its reference model's extra only
RUN_STAMP := $(VENV)/.installed-run
CHAT_ARGS ?=

.PHONY: install test test-fast soak lint mock demo workbench bench bench-quality bench-workbench clean

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference]'
	touch $(RUN_STAMP)

# what the workbench needs: the same and its web stack (the ui extra)
UI_STAMP := $(VENV)/.installed-ui
$(UI_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference,ui]'
	touch $(UI_STAMP) $(RUN_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference,test,lint,agreement,ui]'
	touch $(STAMP) $(RUN_STAMP) $(UI_STAMP)

install: $(STAMP)  ## create .venv and install halo-weave with its test and lint tools

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## what to run while working: every test that loads no real model and starts no process
	$(BIN)/python -m pytest -m "not model and not process" -q

SOAK_EXAMPLES ?= 300
SOAK_STEPS    ?= 30
soak: $(STAMP)  ## the chat and the workbench under random user actions and server faults, long (make test runs a short one): make soak [SOAK_EXAMPLES=300] [SOAK_STEPS=30]
	HALO_SOAK_EXAMPLES=$(SOAK_EXAMPLES) HALO_SOAK_STEPS=$(SOAK_STEPS) $(BIN)/python -m pytest tests/faults -q -s

lint: $(STAMP)  ## ruff and mypy --strict on the package, its tests and benchmarks and the patch's halo_api package; hadolint on docker/Dockerfile
	$(BIN)/ruff check client tests bench kobold_patch/src
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile

mock: $(STAMP)  ## run the mock server on $(PORT)
	$(BIN)/halo-client mock-server --port $(PORT)

demo: $(RUN_STAMP)  ## chat with SmolLM2-135M (fetched once) on this machine: make demo CHAT_ARGS="--max-context-tokens 300"
	$(BIN)/halo-client demo --port $(PORT) --session halo-demo-session.json $(CHAT_ARGS)

workbench: $(UI_STAMP)  ## SmolLM2-135M (fetched once) on the reference server, and the workbench over it in your browser: make workbench [PORT=5001] [UI_PORT=8765] (a taken port: any free one)
	$(BIN)/halo-client workbench --port $(PORT) --ui-port $(UI_PORT) --open

bench: $(STAMP)  ## transport, tracker and reference-model benchmarks
	$(BIN)/python bench/bench_transport.py
	$(BIN)/python bench/bench_tracker.py
	$(BIN)/python bench/bench_reference.py

bench-quality: $(STAMP)  ## the pruning benchmark on SmolLM2: docs/pruning.md, .json, .svg (time: docs/pruning.md)
	$(BIN)/halo-client eval pruning --out docs --cache out/pruning/cache

bench-workbench: $(STAMP)  ## the workbench in Chromium: update cost, lag at 100 tokens/s, heap, UI server CPU
	$(BIN)/python bench/bench_workbench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# ---------------------------------------------------------------------------------------------
# The KoboldCPP patch (kobold_patch/): attention export in KoboldCPP v1.76 itself.
#   make patch-and-build [BACKEND=cuda|cpu] [KOBOLDCPP_SRC=DIR] [CUDA_ARCH=sm_90] [CUBLAS_ROOT=DIR]
#   make serve MODEL=PATH.gguf [KOBOLD_ARGS="--contextsize 8192 ..."]
#   make kobold-bench MODEL=PATH.gguf [UNPATCHED_DIR=DIR of a built unpatched v1.76]
#   make bench-context [MODEL=SmolLM2.gguf] [UNPATCHED_DIR=DIR] [BENCH_ARGS="--large-contexts 16384 32768"]
KOBOLDCPP_TAG ?= v1.76
KOBOLDCPP_GIT ?= https://github.com/LostRuins/koboldcpp.git
KOBOLDCPP_DIR ?= build/koboldcpp-$(KOBOLDCPP_TAG)
KOBOLDCPP_SRC ?=
BACKEND       ?= cuda
CUDA_ARCH     ?=
CUDA_PATH     ?=
CUBLAS_ROOT   ?=
PORTABLE      ?=
JOBS          ?=
MODEL         ?=
KOBOLD_ARGS   ?=
UNPATCHED_DIR ?=
BENCH_ARGS    ?=

.PHONY: patch-and-build kobold-patch serve kobold-bench bench-context kobold-clean

kobold-patch:  ## get KoboldCPP $(KOBOLDCPP_TAG) into $(KOBOLDCPP_DIR) and apply the patch (idempotent)
	KOBOLDCPP_SRC="$(KOBOLDCPP_SRC)" KOBOLDCPP_TAG="$(KOBOLDCPP_TAG)" KOBOLDCPP_GIT="$(KOBOLDCPP_GIT)" \
		kobold_patch/apply.sh "$(KOBOLDCPP_DIR)"

patch-and-build: kobold-patch  ## ... and build it (BACKEND=cuda, default, or cpu)
	BACKEND="$(BACKEND)" CUDA_ARCH="$(CUDA_ARCH)" CUDA_PATH="$(CUDA_PATH)" CUBLAS_ROOT="$(CUBLAS_ROOT)" JOBS="$(JOBS)" PORTABLE="$(PORTABLE)" \
		kobold_patch/build.sh "$(KOBOLDCPP_DIR)"

serve:  ## run the patched server on 127.0.0.1:$(PORT) with attention export: make serve MODEL=PATH.gguf
	BACKEND="$(BACKEND)" kobold_patch/serve.sh "$(KOBOLDCPP_DIR)" "$(MODEL)" $(PORT) $(KOBOLD_ARGS)

kobold-bench: $(STAMP)  ## tokens/s ratios of the patched server (needs MODEL; UNPATCHED_DIR for the third ratio)
	$(BIN)/python bench/bench_kobold.py --kobold-dir "$(KOBOLDCPP_DIR)" --model "$(MODEL)" \
		$(if $(UNPATCHED_DIR),--unpatched-dir "$(UNPATCHED_DIR)") $(BENCH_ARGS)

bench-context: $(STAMP)  ## attention export's cost by context length and frame layout (SmolLM2; a random 32x32 llama)
	$(BIN)/python bench/bench_context.py --kobold-dir "$(KOBOLDCPP_DIR)" $(if $(MODEL),--smollm2 "$(MODEL)") \
		$(if $(UNPATCHED_DIR),--unpatched-dir "$(UNPATCHED_DIR)") --json out/bench_context.json \
		--svg-dir out $(BENCH_ARGS)

kobold-clean:  ## remove $(KOBOLDCPP_DIR)
	rm -rf "$(KOBOLDCPP_DIR)"
