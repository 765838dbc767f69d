#!/usr/bin/env bash
# The main job on the embedded default (a local-directory repository, no
# cloud account, no etcd): back up a real directory, verify the repository,
# restore it elsewhere, compare; then the same through the control plane: a
# coordinator (embedded state) and an agent over mutual TLS run a scheduled
# backup, one asked for by an operator, and a restore; print what happened.
#
#   deploy/demo.sh [DIRECTORY]     (default: /usr/share/doc)
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE="$(realpath "${1:-/usr/share/doc}")"

deploy/services.sh install >/dev/null
cargo build --release --locked -p lifeboat -p lifeboat-agent -p lifeboat-coordinator
LIFEBOAT="$PWD/target/release/lifeboat"
AGENT="$PWD/target/release/lifeboat-agent"
COORDINATOR="$PWD/target/release/lifeboat-coordinator"

WORK="$(mktemp -d -t lifeboat-demo.XXXXXX)"
export LIFEBOAT_REPO="$WORK/repo" LIFEBOAT_KEY_FILE="$WORK/master.key"
step() { printf '\n== %s\n' "$*"; }

step "generate a master key and create the repository in $LIFEBOAT_REPO"
"$LIFEBOAT" key generate --out "$LIFEBOAT_KEY_FILE"
"$LIFEBOAT" repo init

step "back up $SOURCE"
FIRST=$("$LIFEBOAT" backup files "$SOURCE" --tag demo)

step "back it up again: unchanged files are not read, nothing new is stored"
"$LIFEBOAT" backup files "$SOURCE" --tag demo >/dev/null

step "list snapshots"
"$LIFEBOAT" snapshots

step "verify: download, decrypt and hash every object"
"$LIFEBOAT" verify --read-data

step "restore the first snapshot into $WORK/restored"
"$LIFEBOAT" restore "$FIRST" --target "$WORK/restored" --path "$SOURCE"

step "compare the restore with the original"
diff -r --no-dereference "$SOURCE" "$WORK/restored"
echo "identical: $(find "$WORK/restored" | wc -l) entries match $SOURCE"

step "control plane: a development CA, and certificates for a coordinator, an agent and an operator"
"$LIFEBOAT" certs init --dir "$WORK/certs" --coordinator demo --host 127.0.0.1 --agent demo-host --admin operator
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/policy.yaml" <<EOF
backup_schedules:
  files:
    demo:
      interval: "5s"
      retention_days: 7
EOF
cat >"$WORK/coordinator.toml" <<EOF
name = "demo"
listen = "127.0.0.1:$PORT"
state_dir = "coordinator"
policy = "policy.yaml"
heartbeat = "2s"
[tls]
ca = "certs/ca.pem"
cert = "certs/coordinator-demo.pem"
key = "certs/coordinator-demo.key"
[roles]
operator = "operator"
EOF
cat >"$WORK/agent.toml" <<EOF
host = "demo-host"
coordinators = ["https://127.0.0.1:$PORT"]
[tls]
ca = "certs/ca.pem"
cert = "certs/agent-demo-host.pem"
key = "certs/agent-demo-host.key"
[repository]
repo = "repo"
key_file = "master.key"
[[source]]
id = "docs"
kind = "files"
paths = ["$SOURCE"]
schedules = ["files.demo"]
rpo = "1h"
EOF
RUST_LOG=info "$COORDINATOR" run --config "$WORK/coordinator.toml" 2>"$WORK/coordinator.log" &
COORDINATOR_PID=$!
RUST_LOG=info "$AGENT" run --config "$WORK/agent.toml" 2>"$WORK/agent.log" &
AGENT_PID=$!
trap 'kill $AGENT_PID $COORDINATOR_PID 2>/dev/null || true' EXIT
export LIFEBOAT_COORDINATOR="https://127.0.0.1:$PORT" LIFEBOAT_CERTS="$WORK/certs" LIFEBOAT_LOGIN=operator
echo "coordinator on $LIFEBOAT_COORDINATOR (pid $COORDINATOR_PID), agent demo-host (pid $AGENT_PID); logs in $WORK"

step "wait for the schedule (every 5s) to back up demo-host/docs through the agent"
for _ in $(seq 1 60); do
  if "$LIFEBOAT" jobs 2>/dev/null | grep -q '^files.demo@.* succeeded'; then break; fi
  sleep 1
done
"$LIFEBOAT" jobs | grep -m1 '^files.demo@.* succeeded' || { echo "no scheduled backup ran; see $WORK/*.log"; exit 1; }

step "status: the leader, the source against its RPO, the next run"
"$LIFEBOAT" status
"$LIFEBOAT" agents

step "an operator asks for a backup now, and waits for it"
"$LIFEBOAT" backup run demo-host/docs --wait

step "the agent restores the newest snapshot into $WORK/restored-by-agent"
"$LIFEBOAT" restore agent demo-host/docs --target-dir "$WORK/restored-by-agent" --path "$SOURCE" --wait
diff -r --no-dereference "$SOURCE" "$WORK/restored-by-agent"
echo "identical: the agent's restore matches $SOURCE"

step "the coordinator's audit log of these calls (hash-chained)"
"$LIFEBOAT" audit verify "$WORK/coordinator/audit.log"

step "summary"
echo "source:     $SOURCE ($(du -sh --apparent-size "$SOURCE" | cut -f1))"
echo "repository: $LIFEBOAT_REPO ($(du -sh "$LIFEBOAT_REPO" | cut -f1) on disk, compressed and encrypted)"
echo "restored:   $WORK/restored (offline) and $WORK/restored-by-agent (through the control plane)"
echo "jobs:       $("$LIFEBOAT" jobs | tail -n +2 | wc -l) run by the coordinator and the agent"
echo "remove the demo with: rm -rf $WORK"
