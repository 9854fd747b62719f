#!/usr/bin/env bash
# Benchmark (not a test): how many small APNs-like POSTs per second `pusher mock apns` serves
# under h2load, against nghttpd (the machine's ceiling) in the same run.
#
#   ci/h2load-mock.sh                 # 1,000,000 requests per run, h2c and TLS, 2 and 4 connections
#   N=300000 ci/h2load-mock.sh        # shorter runs (noisier)
#   MODES=h2c CONNS=2 ci/h2load-mock.sh
#   THREADS="1 2 4" ci/h2load-mock.sh # the fake on 1, 2 and 4 threads (mock --threads N)
#
# nghttpd gets as many threads as the fake (-n); h2load runs on H2LOAD_THREADS (default 1, as
# the earlier figures; give it more on a big machine so that the load is not the limit).
#
# Prints one line per run and the ratio mock/nghttpd per setting; the bar is 0.6
# (reference/h2-ceiling.md). Needs h2load and nghttpd (Debian nghttp2-client, nghttp2-server:
# ci/setup.sh installs them) and openssl for nghttpd's TLS certificate.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000000}
STREAMS=${STREAMS:-100}
CONNS=${CONNS:-"2 4"}
MODES=${MODES:-"h2c tls"}
REPEAT=${REPEAT:-2}
THREADS=${THREADS:-1}

. ci/bench-common.sh
bench_setup h2load-mock h2load nghttpd openssl python3
# Prints the req/s of one h2load run; fails on any non-2xx answer.
run() {
  local url=$1 conns=$2 out
  out=$(h2load -n "$N" -c "$conns" -m "$STREAMS" -t "${H2LOAD_THREADS:-1}" -d "$work/body.json" \
    -H 'content-type: application/json' -H 'apns-topic: com.example.app' -H 'apns-push-type: alert' "$url" 2>&1)
  grep -q " 0 failed, 0 errored" <<<"$out" && grep -q "status codes: $N 2xx" <<<"$out" \
    || { echo "h2load-mock: bad run against $url:" >&2; echo "$out" >&2; exit 1; }
  sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out"
}

printf '%-7s %-5s %5s %7s %12s %12s %7s\n' threads mode conns streams nghttpd mock ratio
status=0
for threads in $THREADS; do
  NGHTTPD_THREADS=$threads start_nghttpd ng_h2c h2c
  NGHTTPD_THREADS=$threads start_nghttpd ng_tls tls
  # The fake, happy profile, no admin port; its ready line gives the addresses.
  rm -f "$work/mock.json"
  "$bin" mock apns --threads "$threads" --listen 127.0.0.1:0 --listen-h2c 127.0.0.1:0 --admin off \
    --ca-out "$work/ca.pem" > "$work/mock.json" 2>"$work/mock.err" & mock_pid=$!; pids+=($mock_pid)
  for _ in $(seq 100); do [ -s "$work/mock.json" ] && break; sleep 0.1; done
  [ -s "$work/mock.json" ] || { echo "h2load-mock: the mock did not start:" >&2; cat "$work/mock.err" >&2; exit 1; }
  mock_h2c=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["apns"]["h2c"])' < "$work/mock.json")
  mock_tls=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["apns"]["tls"])' < "$work/mock.json")
  sleep 0.5
  for mode in $MODES; do
    for c in $CONNS; do
      if [ "$mode" = tls ]; then ng="https://localhost:$ng_tls$path"; mk="https://$mock_tls$path"
      else ng="http://127.0.0.1:$ng_h2c$path"; mk="http://$mock_h2c$path"; fi
      best_ng=0; best_mk=0
      # Alternate the two servers so that machine noise hits both alike; keep each one's best.
      for _ in $(seq "$REPEAT"); do
        r=$(run "$ng" "$c"); best_ng=$(python3 -c "print(max($best_ng, $r))")
        r=$(run "$mk" "$c"); best_mk=$(python3 -c "print(max($best_mk, $r))")
      done
      ratio=$(python3 -c "print(f'{$best_mk / $best_ng:.2f}')")
      printf '%-7s %-5s %5s %7s %12.0f %12.0f %7s\n' "$threads" "$mode" "$c" "$STREAMS" "$best_ng" "$best_mk" "$ratio"
      python3 -c "import sys; sys.exit(0 if $ratio >= 0.6 else 1)" || status=1
    done
  done
  kill "$mock_pid" 2>/dev/null || true
  wait "$mock_pid" 2>/dev/null || true
done
[ $status -eq 0 ] && echo "h2load-mock: mock >= 0.6 x nghttpd in every setting" \
  || echo "h2load-mock: mock below 0.6 x nghttpd in some setting"
exit $status
