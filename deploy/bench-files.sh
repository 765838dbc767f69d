#!/usr/bin/env bash
# File-tree benchmark: Lifeboat beside restic on the same generated tree in
# the same run (first backup, unchanged backup, a day of changes, restore).
#
#   deploy/bench-files.sh [WORK_DIR] [SIZE_GIB] [RUNS]   (default: /tmp/lifeboat-bench-files 1 3)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
cargo build --release --locked -p lifeboat -p lifeboat-integration-tests --bins
exec target/release/bench_files "${1:-/tmp/lifeboat-bench-files}" "${2:-1}" "${3:-3}"
