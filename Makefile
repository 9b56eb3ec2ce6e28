# The two commands of the README:
#   make demo   set up (idempotent) and run the main job
#   make test   set up (idempotent) and run every test and check
# Cargo finds libtorch through the venv's python (tch's LIBTORCH_USE_PYTORCH route); build.rs
# embeds an rpath, so the built binaries need no environment of their own.
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= cargo

.PHONY: setup build demo demo-memory demo-client test lint lint-deploy fuzz-tools browser-tools fuzz image bench bench-model bench-memory bench-prefill bench-batch bench-load evaluate
setup:
	./scripts/setup.sh

build: setup
	$(CARGO) build --release

# The product: the OpenAI-compatible server on the default model, sessions in SQLite under data/.
# Try it with the README's curl and OpenAI SDK examples; Ctrl-C (or SIGTERM) stops it gracefully.
demo: build
	./target/release/infini serve

# The earlier demos: the ∞-former memory on its own, and one greedy generation.
demo-memory: build
	./target/release/infini demo-memory
	./target/release/infini generate --prompt "The capital of France is" --temperature 0 --max-tokens 24

# The official openai Python client against a server it starts (installs openai into .venv once).
demo-client: build
	.venv/bin/python -c "import openai" 2>/dev/null || .venv/bin/python -m pip install --quiet --disable-pip-version-check openai
	.venv/bin/python scripts/openai_client_check.py --binary target/release/infini

lint: lint-deploy
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Dockerfile, compose and Kubernetes manifests: hadolint, yamllint, kubernetes-validate (pinned,
# installed into .venv on first use; offline and about a second afterwards).
lint-deploy: setup
	./scripts/lint_deploy.sh

# The container image, built and run without Docker (buildah; root; ~18 minutes on 2 cores, ~20 GB of disk):
# not part of `make test` or CI. See docs/OPERATIONS.md, "The image".
image:
	./scripts/build_image.sh

test: lint fuzz-tools browser-tools
	$(CARGO) test

# schemathesis (pinned) into .venv, for tests/api_fuzz.rs.
fuzz-tools: setup
	./scripts/fuzz_tools.sh

# Debian's chromium and chromium-driver (apt, when missing) and selenium (pinned) into .venv, for
# the playground's browser test (tests/playground.rs).
browser-tools: setup
	./scripts/browser_tools.sh

# The API fuzzers with a larger budget than `make test` gives them (25 cases per operation and
# phase there): schemathesis against an open server and one with keys, and the property tests.
fuzz: fuzz-tools
	INFINI_FUZZ_EXAMPLES=$${INFINI_FUZZ_EXAMPLES:-200} PROPTEST_CASES=$${PROPTEST_CASES:-1000} \
		$(CARGO) test --test api_fuzz --test api_properties -- --nocapture

bench: setup
	$(CARGO) bench --bench ltm

# Decode and prefill tokens/s at batch 1 against llama-cpp-python on the same GGUF (installs it once),
# medians of 3 rounds that alternate the peer and ours (INFINI_BENCH_ROUNDS).
bench-model: setup
	$(CARGO) bench --bench model

# Decode time per token after 1k–100k tokens of history with the session memory, bytes per tier,
# and decode tokens/s at 100 and 7,800 tokens of history against llama-cpp-python.
bench-memory: setup
	$(CARGO) bench --bench memory

# Prefill tokens/s of an 8,000- and a 32,000-token prompt through the session memory against the
# plain KV cache (up to the model's context), in the server's chunks, medians of 3 rounds.
bench-prefill: setup
	$(CARGO) bench --bench prefill

# Batched decode with the session memory: tokens/s of one engine step for 1, 4, 16 and 64 rows at
# once, each with 100 and 1,000 tokens of history (the peer for many chats is bench-load's).
bench-batch: setup
	$(CARGO) bench --bench batch

# N = 1, 4, 16 concurrent streaming chats (and 4 with 7,800 tokens of history each) against our
# server and llama.cpp's llama-server (-np 16, built once from the llama-cpp-python 0.3.36 sdist into
# the git-ignored .cache/), one server at a time: tokens/s, TTFT and inter-token latency, the ratio.
bench-load: build
	./scripts/fetch_eval_text.sh
	.venv/bin/python scripts/bench_load.py --llama-server "$$(./scripts/build_llama_server.sh)" $(LOAD_FLAGS)

# docs/EVALUATION.md: perplexity and pass keys, tier by tier, on the King James Bible (hours on 2
# cores, the 100k pass keys most of them; EVAL_FLAGS narrows it, e.g. EVAL_FLAGS="--lengths
# 1200,4800 --keys 2"; on a GPU machine scripts/gpu/evaluate.sh runs it in about 10 minutes).
evaluate: build
	./scripts/fetch_eval_text.sh
	./target/release/infini eval memory --text data/kjv.txt --out docs/EVALUATION.md $(EVAL_FLAGS)
