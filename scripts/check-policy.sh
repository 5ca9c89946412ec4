#!/usr/bin/env bash
# Dependency policy and MSRV (issue 14), part of the test suite:
# - cargo-deny: licenses, bans (one TLS provider), sources (deny.toml).
#   Advisories need the RustSec database from github.com, which this CI
#   cannot reach: run `cargo deny check advisories` where it can.
# - the workspace's rust-version builds with exactly that toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
    cargo install cargo-deny --version "$DENY_VERSION" --locked
fi
cargo deny check licenses bans sources

msrv=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup toolchain install "$msrv" --profile minimal >/dev/null
# A target directory of its own: the MSRV build does not evict the main one.
CARGO_TARGET_DIR=target/msrv cargo "+$msrv" check --workspace --all-targets --locked
