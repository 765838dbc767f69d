#!/usr/bin/env bash
# Installs and runs the real services Lifeboat's tests and benchmarks use,
# on loopback, on a fresh Debian machine. Idempotent; safe to run again.
#
#   deploy/services.sh install   packages: protoc (build), restic and pgBackRest
#                                (benchmark peers), PostgreSQL 15 (tests make
#                                their own clusters), the S3 emulator (moto, in
#                                a venv), the Azure Blob emulator (Azurite, npm),
#                                etcd (tests of the control plane start their own
#                                clusters of it, on ports of their own), Prometheus
#                                and Alertmanager (Debian), an SMTP server (aiosmtpd,
#                                in the venv): tests of alerting start their own;
#                                Redis 7.0 and Sentinel (Debian): tests of the Redis
#                                source start their own servers on free ports
#   deploy/services.sh start     start the emulators and wait until they answer
#   deploy/services.sh stop      stop what `start` started (by PID)
#   deploy/services.sh status    say what runs where
#   deploy/services.sh check     fail, naming what is missing
#
# Ports (override with the environment): S3 emulator LIFEBOAT_S3_PORT=9000,
# Azure Blob emulator LIFEBOAT_AZURE_PORT=10000.
# State, logs and PID files live in LIFEBOAT_SERVICES_DIR
# (default /var/tmp/lifeboat-services).
set -euo pipefail

DIR="${LIFEBOAT_SERVICES_DIR:-/var/tmp/lifeboat-services}"
S3_PORT="${LIFEBOAT_S3_PORT:-9000}"
AZURE_PORT="${LIFEBOAT_AZURE_PORT:-10000}"
AZURITE="$DIR/azurite"
# protoc with its well-known types (libprotobuf-dev: etcd-client's protos
# import google/protobuf/descriptor.proto), PostgreSQL 15 server and tools
# (tests make their own clusters with initdb, run as the `postgres` user),
# pgBackRest (the benchmark peer), etcd (control-plane tests start their
# own clusters) and iproute2 (failover tests make regions of network
# namespaces).
APT_PACKAGES=(protobuf-compiler libprotobuf-dev restic util-linux python3-venv curl postgresql-15 postgresql-client-15 pgbackrest etcd-server etcd-client prometheus prometheus-alertmanager redis-server redis-sentinel redis-tools iproute2)
PG_BIN="${LIFEBOAT_PG_BIN:-/usr/lib/postgresql/15/bin}"
VENV="$DIR/venv"

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "deploy/services.sh: installing packages needs root" >&2
        exit 1
    fi
}

install() {
    mkdir -p "$DIR"
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        need_root
        echo "installing: ${missing[*]}" >&2
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" >/dev/null
    fi
    if [ ! -x "$VENV/bin/moto_server" ]; then
        echo "installing the S3 emulator (moto[server]) into $VENV" >&2
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1,<6'
    fi
    if [ ! -x "$VENV/bin/aiosmtpd" ]; then
        echo "installing the SMTP server for tests (aiosmtpd) into $VENV" >&2
        "$VENV/bin/pip" install -q --disable-pip-version-check 'aiosmtpd>=1.4,<2'
    fi
    if [ ! -x "$AZURITE/node_modules/.bin/azurite-blob" ]; then
        command -v npm >/dev/null || { echo "missing: npm (Node.js), needed for Azurite" >&2; exit 1; }
        echo "installing the Azure Blob emulator (azurite) into $AZURITE" >&2
        mkdir -p "$AZURITE"
        (cd "$AZURITE" && npm install --no-audit --no-fund --silent 'azurite@^3.35' >/dev/null)
    fi
    check
}

