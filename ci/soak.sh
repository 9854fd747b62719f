#!/usr/bin/env bash
# Soak run (issue 7 §5; by hand, not part of CI): `pusher run apns` at half its maximum rate
# for --minutes against the fake APNs' flaky profile, with the pusher's resident memory and
# open file descriptors sampled every --every seconds into a CSV, and a summary at the end
# (start, end, max, and the slope over the second half: flat means close to 0).
#
#   ci/soak.sh [--minutes 30] [--rate MSG_PER_S] [--every 5] [--out DIR]
#
# Without --rate, the maximum is measured first with `pusher bench --mock --profile flaky`
# (the same pipeline, closed loop) and half of it is offered. Everything runs as separate
# processes on 127.0.0.1: `pusher mock kafka` (32 partitions), `pusher mock apns --profile
# flaky`, `pusher run apns`, and a producer that adds one second's worth of `pusher gen`
# messages every second (produce while consuming: the mock keeps ~5 MiB per partition).
# Costs about one core for the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=30 rate="" every=5 out=""
while (($#)); do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --every) every="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "ci/soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "ci/soak.sh: --minutes must be a number" >&2; exit 2; }
[[ "$every" =~ ^[0-9]+$ && "$every" -ge 1 ]] || { echo "ci/soak.sh: --every must be whole seconds >= 1" >&2; exit 2; }
[ -z "$rate" ] || [[ "$rate" =~ ^[0-9]+$ && "$rate" -ge 1 ]] || { echo "ci/soak.sh: --rate must be >= 1" >&2; exit 2; }

out="${out:-$(mktemp -d /tmp/pusher-soak.XXXXXX)}"
mkdir -p "$out"
# PUSHER_SOAK_BIN: use this pusher binary instead of building the release one (to try the
# script quickly with target/debug/pusher; figures must come from the release build).
if [ -n "${PUSHER_SOAK_BIN:-}" ]; then
  bin="$(realpath "$PUSHER_SOAK_BIN")"
else
  echo "ci/soak: building (release)" >&2
  cargo build --release --quiet
  bin="$PWD/target/release/pusher"
fi

pids=()
# Newest first: the producer and the pusher stop before the brokers they talk to. A pusher
# still running after 30 s of SIGTERM is killed (and that is reported).
cleanup() {
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "ci/soak: pid $pid did not stop within 30 s of SIGTERM; killing it" >&2
      kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

# The first line a background service prints (its addresses, as JSON).
first_line() {
  local file="$1"
  for _ in $(seq 1 100); do
    [ -s "$file" ] && { head -1 "$file"; return 0; }
    sleep 0.1
  done
  echo "ci/soak: no startup line in $file" >&2; return 1
}
json() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); [v:=v[k] for k in sys.argv[2:]]; print(v)' "$@"; }

if [ -z "$rate" ]; then
  echo "ci/soak: measuring the maximum rate (bench --mock --profile flaky, 200k messages)" >&2
  "$bin" bench --mock --profile flaky --count 200k --quiet --json "$out/max.json" >"$out/max.txt"
  max=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["throughput"]))' "$out/max.json")
  rate=$((max / 2))
  echo "ci/soak: maximum $max msg/s; offering half: $rate msg/s" >&2
fi

app=soak
topic="push-${app}_apns"
"$bin" mock kafka --topic "$topic" --partitions 32 --retention-bytes 5MiB >"$out/kafka.json" 2>"$out/kafka.log" &
pids+=($!)
brokers=$(json "$(first_line "$out/kafka.json")" kafka bootstrap)
"$bin" mock apns --profile flaky --ca-out "$out/ca.pem" --admin 127.0.0.1:0 \
  --jwt-key TESTKEY001:TEAM000001:fixtures/apns/AuthKey_TESTKEY001.pub.pem >"$out/apns.json" 2>"$out/apns.log" &
pids+=($!)
apns_line=$(first_line "$out/apns.json")
tls=$(json "$apns_line" apns tls)
admin=$(json "$apns_line" admin)

PUSHER_QUEUE_OFFSETRESETSTRATEGY=earliest PUSHER_QUEUE_GROUP=soak PUSHER_INVALIDTOKEN_HANDLERS= \
PUSHER_STATS_REPORTERS= PUSHER_STATS_PROMETHEUS_LISTEN= PUSHER_LOG=warn \
  "$bin" run apns --app "$app" --brokers "$brokers" \
  --key-file fixtures/apns/AuthKey_TESTKEY001.p8 --key-id TESTKEY001 --team-id TEAM000001 \
  --topic com.example.app --endpoint "https://$tls" --ca "$out/ca.pem" 2>"$out/pusher.log" &
pusher=$!
pids+=($pusher)

# Producer: one second's worth every second (a fresh seed each time: fresh tokens).
(
  i=0
  while :; do
    next=$(( $(date +%s%N) + 1000000000 ))
    "$bin" gen --platform apns --app "$app" --count "$rate" --seed "$i" --brokers "$brokers" --quiet \
      >/dev/null 2>>"$out/gen.log" && echo "$rate" >>"$out/produced"
    i=$((i + 1))
    now=$(date +%s%N)
    (( now < next )) && sleep "$(printf '0.%09d' $((next - now)))"
  done
) &
pids+=($!)

csv="$out/samples.csv"
echo "seconds,rss_kb,fds,threads,fake_requests,produced" >"$csv"
start=$(date +%s)
end=$(awk -v s="$start" -v m="$minutes" 'BEGIN {printf "%d", s + m * 60}')
echo "ci/soak: $minutes min at $rate msg/s; samples every ${every}s in $csv" >&2
while (( $(date +%s) < end )); do
  kill -0 "$pusher" 2>/dev/null || { echo "ci/soak: the pusher died; see $out/pusher.log" >&2; exit 1; }
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pusher/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$pusher/status")
  fds=$(ls "/proc/$pusher/fd" | wc -l)
  requests=$(curl -s "http://$admin/stats" | grep -o '"requests":[0-9]*' | cut -d: -f2 || true)
  produced=$(awk '{s += $1} END {print s + 0}' "$out/produced" 2>/dev/null || echo 0)
  echo "$(( $(date +%s) - start )),$rss,$fds,$threads,$requests,$produced" >>"$csv"
  sleep "$every"
done

# Summary: start/end/max, and the least-squares slope over the second half (per minute).
python3 - "$csv" "$rate" "$minutes" <<'EOF' | tee "$out/summary.txt"
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["fake_requests"]]
rate, minutes = int(sys.argv[2]), float(sys.argv[3])
def slope(xs, ys):
    n = len(xs); mx = sum(xs) / n; my = sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs) or 1
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60
t = [float(r["seconds"]) for r in rows]
half = len(rows) // 2
print(f"soak: {minutes:g} min, offered {rate} msg/s, flaky profile, {len(rows)} samples")
for key, unit in (("rss_kb", "KiB"), ("fds", "fds"), ("threads", "threads")):
    v = [float(r[key]) for r in rows]
    print(f"  {key:8} start {v[0]:.0f}  end {v[-1]:.0f}  max {max(v):.0f}  "
          f"slope over 2nd half {slope(t[half:], v[half:]):+.1f} {unit}/min")
req = [float(r["fake_requests"]) for r in rows]
prod = [float(r["produced"]) for r in rows]
print(f"  fake answered {req[-1] - req[0]:.0f} requests in {t[-1] - t[0]:.0f} s "
      f"({(req[-1] - req[0]) / max(t[-1] - t[0], 1):.0f}/s); produced {prod[-1]:.0f}")
EOF
echo "ci/soak: files in $out" >&2
