#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) and prints what each did.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain it runs with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
if ! rustc --version | grep -q nightly; then export RUSTC_BOOTSTRAP=1; fi
for t in http_head chunked recordio input_call; do
  mkdir -p corpus/$t
  echo "== $t ($secs s)"
  cargo fuzz run "$t" corpus/$t -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | grep -E "^#[0-9]+.*DONE|Done [0-9]+ runs|SUMMARY|panicked|ERROR" || true
done
