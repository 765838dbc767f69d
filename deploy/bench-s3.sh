#!/usr/bin/env bash
# Object-storage benchmark: Lifeboat beside restic's S3 backend, both against
# the same S3 emulator in the same run, then Lifeboat's write to a replicated
# S3 + Azure repository (policy `all`) against S3 alone.
#
#   deploy/bench-s3.sh [WORK_DIR] [SIZE_GIB] [RUNS]   (default: /tmp/lifeboat-bench-s3 1 1)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
deploy/services.sh start
cargo build --release --locked -p lifeboat -p lifeboat-integration-tests --bins
exec target/release/bench_files "${1:-/tmp/lifeboat-bench-s3}" "${2:-1}" "${3:-1}" s3
