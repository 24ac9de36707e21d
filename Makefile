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

.PHONY: install test test-fast soak lint mock demo workbench bench bench-quality bench-attention bench-locomo bench-workbench clean

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference,memory]'
	touch $(RUN_STAMP)

# what the workbench needs: the same and its web stack (the ui extra)
UI_STAMP := $(VENV)/.installed-ui
$(UI_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference,memory,ui]'
	touch $(UI_STAMP) $(RUN_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install --quiet -e '.[reference,memory,test,lint,agreement,ui]'
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

# the conversations written by hand for tuning, and the default's pruning score and memory's count as
# the tuning split chose them (their replays are deterministic: docs/pruning.md records them): the
# pruning benchmarks tune and score alike, and spend their hour on the held-out chats
TUNING_CHATS := --handwritten docs/conversations.handwritten-tune.jsonl \
	--handwritten docs/conversations.handwritten-tune-natural.jsonl
DEFAULT_CHOICES := --score "question heads (last row)" --memory-count 5

# what fits in an hour on 2 busy cores: 10 generated held-out chats and the 16 written by hand, the
# policies the goals name, the default's score and count as the tuning split chose them (BENCH_QUALITY_ARGS=
# for everything: every policy, 40 chats, the score and count tuned again; well over an hour here)
BENCH_QUALITY_ARGS ?= --count 10 $(DEFAULT_CHOICES) --policy default \
	--policy "default without memory" --policy "default (hybrid memory)" --policy "default (small embedder)" \
	--policy "brightness + BM25 memory" --policy "brightness + memory" \
	--policy "recency + memory" --policy recency --policy random --policy streaming --policy gold
bench-quality: $(STAMP)  ## the pruning benchmark on SmolLM2, with the conversations written by hand (held out, and for tuning): docs/pruning.md, .json, .svg (time: docs/pruning.md)
	$(BIN)/halo-client eval pruning --out docs --cache out/pruning/cache --handwritten docs/conversations.handwritten.jsonl \
		$(TUNING_CHATS) $(BENCH_QUALITY_ARGS)

# does the model's attention earn its place? The default against recency with the same memory, on
# all 40 generated held-out chats (10 in bench-quality's hour say little); tuned as bench-quality is
bench-attention: $(STAMP)  ## the default against recency + memory on 40 generated held-out chats: docs/attention/pruning.md, .json, .svg (about 20 minutes here)
	$(BIN)/halo-client eval pruning --out docs/attention --cache out/pruning/cache $(TUNING_CHATS) \
		--count 40 $(DEFAULT_CHOICES) --policy default --policy "recency + memory" --cost-sentences 0

# people's conversations from outside this project: windows of LoCoMo's ten (not on a registry: bring
# your copy), held out, the product tuned as bench-quality tunes it
LOCOMO_POLICIES := --policy default --policy "recency + memory" --policy "default without memory" \
	--policy "default (hybrid memory)" --policy "default (small embedder)" \
	--policy "brightness + BM25 memory" --policy gold
bench-locomo: $(STAMP)  ## the pruning benchmark on windows of LoCoMo's conversations, LOCOMO=path to its locomo10.json (github.com/snap-research/locomo): out/locomo/
	@test -n "$(LOCOMO)" || { echo "make bench-locomo: LOCOMO=PATH is needed: LoCoMo's locomo10.json, or the folder of its per-conversation files (github.com/snap-research/locomo, data/locomo10.zip)" >&2; exit 2; }
	$(BIN)/python bench/locomo_windows.py $(LOCOMO) --out out/locomo/windows.jsonl
	$(BIN)/halo-client eval pruning --out out/locomo --cache out/pruning/cache --handwritten out/locomo/windows.jsonl \
		$(TUNING_CHATS) --count 0 $(DEFAULT_CHOICES) $(LOCOMO_POLICIES) --cost-sentences 0

bench-workbench: $(STAMP)  ## the workbench in Chromium: update cost, lag at 100 tokens/s, heap, UI server CPU
	$(BIN)/python bench/bench_workbench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# ---------------------------------------------------------------------------------------------
# The engines (kobold_patch/): attention export in KoboldCPP v1.76 itself (HOST=koboldcpp, the
# default), or in current llama.cpp (HOST=llama.cpp: libllama from the llama-cpp-python sdist,
# served by `halo-client serve --engine llama.cpp`).
#   make patch-and-build [HOST=koboldcpp|llama.cpp] [BACKEND=cuda|cpu] [KOBOLDCPP_SRC=DIR] [CUDA_ARCH=sm_90] [CUBLAS_ROOT=DIR]
#   make patch-and-build HOST=llama.cpp BACKEND=cpu [RPC=1] [LLAMA_CPP_SDIST=llama_cpp_python-0.3.36.tar.gz]
#   make serve MODEL=PATH.gguf [KOBOLD_ARGS="--contextsize 8192 ..."]
#   make serve HOST=llama.cpp MODEL=PATH.gguf [SERVE_ARGS="--ctx-size 8192 --threads 4"]
#   make kobold-bench MODEL=PATH.gguf [UNPATCHED_DIR=DIR of a built unpatched v1.76]
#   make bench-context [MODEL=SmolLM2.gguf] [UNPATCHED_DIR=DIR] [BENCH_ARGS="--large-contexts 16384 32768"]
HOST          ?= koboldcpp
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
LLAMA_CPP_DIR ?= build/llama.cpp-0.3.36
LLAMA_CPP_SDIST ?=
LLAMA_LIB     ?=
RPC           ?=
SERVE_ARGS    ?=
LLAMA_CPP_PYTHON ?=

.PHONY: patch-and-build kobold-patch serve kobold-bench bench-context bench-llama-cpp kobold-clean llama-clean

kobold-patch:  ## get KoboldCPP $(KOBOLDCPP_TAG) into $(KOBOLDCPP_DIR) and apply the patch (idempotent)
	KOBOLDCPP_SRC="$(KOBOLDCPP_SRC)" KOBOLDCPP_TAG="$(KOBOLDCPP_TAG)" KOBOLDCPP_GIT="$(KOBOLDCPP_GIT)" \
		kobold_patch/apply.sh "$(KOBOLDCPP_DIR)"

ifeq ($(HOST),llama.cpp)
patch-and-build:  ## build the engine: KoboldCPP v1.76 (HOST=koboldcpp, default) or current llama.cpp (HOST=llama.cpp); BACKEND=cuda (default) or cpu
	BACKEND="$(BACKEND)" RPC="$(RPC)" CUDA_ARCH="$(CUDA_ARCH)" CUDA_PATH="$(CUDA_PATH)" CUBLAS_ROOT="$(CUBLAS_ROOT)" JOBS="$(JOBS)" \
		LLAMA_CPP_SDIST="$(LLAMA_CPP_SDIST)" PYTHON="$(PYTHON)" kobold_patch/llama.cpp/build.sh "$(LLAMA_CPP_DIR)"

serve: $(RUN_STAMP)  ## serve MODEL with attention export on 127.0.0.1:$(PORT): the patched KoboldCPP, or (HOST=llama.cpp) current llama.cpp
	$(BIN)/halo-client serve --engine llama.cpp --port $(PORT) $(if $(MODEL),--model "$(MODEL)") \
		$(if $(LLAMA_LIB),--llama-lib "$(LLAMA_LIB)") $(SERVE_ARGS)
else ifeq ($(HOST),koboldcpp)
patch-and-build: kobold-patch
	BACKEND="$(BACKEND)" CUDA_ARCH="$(CUDA_ARCH)" CUDA_PATH="$(CUDA_PATH)" CUBLAS_ROOT="$(CUBLAS_ROOT)" JOBS="$(JOBS)" PORTABLE="$(PORTABLE)" \
		kobold_patch/build.sh "$(KOBOLDCPP_DIR)"

serve:
	BACKEND="$(BACKEND)" kobold_patch/serve.sh "$(KOBOLDCPP_DIR)" "$(MODEL)" $(PORT) $(KOBOLD_ARGS)
else
patch-and-build serve:
	@echo "make $@: HOST=$(HOST): use koboldcpp (the default) or llama.cpp" >&2; exit 2
endif

kobold-bench: $(STAMP)  ## tokens/s ratios of the patched server (needs MODEL; UNPATCHED_DIR for the third ratio)
	$(BIN)/python bench/bench_kobold.py --kobold-dir "$(KOBOLDCPP_DIR)" --model "$(MODEL)" \
		$(if $(UNPATCHED_DIR),--unpatched-dir "$(UNPATCHED_DIR)") $(BENCH_ARGS)

bench-context: $(STAMP)  ## attention export's cost by context length and frame layout (KoboldCPP: SmolLM2, a random 32x32 llama; HOST=llama.cpp: SmolLM2, Gemma 3 270M)
ifeq ($(HOST),llama.cpp)
	$(BIN)/python bench/bench_context.py --engine llama.cpp $(if $(LLAMA_LIB),--llama-lib "$(LLAMA_LIB)") \
		$(if $(MODEL),--smollm2 "$(MODEL)") --large-contexts --json out/bench_context_llama_cpp.json \
		--svg-dir out/llama-cpp $(BENCH_ARGS)
else
	$(BIN)/python bench/bench_context.py --kobold-dir "$(KOBOLDCPP_DIR)" $(if $(MODEL),--smollm2 "$(MODEL)") \
		$(if $(UNPATCHED_DIR),--unpatched-dir "$(UNPATCHED_DIR)") --json out/bench_context.json \
		--svg-dir out $(BENCH_ARGS)
endif

bench-llama-cpp: $(STAMP)  ## the llama.cpp engine without export / llama-cpp-python's own generation (needs LLAMA_CPP_PYTHON, MODEL)
	$(BIN)/python bench/bench_llama_cpp.py --model "$(MODEL)" --llama-cpp-python "$(LLAMA_CPP_PYTHON)" \
		--json out/bench_llama_cpp.json $(BENCH_ARGS)

kobold-clean:  ## remove $(KOBOLDCPP_DIR)
	rm -rf "$(KOBOLDCPP_DIR)"

llama-clean:  ## remove $(LLAMA_CPP_DIR) (the llama.cpp tree and its builds)
	rm -rf "$(LLAMA_CPP_DIR)"
