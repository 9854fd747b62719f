# Sourced by the benchmark scripts in ci/ (h2load-mock.sh, sender-vs-h2load.sh,
# speed-targets.sh): the tools they need, a release build, a scratch folder whose background
# processes die with the script, free ports, and nghttpd (the machine's HTTP/2 ceiling).
#   cd "$(dirname "$0")/.."; . ci/bench-common.sh; bench_setup NAME TOOL...
# sets $bin (the release pusher) and $work, and writes $work/body.json (300 bytes),
# $work/key.pem, $work/cert.pem and $work/htdocs/3/device/<token> ($path).

bench_setup() {
  local name=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool is missing (run ci/setup.sh)" >&2; exit 1; }
  done
  echo "$name: building release" >&2
  cargo build --release --quiet --bin pusher
  bin="${CARGO_TARGET_DIR:-target}/release/pusher"

  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT

  token=$(printf 'ab%.0s' $(seq 32))
  path="/3/device/$token"
  # A 300-byte JSON body, like the figures in reference/h2-ceiling.md: 17 + 280 + 3 bytes.
  printf '{"aps":{"alert":"%s"}}' "$(head -c 280 /dev/zero | tr '\0' x)" > "$work/body.json"
  mkdir -p "$work/htdocs/3/device"
  : > "$work/htdocs$path"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
}

bench_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# nghttpd, NGHTTPD_THREADS workers (default one), 1000 streams (its default is 100), serving an empty file at $path:
# `start_nghttpd VAR tls|h2c` sets VAR to its port (not `$(...)`: its pid must join $pids here).
start_nghttpd() {
  local p
  p=$(port)
  if [ "$2" = tls ]; then
    nghttpd -n "${NGHTTPD_THREADS:-1}" -m 1000 -d "$work/htdocs" "$p" "$work/key.pem" "$work/cert.pem" >/dev/null 2>&1 &
  else
    nghttpd -n "${NGHTTPD_THREADS:-1}" --no-tls -m 1000 -d "$work/htdocs" "$p" >/dev/null 2>&1 &
  fi
  pids+=($!)
  printf -v "$1" '%s' "$p"
}
