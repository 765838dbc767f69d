#!/usr/bin/env bash
# Installs what Lifeboat's build, tests and benchmarks need on a fresh
# Debian machine. Idempotent; safe to run again.
#
#   deploy/services.sh install   build tools (protoc) and the peers the
#                                benchmarks compare against (restic)
#   deploy/services.sh check     fail, naming what is missing, if anything is
#
# Later issues add the real services (etcd, PostgreSQL, Redis, the S3 and
# Azure emulators) here, started on loopback and stopped by PID.
set -euo pipefail

APT_PACKAGES=(protobuf-compiler restic util-linux)

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "deploy/services.sh: installing packages needs root" >&2
        exit 1
    fi
}

install() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        need_root
        echo "installing: ${missing[*]}" >&2
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    check
}

check() {
    local ok=1
    command -v protoc >/dev/null || { echo "missing: protoc (apt-get install protobuf-compiler)" >&2; ok=0; }
    command -v restic >/dev/null || { echo "missing: restic (apt-get install restic)" >&2; ok=0; }
    command -v cargo >/dev/null || { echo "missing: cargo (the Rust toolchain)" >&2; ok=0; }
    [ "$ok" = 1 ] || exit 1
}

case "${1:-install}" in
    install) install ;;
    check) check ;;
    *) echo "usage: $0 install|check" >&2; exit 2 ;;
esac
