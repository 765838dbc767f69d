#!/usr/bin/env bash
# Restore drill benchmark: a database drill of Lifeboat (checklist, restore,
# WAL replay, checks, clean-up) beside pgBackRest's restore and recovery of
# the same database to the same target, in the same run.
#
#   deploy/bench-drill.sh [WORK_DIR] [SIZE_GIB] [WAL_GIB]   (default: /tmp/lifeboat-bench-drill 4 2)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
cargo build --release --locked -p lifeboat -p lifeboat-agent -p lifeboat-integration-tests --bins
exec target/release/bench_drill "${1:-/tmp/lifeboat-bench-drill}" "${2:-4}" "${3:-2}"
