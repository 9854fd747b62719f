#!/usr/bin/env bash
# Benchmark (not a test): how many small APNs-like POSTs per second `pusher mock apns` serves
# under h2load, against nghttpd (the machine's ceiling) in the same run.
#
#   ci/h2load-mock.sh                 # 1,000,000 requests per run, h2c and TLS, 2 and 4 connections
#   N=300000 ci/h2load-mock.sh        # shorter runs (noisier)
#   MODES=h2c CONNS=2 ci/h2load-mock.sh
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

for tool in h2load nghttpd openssl; do
  command -v "$tool" >/dev/null || { echo "h2load-mock: $tool is missing (run ci/setup.sh)" >&2; exit 1; }
done

echo "h2load-mock: building release" >&2
cargo build --release --quiet --bin pusher
bin="${CARGO_TARGET_DIR:-target}/release/pusher"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

token=$(printf 'ab%.0s' $(seq 32))
path="/3/device/$token"
# A 300-byte JSON body, like the figures in reference/h2-ceiling.md: 17 + 280 + 3 bytes.
printf '{"aps":{"alert":"%s"}}' "$(head -c 280 /dev/zero | tr '\0' x)" > "$work/body.json"
mkdir -p "$work/htdocs/3/device"
: > "$work/htdocs$path"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nghttpd: one worker, 1000 streams (its default is 100), serving an empty file at the path.
ng_h2c=$(port); ng_tls=$(port)
nghttpd --no-tls -m 1000 -d "$work/htdocs" "$ng_h2c" >/dev/null 2>&1 & pids+=($!)
nghttpd -m 1000 -d "$work/htdocs" "$ng_tls" "$work/key.pem" "$work/cert.pem" >/dev/null 2>&1 & pids+=($!)

# The fake, happy profile, no admin port; its ready line gives the addresses.
"$bin" mock apns --listen 127.0.0.1:0 --listen-h2c 127.0.0.1:0 --admin off --ca-out "$work/ca.pem" \
  > "$work/mock.json" 2>"$work/mock.err" & pids+=($!)
for _ in $(seq 100); do [ -s "$work/mock.json" ] && break; sleep 0.1; done
[ -s "$work/mock.json" ] || { echo "h2load-mock: the mock did not start:" >&2; cat "$work/mock.err" >&2; exit 1; }
mock_h2c=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["apns"]["h2c"])' < "$work/mock.json")
mock_tls=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["apns"]["tls"])' < "$work/mock.json")
sleep 0.5

# Prints the req/s of one h2load run; fails on any non-2xx answer.
run() {
  local url=$1 conns=$2 out
  out=$(h2load -n "$N" -c "$conns" -m "$STREAMS" -t 1 -d "$work/body.json" \
    -H 'content-type: application/json' -H 'apns-topic: com.example.app' -H 'apns-push-type: alert' "$url" 2>&1)
  grep -q " 0 failed, 0 errored" <<<"$out" && grep -q "status codes: $N 2xx" <<<"$out" \
    || { echo "h2load-mock: bad run against $url:" >&2; echo "$out" >&2; exit 1; }
  sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out"
}

printf '%-5s %5s %7s %12s %12s %7s\n' mode conns streams nghttpd mock ratio
status=0
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
    printf '%-5s %5s %7s %12.0f %12.0f %7s\n' "$mode" "$c" "$STREAMS" "$best_ng" "$best_mk" "$ratio"
    python3 -c "import sys; sys.exit(0 if $ratio >= 0.6 else 1)" || status=1
  done
done
[ $status -eq 0 ] && echo "h2load-mock: mock >= 0.6 x nghttpd in every setting" \
  || echo "h2load-mock: mock below 0.6 x nghttpd in some setting"
exit $status
