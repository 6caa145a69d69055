#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need (ZooKeeper, MongoDB's
# mongod, the Helm SDK), then format check, clippy, build, tests.
#
#   scripts/test.sh            everything
#   scripts/test.sh -E 'test(kill)'   extra arguments go to cargo nextest (or cargo test)
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lts/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { echo "==> $*" >&2; }

step "installing test dependencies"
eval "$(scripts/setup-test-deps.sh)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building binaries"
cargo build --workspace --bins --locked

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast "$@"
    # nextest does not run doctests
    cargo test --workspace --doc --locked
else
    cargo test --workspace --locked --no-fail-fast "$@"
fi
