#!/usr/bin/env bash
# Benchmark (not a test): every speed target of the bench issue, from one run, beside this
# machine's own HTTP/2 ceiling and scheduling stalls measured in the same run. The VM's speed
# drifts 2-3x from one day to the next (h2load -> nghttpd over TLS: ~520k req/s on 2026-11-22,
# 124k-181k on 2026-11-30), so each throughput is also given as a share of that ceiling, and
# each target as the same share of the ceiling the targets were set against.
#
#   ci/speed-targets.sh                 # N=500000 sender-only, E2E=300000 end to end
#   N=200000 E2E=100000 REPEAT=1 ci/speed-targets.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500000}
E2E=${E2E:-300000}
REPEAT=${REPEAT:-3}
OPEN_SECS=${OPEN_SECS:-10}
# h2load -> nghttpd, TLS, 2 connections x 100 streams, 300-byte bodies: 497k-538k req/s when
# the targets were set (shared/reference/h2-ceiling.md, table 1).
REF_CEILING=${REF_CEILING:-520000}

. ci/bench-common.sh
bench_setup speed-targets h2load nghttpd openssl python3

echo "speed-targets: machine ceiling (h2load -> nghttpd, TLS, 2 x 100 streams, $N requests)" >&2
start_nghttpd ng_port tls
sleep 1
h2load -n "$N" -c 2 -m 100 -t 1 -d "$work/body.json" "https://127.0.0.1:$ng_port$path" 2>/dev/null \
  | awk '/^finished in/ {gsub(",","",$4); print $4}' > "$work/ceiling"
kill "${pids[0]}" 2>/dev/null || true

echo "speed-targets: scheduling stalls (a thread spinning on each core for 3 s)" >&2
# The floor under any tail latency here: a p99 cannot beat the VM taking a core away.
python3 - > "$work/stalls" <<'PY'
import os, time, multiprocessing as mp
def probe(cpu, q):
    os.sched_setaffinity(0, {cpu})
    end = time.perf_counter() + 3
    prev, gaps, worst = time.perf_counter(), 0, 0.0
    while prev < end:
        now = time.perf_counter()
        d = now - prev
        prev = now
        if d > 0.001:
            gaps += 1
        worst = max(worst, d)
    q.put((gaps, worst))
q = mp.Queue()
procs = [mp.Process(target=probe, args=(c, q)) for c in sorted(os.sched_getaffinity(0))]
for p in procs: p.start()
res = [q.get() for _ in procs]
for p in procs: p.join()
print(f"{sum(g for g, _ in res) / 3 / len(res):.1f} {max(w for _, w in res) * 1000:.1f}")
PY

bench() { "$bin" bench --mock --quiet "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; }
echo "speed-targets: sender-only, closed loop ($N x $REPEAT)" >&2
bench --sender-only --count "$N" --repeat "$REPEAT" --json "$work/sender.json"
echo "speed-targets: end to end, closed loop ($E2E x $REPEAT)" >&2
bench --count "$E2E" --repeat "$REPEAT" --json "$work/e2e.json"
half() { python3 -c "import json; print(int(json.load(open('$1'))['throughput'] / 2))"; }
sender_half=$(half "$work/sender.json")
e2e_half=$(half "$work/e2e.json")
echo "speed-targets: sender-only, open loop at $sender_half/s for ${OPEN_SECS}s" >&2
bench --sender-only --rate "$sender_half" --duration "${OPEN_SECS}s" --json "$work/sender-open.json"
echo "speed-targets: end to end, open loop at $e2e_half/s for ${OPEN_SECS}s" >&2
bench --rate "$e2e_half" --duration "${OPEN_SECS}s" --json "$work/e2e-open.json"

python3 - "$work" "$REF_CEILING" <<'PY'
import json, sys
work, ref = sys.argv[1], float(sys.argv[2])
load = lambda name: json.load(open(f"{work}/{name}.json"))
ceiling = float(open(f"{work}/ceiling").read().strip() or 0)
stalls, worst = open(f"{work}/stalls").read().split()
sender, e2e, sopen, eopen = load("sender"), load("e2e"), load("sender-open"), load("e2e-open")
p99 = lambda r, k: r["latency"][k]["p99_us"] / 1000
ok = lambda b: "met" if b else "NOT met"
print(f"machine: h2load -> nghttpd {ceiling:,.0f} req/s (targets set at {ref:,.0f}: this run is x{ceiling / ref:.2f});"
      f" stalls > 1 ms: {stalls}/s per core, worst {worst} ms")
print(f"{'target':<44}{'measured':>14}{'target':>12}  {'absolute':<9}{'share of ceiling (target share)':>34}")
def rate(name, value, target):
    share, tshare = value / ceiling, target / ref
    print(f"{name:<44}{value:>10,.0f}/s {target:>10,.0f}/s  {ok(value >= target):<9}"
          f"{share:>12.3f} ({tshare:.3f}) {ok(share >= tshare):>8}")
def latency(name, value, target):
    print(f"{name:<44}{value:>11.2f} ms {target:>9.0f} ms  {ok(value < target):<9}")
rate("sender-only, APNs over TLS (median of runs)", sender["throughput"], 200_000)
rate("end to end, Kafka mock -> fake APNs", e2e["throughput"], 100_000)
print(f"{'end to end, peak RSS':<44}{e2e['peak_rss_bytes'] / 1e6:>11.1f} MB {200:>9} MB  {ok(e2e['peak_rss_bytes'] < 200e6)}")
half = f"at {sopen['params'].get('rate') or sender['throughput'] / 2:,.0f}/s"
latency(f"sender-only open loop {half}: p99 send", p99(sopen, "send"), 2)
half = f"at {eopen['params'].get('rate') or e2e['throughput'] / 2:,.0f}/s"
latency(f"end to end open loop {half}: p99 send", p99(eopen, "send"), 2)
latency(f"end to end open loop {half}: p99 e2e", p99(eopen, "end_to_end"), 10)
PY
