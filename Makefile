# Everything sets itself up: a virtual environment in .venv, the package installed
# editable with its test extra. Only python3 (>= 3.11) and make are needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: demo test bench bench-profile bench-all bench-limits bench-crash fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

DEMO_INPUTS := samples/prompts.jsonl samples/chat_bodies.jsonl samples/batch_api.jsonl

# The main job against the built-in simulator (no key, no network): start it on a free
# port, run the samples through it, show the summary, stop it.
demo: $(STAMP)
	@rm -rf demo-output && mkdir -p demo-output
	@$(BIN)/batchib simulate --port 0 --latency-ms 40 --port-file demo-output/simulator.url \
	    >demo-output/simulator.log 2>&1 & sim=$$!; \
	trap 'kill $$sim 2>/dev/null' EXIT INT TERM; \
	for i in $$(seq 100); do [ -s demo-output/simulator.url ] && break; sleep 0.1; done; \
	[ -s demo-output/simulator.url ] || { cat demo-output/simulator.log; exit 1; }; \
	BATCHIB_API_KEY=demo-key-not-secret $(BIN)/batchib run $(DEMO_INPUTS) \
	    --model gpt-5.4-mini -o demo-output/results.jsonl --overwrite \
	    --base-url "$$(cat demo-output/simulator.url)"; \
	status=$$?; echo "results: demo-output/results.jsonl, summary: demo-output/results.jsonl.summary.json"; \
	exit $$status

test: $(STAMP)
	$(BIN)/ruff format --check batchib tests bench
	$(BIN)/ruff check batchib tests bench
	$(BIN)/mypy
	$(BIN)/pytest

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The performance suite (bench/perf.py, under 10 minutes on 2 cores): batchib vs a bare
# aiohttp floor and the OpenAI SDK against a canned server (instant and 20 ms, -c 64 and
# 256), peak RSS up to 1M input lines, start-up, estimate speed. Every output is checked.
# Prints a markdown table; writes bench/results.json.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/perf.py

# One batchib run under py-spy (instant server, -c 64) after a quick pass of the suite:
# the top functions by self and inclusive time in bench/profile.txt.
bench-profile: $(BENCH_STAMP)
	$(BIN)/python bench/perf.py --profile --skip-sdk --repeats 1 --rss-lines 20000

# Every benchmark: the suite, then limits/faults and crash/resume (roughly 20 minutes more).
bench-all: bench bench-limits bench-crash

# Rate limits and faults, batchib vs the OpenAI SDK, judged from the simulator's log.
bench-limits: $(BENCH_STAMP)
	$(BIN)/python bench/limits.py

# 20 runs killed with SIGKILL at random moments and 10 with SIGTERM, each resumed.
bench-crash: $(STAMP)
	$(BIN)/python bench/crash.py --kills 20 --signal KILL
	$(BIN)/python bench/crash.py --kills 10 --signal TERM

fmt: $(STAMP)
	$(BIN)/ruff format batchib tests bench
	$(BIN)/ruff check --fix batchib tests bench

clean:
	rm -rf $(VENV) demo-output
