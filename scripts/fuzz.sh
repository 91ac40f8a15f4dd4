#!/usr/bin/env bash
# libFuzzer targets of fuzz/ (docs/fuzzing.md), on the stable toolchain.
#
#   bash scripts/fuzz.sh run TARGET [SECONDS]   (or: just fuzz TARGET SECONDS)
#   bash scripts/fuzz.sh replay                 (or: just fuzz-replay)
#
# `run` fuzzes one target, one process, for SECONDS (default 60): new inputs
# go to fuzz/corpus-run/TARGET (ignored by git), the committed seeds in
# fuzz/corpus/TARGET are read too. A crash is saved in fuzz/artifacts/.
# `replay` runs every committed seed of every target once (CI does this).
# Installs cargo-fuzz when missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

# cargo-fuzz passes a few -Z flags; stable rustc takes them with this.
export RUSTC_BOOTSTRAP=1
# No sanitizer: safe Rust, and AddressSanitizer needs a nightly runtime.
BUILD=(--sanitizer none -O)
LIMITS=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
# FUZZ_TARGET_DIR: where cargo-fuzz builds (default fuzz/target).
TARGET_DIR=()
[ -n "${FUZZ_TARGET_DIR:-}" ] && TARGET_DIR=(--target-dir "$FUZZ_TARGET_DIR")

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

case "${1:-}" in
  run)
    target=${2:?usage: fuzz.sh run TARGET [SECONDS]}
    seconds=${3:-60}
    mkdir -p "corpus-run/$target"
    cargo fuzz run "${BUILD[@]}" "$target" "corpus-run/$target" "corpus/$target" -- \
      "${LIMITS[@]}" -max_total_time="$seconds"
    ;;
  replay)
    # An unoptimised build: replaying a few dozen seeds takes no time, and
    # it builds in a fraction of the optimised one (one codegen unit).
    REPLAY=(--sanitizer none --dev "${TARGET_DIR[@]}")
    cargo fuzz build "${REPLAY[@]}"
    for target in $(cargo fuzz list); do
      echo "fuzz: replaying corpus/$target" >&2
      cargo fuzz run "${REPLAY[@]}" "$target" "corpus/$target" -- "${LIMITS[@]}" -runs=0
    done
    ;;
  *)
    echo "usage: fuzz.sh run TARGET [SECONDS] | fuzz.sh replay" >&2
    exit 2
    ;;
esac
