# Developer and CI entry points. `make test` and `make bench` need a
# redis-server binary: `make deps` installs one (it never starts or stops a
# system service; the tests spawn their own servers on free ports).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO ?= cargo
export RUST_BACKTRACE := 1

# apt-get as root, through sudo otherwise (if sudo exists).
SUDO := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null 2>&1 || echo sudo)

.PHONY: all deps build run test lint bench clean

all: lint test

# PostgreSQL hook (for the database-source tests, later), as one more step of `deps`:
#	@if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then \
#		$(SUDO) apt-get update; \
#		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql; \
#	fi
deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		echo "installing redis-server"; \
		$(SUDO) apt-get update; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
	fi
	@redis-server --version

build:
	$(CARGO) build --release --bins --locked

run: deps build
	./target/release/mdcache demo

# Not --all-targets: that would also run the criterion benches.
test: deps
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --locked

bench: deps
	$(CARGO) bench --locked

clean:
	$(CARGO) clean
