#!/usr/bin/env bash
# The main job on the embedded default (a local-directory repository, no
# cloud account, no etcd): back up a real directory, verify the repository,
# restore it elsewhere, compare, and print what happened.
#
#   deploy/demo.sh [DIRECTORY]     (default: /usr/share/doc)
set -euo pipefail
cd "$(dirname "$0")/.."
SOURCE="$(realpath "${1:-/usr/share/doc}")"

deploy/services.sh install >/dev/null
cargo build --release --locked -p lifeboat
LIFEBOAT="$PWD/target/release/lifeboat"

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

step "summary"
echo "source:     $SOURCE ($(du -sh --apparent-size "$SOURCE" | cut -f1))"
echo "repository: $LIFEBOAT_REPO ($(du -sh "$LIFEBOAT_REPO" | cut -f1) on disk, compressed and encrypted)"
echo "restored:   $WORK/restored"
echo "remove the demo with: rm -rf $WORK"
