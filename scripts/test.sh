#!/usr/bin/env bash
# The whole test suite, as CI runs it (README, command 2; .ci/run calls this).
# Installs the system packages the tests need, starts the services they use,
# then runs every test of the workspace. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "test.sh: cargo is missing: install a Rust toolchain (1.94 or newer: sqlx 0.9) first" >&2
    exit 2
fi

./scripts/install-deps.sh --tests
./scripts/start-services.sh

# House rules the tree must keep (issue 14): formatted, and no clippy
# warning (workspace lints in Cargo.toml) in any target.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Production code never panics on a failed expectation (tests may) and
# converts numbers with a stated meaning, never a silent `as` that can
# truncate, wrap or drop a sign.
cargo clippy --workspace --lib --bins --locked -- -D warnings -D clippy::expect_used \
    -D clippy::cast_possible_truncation -D clippy::cast_sign_loss -D clippy::cast_possible_wrap
./scripts/check-policy.sh

# The end-to-end tests start our binaries (imprintd, imprint-agent,
# imprint): `cargo test` builds only those of packages with integration
# tests, so build them all first. Fuzz targets build with `cargo fuzz` only.
cargo build --workspace --bins --locked
cargo test --workspace --locked
