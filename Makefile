# Two entry points: `make run` (gateway on embedded defaults) and `make test`
# (every linter and test). Both set up everything they need from scratch.
VENV    := .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
export PYO3_PYTHON := $(abspath $(PY))
CONFIG  ?=
# The interpreter of the venv: the distribution's CPython when it is 3.11+
# with venv support (Debian builds it with PGO and LTO, linked statically:
# 3-7% more messages/s end to end than pyenv's default build, BENCHMARKS.md),
# else the first python3 on PATH. `make PYTHON=... setup` picks another
# (once: remove .venv to remake it).
ifndef PYTHON  # chosen once per make run, not at every use
PYTHON  := $(shell /usr/bin/python3 -c 'import sys, ensurepip; assert sys.version_info >= (3, 11)' \
             2>/dev/null && echo /usr/bin/python3 || echo python3)
endif

.PHONY: run test setup build lint rust-test pytest system-deps bench clean

run: build
	$(BIN)/gateway run $(if $(CONFIG),--config $(CONFIG))

test: system-deps build lint rust-test pytest

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'maturin>=1.8,<2'

setup: $(PY)

# Builds the Rust extension into gateway/_core*.so and installs the package
# (editable) with its dev extras, then the built-in policy plugins (their own
# distribution in plugins/, found through entry points like any plugin).
# Cargo makes repeat builds incremental.
build: setup
	$(BIN)/maturin develop --release --quiet --extras dev
	$(BIN)/pip install -q --no-deps -e plugins

# Debian packages the tests use: nsd (real DNS server for test zones),
# postfix (smtp-source/smtp-sink for the benchmark), opendkim (an independent
# DKIM verifier for the tests), prometheus (scrapes a gateway to check the
# metrics and every dashboard query), redis-server (the fleet's shared store);
# with the distribution's Python, its test suite's data (CPython's email
# corpus, which tests/test_core_bindings.py parses).
PYTHON_TESTS := $(shell [ "$(PYTHON)" = /usr/bin/python3 ] && \
                  $(PYTHON) -c 'import sys; print("libpython%d.%d-testsuite" % sys.version_info[:2])')
system-deps:
	@command -v nsd >/dev/null && command -v smtp-source >/dev/null && \
	  command -v opendkim >/dev/null && command -v prometheus >/dev/null && \
	  command -v redis-server >/dev/null && \
	  { [ -z "$(PYTHON_TESTS)" ] || $(PYTHON) -c 'import test.test_email' 2>/dev/null; } || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    nsd postfix opendkim prometheus redis-server $(PYTHON_TESTS) >/dev/null)

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest gateway._core

rust-test:
	cargo test --workspace

pytest: build
	$(BIN)/pytest -q

bench: build system-deps
	$(BIN)/python -m benchmarks.parse_throughput
	$(BIN)/python -m benchmarks.dkim_sign
	$(BIN)/python -m benchmarks.scheduler_queues
	$(BIN)/python -m benchmarks.spool_sync
	$(BIN)/python -m benchmarks.relay_throughput $(BENCH_ARGS)

clean:
	rm -rf $(VENV) target gateway/_core*.so
