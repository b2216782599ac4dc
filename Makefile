# Developer and CI entry points. `make test` and `make bench` need redis-server
# and PostgreSQL binaries (and openssl for the TLS test): `make deps` installs them (it never starts or stops a
# system service; the tests spawn their own servers on free ports).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO ?= cargo
export RUST_BACKTRACE := 1

# apt-get as root, through sudo otherwise (if sudo exists).
SUDO := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || echo sudo)

.PHONY: all deps build run test lint bench faults fuzz soak clean

all: lint test

# PostgreSQL: the tests run initdb/pg_ctl themselves (tests/support/pg.rs), from
# PATH or from Debian's /usr/lib/postgresql/*/bin, which is not on PATH. Debian's
# package may start a system cluster on 5432; the tests neither use nor stop it.
deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "installing redis-server"; \
		$(SUDO) apt-get update; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
	fi
	@redis-server --version
	@if ! command -v openssl >/dev/null 2>&1; then \
		echo "installing openssl (tests/tls_acl.rs makes a throwaway CA with it)"; \
		$(SUDO) apt-get update; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openssl; \
	fi
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing postgresql"; \
		$(SUDO) apt-get update; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
	fi
	@initdb="$$(command -v initdb || ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"; \
		if [ -z "$$initdb" ]; then echo "no initdb found after installing postgresql" >&2; exit 1; fi; \
		"$$initdb" --version

# The `mdcache` binary needs the `cli` feature (its own dependencies stay out of the library).
build:
	$(CARGO) build --release --bins --locked --features cli

# The embedded trading workload for 10 s: in-process L1 and source, no servers needed (so no
# `deps`). Extra flags through SIMULATE_ARGS, e.g. make run SIMULATE_ARGS="--report sim.json".
SIMULATE_ARGS ?=
run: build
	./target/release/mdcache simulate --duration 10s $(SIMULATE_ARGS)

# Not --all-targets: that would also run the criterion benches. `--features cli` builds the
# binary that tests/cli.rs, simulate.rs and faults*.rs run (with the default features).
test: deps
	$(CARGO) test --locked --features cli

# Every feature together, then the slim library (no PostgreSQL, no Prometheus exporter, no CLI)
# so that it keeps compiling, warning-free.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --all-features --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --all-features --locked
	$(CARGO) clippy --no-default-features --lib --locked -- -D warnings

# The fault-injection run: every fault scenario under the `mdcache simulate` workload (the
# `simulate_*` tests of tests/faults_simulate.rs, release build, one at a time; each fails if
# a correctness figure is not 0), then docs/faults.md and docs/faults.json from simulate's
# reports (examples/faults_report.rs). Each scenario's stdout and stderr are kept in
# target/faults/*.log.
faults: deps
	rm -rf target/faults && mkdir -p target/faults
	MDCACHE_FAULTS_OUT=$(CURDIR)/target/faults $(CARGO) test --release --locked --features cli --test faults_simulate -- --include-ignored --test-threads=1 simulate_
	MDCACHE_FAULTS_OUT=$(CURDIR)/target/faults $(CARGO) run --release --locked --example faults_report

# The fuzz harnesses with a long budget (proptest; stable Rust): tests/fuzz.rs and the library's
# reply-parser harnesses (src/l2/replies_fuzz.rs), FUZZ_CASES cases each. `make test` runs the
# same harnesses with their short default budgets.
FUZZ_CASES ?= 20000
fuzz: deps
	MDCACHE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked --features cli --test fuzz
	MDCACHE_FUZZ_CASES=$(FUZZ_CASES) $(CARGO) test --release --locked --features cli --lib replies_fuzz

# The soak: `simulate --engines 2` against Redis and PostgreSQL for SOAK_SECS (10 minutes by
# default) with a Redis fault every 30 s (killed, hung, +20 ms, resets, in turn); fails on a
# leak or a non-zero correctness figure, and writes docs/soak.md (tests/soak.rs).
SOAK_SECS ?= 600
soak: deps
	MDCACHE_SOAK_SECS=$(SOAK_SECS) MDCACHE_SOAK_OUT=$(CURDIR)/docs/soak.md $(CARGO) test --release --locked --features cli --test soak -- --ignored --nocapture

bench: deps
	$(CARGO) bench --locked

clean:
	$(CARGO) clean

# The multi-process workload: one feed and two engine processes of `mdcache simulate`
# (--role feed / --role engine) against a throwaway redis-server on a free port, for 10 s
# (scripts/multi.sh; needs redis-server, see `deps`). Reports and logs in target/multi/.
# MULTI_ENGINES, MULTI_DURATION and MULTI_THREADS change the shape; extra simulate flags for
# every process through MULTI_ARGS, e.g. make multi MULTI_ARGS="--readers 2".
.PHONY: multi
MULTI_ARGS ?=
multi: build
	MDCACHE="$${CARGO_TARGET_DIR:-$(CURDIR)/target}/release/mdcache" MULTI_OUT=$(CURDIR)/target/multi \
		scripts/multi.sh $(MULTI_ARGS)
