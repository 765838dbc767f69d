#!/usr/bin/env bash
# PostgreSQL benchmark: Lifeboat beside pgBackRest on the same cluster in the
# same run (full backup, second backup after a day of changes, restore, WAL
# archiving rate).
#
#   deploy/bench-postgres.sh [WORK_DIR] [SIZE_GIB]   (default: /tmp/lifeboat-bench-postgres 1.5)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
cargo build --release --locked -p lifeboat -p lifeboat-agent -p lifeboat-integration-tests --bins
exec target/release/bench_postgres "${1:-/tmp/lifeboat-bench-postgres}" "${2:-1.5}"
