#!/usr/bin/env bash
# The whole test suite: installs what it needs, then runs every test.
# This is the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build from scratch: incremental state would only cost disk (gigabytes
# over some thirty test binaries) and time.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

deploy/services.sh install
# The emulators the integration tests talk to, on loopback; they stay up for
# the next run (`deploy/services.sh stop` stops them, by PID).
deploy/services.sh start
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

log="$(mktemp -t lifeboat-test.XXXXXX)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, i }' "$log"
exit "$status"
