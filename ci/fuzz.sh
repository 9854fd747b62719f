#!/usr/bin/env bash
# Fuzzes the parsers, the config loader and the fake servers (fuzz/targets.rs) on the stable
# toolchain: each target first replays its corpus (fixtures/fuzz/<target>/), then mutates it
# for --seconds N. A failing input is saved under target/fuzz-failures/<target>/ and the run
# exits non-zero. CI runs the same harness for 4 s a target inside `cargo test`.
#
#   ci/fuzz.sh [--seconds 30] [--target kafka_apns,config] [--seed N] [--grow]
#
# --grow writes inputs that produced a new signature (a new error kind, status, ...) into the
# corpus; review and commit them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
targets=""
grow=0
while (($#)); do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --target | --targets) targets=$2; shift 2 ;;
    --seed) export FUZZ_SEED=$2; shift 2 ;;
    --grow) grow=1; shift ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "ci/fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

FUZZ_SECONDS=$seconds FUZZ_GROW=$grow FUZZ_TARGETS=$targets \
  cargo test --test fuzz -- --nocapture --test-threads 2
