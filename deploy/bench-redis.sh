#!/usr/bin/env bash
# Redis benchmark: Lifeboat's capture beside the floor (redis-cli --rdb) and
# the peer (redis-cli --rdb - | restic backup --stdin) on the same server in
# the same run; a second capture after 1 % of the keys changed; restore to
# a started server against restic restore plus a start.
#
#   deploy/bench-redis.sh [WORK_DIR] [SIZE_GIB]   (default: /tmp/lifeboat-bench-redis 1)
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/services.sh install
cargo build --release --locked -p lifeboat -p lifeboat-integration-tests --bins
exec target/release/bench_redis "${1:-/tmp/lifeboat-bench-redis}" "${2:-1}"
