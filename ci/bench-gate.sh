#!/usr/bin/env bash
# The CI regression gate: a short end-to-end `pusher bench --mock` (50k messages) (Kafka mock -> pipeline ->
# fake APNs over TLS), median of 3 runs, compared with bench/baselines/ci.json after
# normalising both by the calibration measured in their own run.
#
# It runs the debug binary that `cargo test` has just built, so CI pays for no extra (fat-LTO)
# release build; the baseline was recorded with the same binary kind. To re-record it after an
# intended change:  ci/bench-gate.sh --record
#
# A regression must show twice: on this shared 2-core machine a burst of load from elsewhere
# can slow one whole attempt (the calibration catches most of it, not all), while a real
# regression fails every attempt.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${PUSHER_BIN:-target/debug/pusher}
[ -x "$bin" ] || cargo build --quiet
# One thread, as the baseline was recorded: the gate compares the code, not the layout.
args=(bench --mock --count 50k --repeat 3 --warmup 1s --quiet --threads 1)
if [ "${1:-}" = "--record" ]; then
  exec "$bin" "${args[@]}" --json bench/baselines/ci.json
fi
gate() {
  PUSHER_LOG=warn "$bin" "${args[@]}" --json target/bench-ci.json \
    --baseline bench/baselines/ci.json --max-regression "${MAX_REGRESSION:-30}"
}
echo "ci/bench-gate: load average $(cut -d' ' -f1-3 /proc/loadavg)"
# Anything the tests left running would eat the CPU the gate measures: say so.
pgrep -a -f 'pusher run|tansu broker' | sed 's/^/ci\/bench-gate: still running: /' || true
gate && exit 0
echo "ci/bench-gate: attempt 1 failed (load average $(cut -d' ' -f1-3 /proc/loadavg)); trying again"
gate
