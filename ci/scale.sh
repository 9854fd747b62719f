#!/usr/bin/env bash
# Benchmark (not a test): does the production `pusher run apns` use the cores it is given, and
# do processes in one group add up? The pusher drains a preloaded topic from `pusher mock
# kafka` into `pusher mock apns` (h2c), each step with a fresh consumer group:
#   1. one process pinned (taskset) to 1, 2, 4, ... cores, while the broker and the fake keep
#      cores of their own (on a 2-core machine they share core 0 with the 1-core step, and
#      every core with the 2-core step);
#   2. 1, 2, 3 processes in one group, one core each (round robin over the pusher's cores).
# Prints msg/s, CPU microseconds per message (the pusher processes' user+system time / messages)
# and each step's ratio to the first.
#
#   ci/scale.sh                       # 300k messages, 64 partitions
#   N=600000 PARTITIONS=128 ci/scale.sh
#   FAKE_CORES=2 ci/scale.sh          # cores kept for the broker and the fake (default: 1, or
#                                     #   a quarter of the machine on 8 cores and more)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-300000}
PARTITIONS=${PARTITIONS:-64}
cores=$(nproc)
FAKE_CORES=${FAKE_CORES:-$(( cores >= 8 ? cores / 4 : 1 ))}

. ci/bench-common.sh
bench_setup scale taskset curl python3

# Cores: the fake and the broker on the first FAKE_CORES, the pusher on the rest (all of them
# when the machine has too few to keep any apart).
fake_set="0-$((FAKE_CORES - 1))"
first_pusher=$FAKE_CORES
[ "$cores" -le "$FAKE_CORES" ] && first_pusher=0
pusher_cores=$((cores - first_pusher))

kafka_port=$(port); admin_port=$(port)
taskset -c "$fake_set" "$bin" mock kafka --listen "127.0.0.1:$kafka_port" --topic push-scale_apns \
  --partitions "$PARTITIONS" > "$work/kafka.json" 2> "$work/kafka.err" & pids+=($!)
fake_threads=$FAKE_CORES
taskset -c "$fake_set" "$bin" mock apns --threads "$fake_threads" --listen off \
  --listen-h2c 127.0.0.1:0 --admin "127.0.0.1:$admin_port" \
  > "$work/apns.json" 2> "$work/apns.err" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/kafka.json" ] && [ -s "$work/apns.json" ] && break; sleep 0.1; done
[ -s "$work/apns.json" ] || { echo "scale: the fakes did not start" >&2; cat "$work"/*.err >&2; exit 1; }
h2c=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["apns"]["h2c"])' < "$work/apns.json")
brokers="127.0.0.1:$kafka_port"

echo "scale: preloading $N messages into $PARTITIONS partitions" >&2
"$bin" gen --platform apns --app scale --count "$N" --seed 1 --kafka "$brokers" --quiet

# Waits until the fake has answered $1 requests (or $2 seconds passed); prints the times of
# the first answer seen and of the last, and the count. One process polling over one kept-alive
# connection: a python3 or curl started every 50 ms took a third of a core from the run it
# measured on this 2-core VM.
wait_responses() {
  python3 - "$admin_port" "$1" "$2" <<'PY'
import http.client, json, sys, time
port, n, limit = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
first, seen, deadline = None, 0, time.time() + limit
while seen < n and time.time() < deadline:
    try:
        conn.request("GET", "/stats")
        seen = json.loads(conn.getresponse().read())["responses"]
    except (OSError, http.client.HTTPException):
        conn.close()  # reconnects on the next request
    if first is None and seen > 0:
        first = time.time()
    time.sleep(0.02)
print(first or time.time(), time.time(), seen)
PY
}
cpu_us() { # user+system time of a process, microseconds
  python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); t=os.sysconf('SC_CLK_TCK'); print(int((int(f[11])+int(f[12]))*1e6/t))"
}

# One step: $1 = label, then one CPU list per process. Prints "label msg/s us/msg".
step() {
  local label=$1; shift
  local group="scale-$RANDOM-$RANDOM" procs=() cpus=() i=0
  curl -s -X POST "http://127.0.0.1:$admin_port/reset" > /dev/null
  for set in "$@"; do
    PUSHER_QUEUE_GROUP=$group PUSHER_QUEUE_OFFSETRESETSTRATEGY=earliest PUSHER_INVALIDTOKEN_HANDLERS= \
    PUSHER_FEEDBACK_REPORTERS= PUSHER_STATS_REPORTERS= PUSHER_STATS_PROMETHEUS_LISTEN= PUSHER_LOG=warn \
      taskset -c "$set" "$bin" run apns --app scale --brokers "$brokers" \
        --key-file fixtures/apns/AuthKey_TESTKEY001.p8 --key-id TESTKEY001 --team-id TEAM000001 \
        --topic com.example.app --endpoint "http://$h2c" 2>> "$work/run.err" & procs+=($!)
    i=$((i + 1))
  done
  # From the first answer to the last: the group's join is not the pusher's speed.
  local first last n
  read -r first last n < <(wait_responses "$N" 600)
  local cpu=0
  for p in "${procs[@]}"; do cpu=$((cpu + $(cpu_us "$p"))); done
  for p in "${procs[@]}"; do kill -TERM "$p"; done
  for p in "${procs[@]}"; do wait "$p" || true; done
  [ "$n" -ge "$N" ] || { echo "scale: $label: $n of $N answered in 600 s" >&2; tail -5 "$work/run.err" >&2; exit 1; }
  python3 -c "print('$label', round($N / ($last - $first)), round($cpu / $N, 1))"
}

results=()
c=1
while [ "$c" -le "$pusher_cores" ]; do
  results+=("$(step "1 process, $c core(s)" "$first_pusher-$((first_pusher + c - 1))")")
  c=$((c * 2))
done
# On a small machine the pusher's own cores are one or two: then also every core, shared with
# the broker and the fake (what the machine can do at all), and the processes spread over all.
spread_first=$first_pusher; spread=$pusher_cores
if [ "$pusher_cores" -lt 4 ] && [ "$first_pusher" -gt 0 ]; then
  results+=("$(step "1 process, all $cores cores (shared)" "0-$((cores - 1))")")
  spread_first=0; spread=$cores
fi
for p in 1 2 3; do
  sets=()
  for i in $(seq 0 $((p - 1))); do sets+=("$((spread_first + i % spread))"); done
  results+=("$(step "$p process(es), 1 core each" "${sets[@]}")")
done

echo "scale: $cores cores, broker and fake on $fake_set ($fake_threads fake thread(s)), pusher on $first_pusher-$((cores - 1)) (processes over $spread_first-$((spread_first + spread - 1))); $N messages, $PARTITIONS partitions"
printf '%-32s %10s %12s %8s\n' step msg/s "CPU us/msg" ratio
base=""
for r in "${results[@]}"; do
  label=${r% * *}; rest=${r##"$label" }; rate=${rest% *}; us=${rest#* }
  [ -z "$base" ] && base=$rate
  printf '%-32s %10s %12s %8s\n' "$label" "$rate" "$us" "$(python3 -c "print(f'{$rate / $base:.2f}')")"
done
