#!/usr/bin/env bash
# The whole test suite: format, lints, then every test against the real
# models that models/setup.sh fetched. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check

# Release profile throughout: whisper.cpp is built once, in release, and the
# tests run the real models at a usable speed.
step "cargo clippy -- -D warnings"
cargo clippy --release --all-targets --locked -- -D warnings

# Pipecat, for `parlor bench --peers pipecat` (tests/bench_cli.rs).
step "peer frameworks (benches/peers/setup.sh)"
bash benches/peers/setup.sh

step "cargo test"
target="${CARGO_TARGET_DIR:-target}"
rm -rf "$target/tmp/test-logs"
mkdir -p "$target/tmp"
# The unit tests and the two binaries that own their process's tracing
# (tests/oauth.rs, tests/stt.rs), then the integration suite one test at a
# time: its tests run the real models, and two of them at once on 2 cores
# oversubscribe llama.cpp's and whisper.cpp's busy-waiting threads until
# turns time out (tests/main.rs).
{
  cargo test --release --locked --lib --bins --test oauth --test stt &&
    cargo test --release --locked --test suite -- --test-threads=1
} 2>&1 | tee "$target/tmp/cargo-test.log"

# Issue 5: no test secret in any log or audit file written above.
step "secrets in logs"
bash tests/secrets_in_logs.sh "$target/tmp/cargo-test.log"
