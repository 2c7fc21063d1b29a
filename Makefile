# Every target creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint proto bench venv test-compose fuzz

$(STAMP): pyproject.toml setup.py xds_proxy/access_log/native.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The REST xDS interop tests run a real sovereign, whose pins clash with ours: it gets a
# virtualenv of its own, and `make test` names its script so those tests run (never skip).
SOVEREIGN_VENV := .venv-sovereign
SOVEREIGN_STAMP := $(SOVEREIGN_VENV)/.installed-stamp
$(SOVEREIGN_STAMP): pyproject.toml
	test -x $(SOVEREIGN_VENV)/bin/python || $(PYTHON) -m venv $(SOVEREIGN_VENV)
	$(SOVEREIGN_VENV)/bin/python -m pip install -q 'sovereign>=0.32,<0.33'
	touch $(SOVEREIGN_STAMP)

run: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The suite runs in TEST_WORKERS pytest-xdist processes (most integration and interop time is
# waiting on drain timers, timeouts and process start-up, so it pays off on 2 cores), whole files
# per worker (--dist loadfile: a module fixture starts its processes once); then the tests
# marked `serial` (they measure timing tightly) run alone. TEST_WORKERS=0: all in one process.
# Then the drain, churn, hot-restart, admin and connection-limit suites run again against
# xds-proxy with two worker processes (`--concurrency 2`, XDS_PROXY_TEST_CONCURRENCY).
TEST_WORKERS ?= 3
PYTEST := SOVEREIGN_BIN=$(CURDIR)/$(SOVEREIGN_VENV)/bin/sovereign $(BIN)/python -m pytest -q -rs -p no:cacheprovider
WORKER_SUITES := $(addprefix tests/integration/,test_drains.py test_http1_drain.py \
	test_http2_drain.py test_admin_drains.py test_admin_drains_http2.py test_drain_controls.py \
	test_churn.py test_hot_restart.py test_connection_limits.py)
test: $(STAMP) $(SOVEREIGN_STAMP) lint
ifeq ($(TEST_WORKERS),0)
	$(PYTEST)
	XDS_PROXY_TEST_CONCURRENCY=2 $(PYTEST) $(WORKER_SUITES)
else
	status=0; \
	$(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m "not serial" || status=1; \
	$(PYTEST) -m serial || status=1; \
	XDS_PROXY_TEST_CONCURRENCY=2 $(PYTEST) -n $(TEST_WORKERS) --dist loadfile -m "not serial" \
		$(WORKER_SUITES) || status=1; \
	XDS_PROXY_TEST_CONCURRENCY=2 $(PYTEST) -m serial $(WORKER_SUITES) || status=1; \
	exit $$status
endif

# The hostile-input fuzzers with a larger example budget (FUZZ_EXAMPLES, default 3000); a
# failure prints FUZZ_SEED=N, and `make fuzz FUZZ_SEED=N` replays that run. The HTTP/2 codec
# round trips and differentials against h2/hpack/hyperframe run 10,000 examples each
# (H2_FUZZ_EXAMPLES).
FUZZ_EXAMPLES ?= 3000
H2_FUZZ_EXAMPLES ?= 10000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python -m pytest -q \
		-p no:cacheprovider tests/unit/test_hostile_listeners.py tests/integration/test_fuzz_lds.py
	FUZZ_EXAMPLES=$(H2_FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(BIN)/python -m pytest -q \
		-p no:cacheprovider tests/unit/test_h2_fast_differential.py tests/unit/test_http2_direct_differential.py

proto: $(STAMP)
	$(BIN)/python -m control_plane_stub.generate_proto

bench: $(STAMP)
	$(BIN)/python -m bench $(if $(LARGE),--large,)

# Builds the images (local debootstrap base, wheels from the host) and runs the compose `tests`
# service against the other services; starts a private dockerd when none runs, stops it after.
test-compose: $(STAMP)
	docker/test-compose.sh

# Zero-downtime proof under churn (issue 10), ours and Envoy side by side (20 s each); LARGE=1
# for the issue's full 60 s, or CHURN_SECONDS=N; RDS=1 for the RDS scenario (route updates every
# 200 ms over ADS, listener updates renaming the route config); EDS=1 for the EDS scenario (the
# backend cluster's endpoints replaced every 200 ms over ADS). CONCURRENCY=N runs both proxies
# with N workers; DRAIN_TIME=S and DRAIN_STRATEGY=gradual|immediate set both proxies' drain
# flags (default 2 s gradual; issue 22: CONCURRENCY=2 with immediate 5 s and gradual 1 s).
# Table on stdout; table and PNG in bench/results/.
.PHONY: bench-churn
bench-churn: $(STAMP)
	$(BIN)/python -m bench.churn $(if $(LARGE),--large,) $(if $(RDS),--rds,) $(if $(EDS),--eds,) $(if $(CHURN_SECONDS),--seconds $(CHURN_SECONDS),) \
		$(if $(CONCURRENCY),--concurrency $(CONCURRENCY),) $(if $(DRAIN_TIME),--drain-time $(DRAIN_TIME),) $(if $(DRAIN_STRATEGY),--drain-strategy $(DRAIN_STRATEGY),)
