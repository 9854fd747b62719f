#!/usr/bin/env bash
# Benchmark (not a test): our sender beside h2load, from one run, as ratios.
#   1. pusher bench --sender-only  -> the standalone fake APNs (TLS, JWT checked)
#   2. h2load                      -> the same fake
#   3. h2load                      -> nghttpd (the machine's HTTP/2 ceiling)
# Same request shape for all (POST /3/device/<64 hex>, ~300-byte body), same connections.
#
#   ci/sender-vs-h2load.sh            # N=500000 per run
#   N=200000 CONNS=2 ci/sender-vs-h2load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500000}
CONNS=${CONNS:-2}
STREAMS=${STREAMS:-500}

. ci/bench-common.sh
bench_setup sender-vs-h2load h2load nghttpd openssl python3

# The fake, standalone (its own process and runtime), checking our JWTs.
fake_port=$(port)
"$bin" mock apns --listen "127.0.0.1:$fake_port" --listen-h2c off --ca-out "$work/ca.pem" \
  --jwt-key TESTKEY001:TEAM000001:fixtures/apns/AuthKey_TESTKEY001.pub.pem > "$work/fake.json" 2>/dev/null &
pids+=($!)
start_nghttpd ng_port tls
sleep 1

jwt_header() { # a JWT h2load can send (signed with the test key, valid for an hour)
  python3 - "$@" <<'PY'
import base64, json, subprocess, time, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
head = b(json.dumps({"alg": "ES256", "kid": "TESTKEY001"}).encode())
claims = b(json.dumps({"iss": "TEAM000001", "iat": int(time.time())}).encode())
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", "fixtures/apns/AuthKey_TESTKEY001.p8"],
                     input=f"{head}.{claims}".encode(), capture_output=True, check=True).stdout
print(f"{head}.{claims}.{b(der)}")   # DER signature: the fake accepts it, as APNs does
PY
}
jwt=$(jwt_header)
h2() { h2load -n "$N" -c "$CONNS" -m 100 -t 1 -d "$work/body.json" -H 'content-type: application/json' \
  -H 'apns-topic: com.example.app' -H "authorization: bearer $jwt" "$1" 2>/dev/null | awk '/^finished in/ {gsub(",","",$4); print $4}'; }

ours=$("$bin" bench --sender-only --endpoint "https://127.0.0.1:$fake_port" --ca "$work/ca.pem" \
  --key-file fixtures/apns/AuthKey_TESTKEY001.p8 --key-id TESTKEY001 --team-id TEAM000001 \
  --count "$N" --connections "$CONNS" --concurrency "$STREAMS" --payload-size 300 --quiet --json "$work/ours.json" >/dev/null 2>&1;
  python3 -c "import json;print(round(json.load(open('$work/ours.json'))['throughput']))")
h2fake=$(h2 "https://127.0.0.1:$fake_port/3/device/$token")
h2ng=$(h2 "https://127.0.0.1:$ng_port/3/device/$token")
python3 - "$ours" "$h2fake" "$h2ng" <<'PY'
import sys
ours, h2fake, h2ng = (float(x) for x in sys.argv[1:])
print(f"pusher sender -> fake   {ours:>10.0f} req/s")
print(f"h2load        -> fake   {h2fake:>10.0f} req/s   (sender / h2load on the same fake: {ours/h2fake:.2f})")
print(f"h2load        -> nghttpd{h2ng:>10.0f} req/s   (sender / h2load on nghttpd: {ours/h2ng:.2f}; fake / nghttpd: {h2fake/h2ng:.2f})")
PY