check() {
    local ok=1
    command -v protoc >/dev/null || { echo "missing: protoc (apt-get install protobuf-compiler)" >&2; ok=0; }
    command -v restic >/dev/null || { echo "missing: restic (apt-get install restic)" >&2; ok=0; }
    command -v etcd >/dev/null || { echo "missing: etcd (apt-get install etcd-server)" >&2; ok=0; }
    command -v ip >/dev/null || { echo "missing: ip (apt-get install iproute2)" >&2; ok=0; }
    command -v prometheus >/dev/null && command -v promtool >/dev/null || { echo "missing: prometheus and promtool (apt-get install prometheus)" >&2; ok=0; }
    command -v prometheus-alertmanager >/dev/null || { echo "missing: prometheus-alertmanager (apt-get install prometheus-alertmanager)" >&2; ok=0; }
    [ -x "$VENV/bin/aiosmtpd" ] || { echo "missing: aiosmtpd in $VENV (deploy/services.sh install)" >&2; ok=0; }
    command -v redis-server >/dev/null && command -v redis-sentinel >/dev/null && command -v redis-cli >/dev/null || { echo "missing: redis-server, redis-sentinel, redis-cli (apt-get install redis-server redis-sentinel redis-tools)" >&2; ok=0; }
    command -v cargo >/dev/null || { echo "missing: cargo (the Rust toolchain)" >&2; ok=0; }
    [ -x "$VENV/bin/moto_server" ] || { echo "missing: the S3 emulator in $VENV (deploy/services.sh install)" >&2; ok=0; }
    [ -x "$AZURITE/node_modules/.bin/azurite-blob" ] || { echo "missing: Azurite in $AZURITE (deploy/services.sh install)" >&2; ok=0; }
    [ -x "$PG_BIN/initdb" ] || { echo "missing: PostgreSQL 15 in $PG_BIN (deploy/services.sh install)" >&2; ok=0; }
    id postgres >/dev/null 2>&1 || { echo "missing: the postgres system user (comes with postgresql-15)" >&2; ok=0; }
    [ "$ok" = 1 ] || exit 1
}

running() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

wait_for() {
    local name="$1" probe="$2"
    for _ in $(seq 1 100); do
        if eval "$probe" >/dev/null 2>&1; then return 0; fi
        running "$name" || { echo "$name exited; its log:" >&2; tail -20 "$DIR/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$name did not answer within 10 s; its log:" >&2
    tail -20 "$DIR/$name.log" >&2
    exit 1
}

start() {
    check
    mkdir -p "$DIR"
    if ! running s3; then
        setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$DIR/s3.log" 2>&1 < /dev/null &
        echo $! > "$DIR/s3.pid"
    fi
    wait_for s3 "curl -sf http://127.0.0.1:$S3_PORT/moto-api/"
    if ! running azure; then
        # Scratch data like moto's (which lives in memory): every test and
        # benchmark makes its own container, so a fresh start begins empty
        # instead of piling up gigabytes across runs.
        rm -rf "$DIR/azure-data"
        mkdir -p "$DIR/azure-data"
        # --skipApiVersionCheck: current SDKs speak newer API versions;
        # --disableTelemetry: the machine has no network.
        setsid "$AZURITE/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZURE_PORT" \
            --location "$DIR/azure-data" --silent --disableTelemetry --skipApiVersionCheck --loose \
            >"$DIR/azure.log" 2>&1 < /dev/null &
        echo $! > "$DIR/azure.pid"
    fi
    # Any HTTP answer (403 without credentials) means it is up.
    wait_for azure "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$AZURE_PORT/devstoreaccount1)\" != 000 ]"
    status
}

stop() {
    for name in s3 azure; do
        if running "$name"; then
            kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
        fi
        rm -f "$DIR/$name.pid"
    done
}

status() {
    if running s3; then echo "s3 emulator: http://127.0.0.1:$S3_PORT (pid $(cat "$DIR/s3.pid"))"; else echo "s3 emulator: stopped"; fi
    if running azure; then echo "azure blob emulator: http://127.0.0.1:$AZURE_PORT/devstoreaccount1 (pid $(cat "$DIR/azure.pid"))"; else echo "azure blob emulator: stopped"; fi
}

case "${1:-install}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    check) check ;;
    *) echo "usage: $0 install|start|stop|status|check" >&2; exit 2 ;;
esac
