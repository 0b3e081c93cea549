# flumen — `make demo` runs the reference pipeline, `make test` runs every test.
# Both install what is missing first (Debian's Wasm toolchain, when no rustup wasm32 target; a C
# toolchain for librdkafka; tansu, the Kafka-compatible broker the Kafka tests run).

CARGO  ?= cargo
FLUMEN := target/release/flumen
UDFS   := udfs tests/udfs
WASM_TARGET := wasm32-unknown-unknown
TANSU_VERSION := 0.6.0
TANSU_ROOT  := $(CURDIR)/target/tools/tansu-$(TANSU_VERSION)
TANSU       := $(TANSU_ROOT)/bin/tansu
MERMAID_VERSION := 12.3.0
MERMAID     := $(CURDIR)/target/tools/mermaid-$(MERMAID_VERSION)/node_modules/mermaid/dist/mermaid.min.js

.PHONY: demo demo-kafka test lint udfs native-udfs flumen wasm-toolchain c-toolchain tansu bench \
	bench-swap bench-checkpoint clean test-tools

## Run the reference pipeline: ORDERS=x.jsonl OUT_DIR=dir make demo ARGS="..."
demo: udfs
	$(FLUMEN) run pipelines/orders.toml $(ARGS)

## The reference pipeline on Kafka: starts a broker (tansu) on a free port, loads the sample orders
## into topic `orders`, runs pipelines/orders-kafka.toml to the end, prints each topic's count.
demo-kafka: udfs tansu
	TANSU=$(TANSU) FLUMEN=$(FLUMEN) scripts/demo-kafka.sh $(ARGS)

## Every check CI runs: formatting, lints, unit, property and end-to-end tests (the Kafka ones
## against tansu, started and stopped by the tests).
test: udfs lint tansu test-tools
	FLUMEN_TANSU=$(TANSU) FLUMEN_MERMAID=$(MERMAID) $(CARGO) test --release --workspace

## What the end-to-end tests drive besides flumen: Debian's chromium (the web view, Mermaid),
## promtool from Debian's prometheus (checks /metrics), graphviz (renders `flumen graph`), and
## Mermaid from the npm registry, kept in target/tools.
test-tools: $(MERMAID)
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v dot >/dev/null 2>&1 || missing="$$missing graphviz"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's$$missing for the end-to-end tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing; \
	else \
		echo "the end-to-end tests need$$missing (Debian packages)" >&2; exit 1; \
	fi

$(MERMAID):
	@command -v npm >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; \
		else echo "Mermaid's check needs npm" >&2; exit 1; fi; }
	npm install --silent --no-audit --no-fund --prefix $(CURDIR)/target/tools/mermaid-$(MERMAID_VERSION) \
		mermaid@$(MERMAID_VERSION)

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc -p flumen-sdk --no-deps

## Throughput, Wasm ÷ native, per-stage time and peak RSS of the reference pipeline and the two
## peer jobs; writes target/bench.json (BENCH_RECORDS, BENCH_JOB_RECORDS, BENCH_ROUNDS).
bench: udfs native-udfs
	$(CARGO) bench -p flumen --bench pipelines

## The UDFs built for this machine too, for `flumen run --backend native`.
native-udfs: flumen
	$(FLUMEN) build udfs --native

## How long a hot swap pauses the reference pipeline under full load (p50, p99).
bench-swap: udfs
	$(CARGO) bench -p flumen --bench swap_pause

## What checkpoints cost the reference pipeline: throughput with 1 s checkpoints ÷ without, the
## pause (p50, p99), the checkpoint's size and the recovery time at ~2 M deduplication ids;
## writes target/bench-checkpoint.json (BENCH_RECORDS, BENCH_ROUNDS).
bench-checkpoint: udfs
	$(CARGO) bench -p flumen --bench checkpoint

## Build every UDF crate to target/flumen/*.wasm (incremental).
udfs: flumen wasm-toolchain
	$(FLUMEN) build $(UDFS)

flumen: c-toolchain
	$(CARGO) build --release -p flumen

## librdkafka is built from rdkafka-sys's bundled source by its own configure script: it needs a C
## compiler and make (Debian's build-essential), installed when missing.
c-toolchain:
	@if command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's build-essential to build librdkafka"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential; \
	else \
		echo "librdkafka needs a C compiler and make: install build-essential" >&2; exit 1; \
	fi

## tansu, the Rust Kafka-compatible broker, built once (about 20 minutes on 2 cores) into
## target/tools, which later builds reuse.
tansu: $(TANSU)

$(TANSU):
	$(CARGO) install tansu --version $(TANSU_VERSION) --locked --features dynostore,libsql \
		--root $(TANSU_ROOT)

## A way to build for wasm32: rustup's target if installed, else Debian's rustc-web with its
## source (never a download from rustup's servers).
wasm-toolchain:
	@if rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)'; then exit 0; fi; \
	if [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] && [ -d /usr/lib/rustlib/src/rust/library/std ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's rustc-web cargo-web rust-web-src to build Wasm modules"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustc-web cargo-web rust-web-src; \
	else \
		echo "no way to build $(WASM_TARGET): run 'rustup target add $(WASM_TARGET)'," \
		     "or as root on Debian 'apt-get install rustc-web cargo-web rust-web-src'" >&2; \
		exit 1; \
	fi

clean:
	$(CARGO) clean
	rm -rf out
