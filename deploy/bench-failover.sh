#!/usr/bin/env bash
# Failover benchmark: region losses (async and synchronous WAL streaming)
# and switchovers under a writer, with failover_after = 10s: RTO, RPO and
# switchover time beside the targets; then partitions between regions in
# network namespaces (needs root), counting split brain.
#
#   deploy/bench-failover.sh [LOSSES] [SWITCHOVERS] [SYNCHRONOUS_LOSSES] [PARTITIONS]   (default: 10 10 3 20)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
cargo build --release --locked -p lifeboat -p lifeboat-agent -p lifeboat-coordinator -p lifeboat-integration-tests --bins
exec target/release/bench_failover "${1:-10}" "${2:-10}" "${3:-3}" "${4:-20}"
