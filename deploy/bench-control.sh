#!/usr/bin/env bash
# Control-plane load: 1,000 then 5,000 real agent streams (mutual TLS, a
# heartbeat every 5 s) against two coordinators on a three-member etcd; the
# leader's CPU and memory at each size, then the time from SIGKILLing the
# leader to every agent attached to the new one.
#
#   deploy/bench-control.sh [WORK_DIR] [SIZES]   (default: /tmp/lifeboat-bench-control 1000,5000)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
cargo build --release --locked -p lifeboat -p lifeboat-agent -p lifeboat-coordinator -p lifeboat-integration-tests --bins
exec target/release/bench_control "${1:-/tmp/lifeboat-bench-control}" "${2:-1000,5000}"
