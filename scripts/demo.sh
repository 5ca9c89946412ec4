#!/usr/bin/env bash
# README, command 1: set up a fresh Debian 12 machine and run the main job.
#
# Today the main job is the store data path: build the small test guest's
# disk, capture it into a store directory, capture it again (deduplicated),
# deploy it back and prove the copy is byte-identical. The daemon + agent
# demo replaces this once they land.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "demo.sh: cargo is missing: install a Rust toolchain (1.85 or newer) first" >&2
    exit 2
fi

./scripts/install-deps.sh
cargo build --release --locked --bin imprint
imprint=$PWD/target/release/imprint

disk=$(./tests/guests/build-busybox-guest.sh | sed -n 's/^disk: *//p')
work=${IMPRINT_DEMO_DIR:-/var/tmp/imprint-demo}
rm -rf "$work" && mkdir -p "$work"
store=$work/store

echo "== capture $disk"
"$imprint" store put --store "$store" --name demo-guest "$disk"
echo "== capture it again: every chunk is already stored"
"$imprint" store put --store "$store" --name demo-guest-again "$disk"
echo "== deploy to $work/copy.raw"
"$imprint" store get --store "$store" demo-guest --output "$work/copy.raw"
cmp "$disk" "$work/copy.raw" && echo "== the copy is byte-identical"
"$imprint" store list --store "$store"
"$imprint" store verify --store "$store"
cat <<TXT

Next:
  $imprint store show --store $store demo-guest
  $imprint -o json store list --store $store
  $imprint store --help
TXT
