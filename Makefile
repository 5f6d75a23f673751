# Entry points for humans and CI. Each target first installs any missing
# Debian packages (scripts/deps.sh), then builds with CMake.
#
#   make up      build and start the whole deployment (moat.json) in the foreground
#   make test    format check, tests, then the same tests under ASan+UBSan
#   make bench   benchmarks (see bench/README.md; make bench-tls: the cost of TLS)
#   make chaos-long  the long order-saga chaos drill (>= 10,000 orders)
#   make drill-recovery  the recovery drill (test_reconcile) with 20x the orders
#   make soak-jetstream  the JetStream transport under ASan for 10 minutes

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE ?= cmake
CTEST ?= ctest

.PHONY: all deps build up down status test test-fast format format-check bench bench-tls chaos-long drill-recovery soak-jetstream clean

all: build

deps:
	@./scripts/deps.sh

build: deps
	@$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TESTS=OFF >/dev/null
	@$(CMAKE) --build build -j $(JOBS)

# DEPLOY=deploy/scale.json (or deploy/social.json) starts another deployment.
up: build
	./build/bin/moat up $(if $(DEPLOY),-f $(DEPLOY))

down:
	./build/bin/moat down

status:
	./build/bin/moat status

# The test suite runs twice: an optimised build with test hooks, then an
# ASan+UBSan build (leak checking included) of the same tests.
test: deps format-check
	@$(CMAKE) -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TEST_HOOKS=ON >/dev/null
	@$(CMAKE) --build build-test -j $(JOBS)
	@cd build-test && $(CTEST) --output-on-failure -j $(JOBS)
	@$(CMAKE) -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOAT_TEST_HOOKS=ON -DMOAT_SANITIZE=ON >/dev/null
	@$(CMAKE) --build build-asan -j $(JOBS)
	@cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		$(CTEST) --output-on-failure -j $(JOBS)

# Just the optimised test build (quicker while developing).
test-fast: deps
	@$(CMAKE) -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TEST_HOOKS=ON >/dev/null
	@$(CMAKE) --build build-test -j $(JOBS)
	@cd build-test && $(CTEST) --output-on-failure -j $(JOBS)

format:
	@git ls-files '*.c' '*.h' | xargs clang-format -i

format-check: deps
	@./scripts/format-check.sh

bench: deps
	@./scripts/deps.sh --bench
	@$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TESTS=OFF >/dev/null
	@$(CMAKE) --build build -j $(JOBS)
	./bench/http.sh

# The cost of TLS on every hop: the shop with and without "tls", same run.
bench-tls: deps
	@./scripts/deps.sh --bench
	@$(CMAKE) -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TESTS=OFF >/dev/null
	@$(CMAKE) --build build -j $(JOBS)
	./bench/tls.sh

# The recovery drill at 20 times the orders of make test's run: orders,
# payments and inventory each restored from a copy while the shop went on,
# moat reconcile --repair, moat audit at 0 (docs/recovery.md).
RECOVERY_SCALE ?= 20
drill-recovery: deps
	@$(CMAKE) -S . -B build-test -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TEST_HOOKS=ON >/dev/null
	@$(CMAKE) --build build-test -j $(JOBS)
	@cd build-test && MOAT_RECONCILE_SCALE=$(RECOVERY_SCALE) $(CTEST) --output-on-failure -R integration/test_reconcile

# The long chaos drill (not part of make test): the repository's deployment
# (moat.json, its ports and var/) under `moat up`, >= 10,000 orders placed
# through the gateway while services are killed and paused, then settled
# and audited. Exit status is the audit's. Stop a running `make up` first.
CHAOS_LONG_DURATION ?= 1100
CHAOS_LONG_RATE ?= 10
chaos-long: build
	@mkdir -p var
	@set -e; ./build/bin/moat up > var/chaos-long-up.log 2>&1 & up=$$!; \
	trap 'kill $$up 2>/dev/null; wait $$up' EXIT; \
	for i in $$(seq 1 150); do ./build/bin/moat status >/dev/null 2>&1 && break; sleep 0.2; done; \
	./build/bin/moat chaos --setup --duration $(CHAOS_LONG_DURATION) --rate $(CHAOS_LONG_RATE) --settle 300

# The JetStream transport soaked under ASan+UBSan (not part of make test,
# which runs a 60 s version): tests/integration/test_jetstream_soak.c for
# SOAK_JETSTREAM_S seconds: orders, service kills, nats-server kills and
# storage wipes, then 0 audit violations and no sanitizer report.
SOAK_JETSTREAM_S ?= 600
soak-jetstream: deps
	@$(CMAKE) -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOAT_TEST_HOOKS=ON -DMOAT_SANITIZE=ON >/dev/null
	@$(CMAKE) --build build-asan -j $(JOBS)
	@cd build-asan && MOAT_JETSTREAM_SOAK_S=$(SOAK_JETSTREAM_S) \
		ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		./tests/it_test_jetstream_soak

clean:
	rm -rf build build-test build-asan
