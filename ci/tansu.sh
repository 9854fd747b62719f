#!/usr/bin/env bash
# A real Kafka-protocol broker for the tests: Tansu 0.6.0 with SQLite storage
# (../shared/reference/kafka-probe.md §2: its memory:// engine skips data on mid-batch fetches).
#
#   ci/tansu.sh build          build once into the cache (about 16 min cold on 2 cores), print the binary
#   ci/tansu.sh start DIR      start a broker with its data in DIR on a free 127.0.0.1 port,
#                              print its bootstrap address; the pid is in DIR/tansu.pid
#   ci/tansu.sh stop DIR       stop that broker (SIGTERM, then SIGKILL)
#
# The cache (PUSHER_CI_CACHE, default /var/cache/pusher-ci) holds only what this script rebuilds.
set -euo pipefail
version=0.6.0
cache="${PUSHER_CI_CACHE:-/var/cache/pusher-ci}"
root="$cache/tansu-$version"
bin="$root/bin/tansu"

build() {
  mkdir -p "$cache"
  # One build at a time: a second caller waits for the first, then finds the binary.
  exec 9>"$cache/.build.lock"
  flock 9
  if [ ! -x "$bin" ]; then
    echo "ci/tansu: building tansu $version into $root (cold: ~16 min)" >&2
    mkdir -p "$root"
    CARGO_TARGET_DIR="$cache/tansu-target" cargo install "tansu@$version" --locked --quiet \
      --no-default-features --features dynostore,libsql --root "$root" >&2
    rm -rf "$cache/tansu-target"
  fi
  flock -u 9
  echo "$bin"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  local dir="$1" port
  build >/dev/null
  mkdir -p "$dir"
  port="${2:-$(free_port)}"
  # tansu reads .env from its working directory and resolves sqlite:// paths against it.
  (cd "$dir" && exec "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db \
      >"$dir/tansu.log" 2>&1) &
  echo $! >"$dir/tansu.pid"
  echo "$port" >"$dir/tansu.port"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "127.0.0.1:$port"; return 0; fi
    sleep 0.1
  done
  echo "ci/tansu: broker did not listen on $port; log:" >&2; cat "$dir/tansu.log" >&2; return 1
}

stop() {
  local dir="$1" pid
  [ -f "$dir/tansu.pid" ] || return 0
  pid=$(cat "$dir/tansu.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || { rm -f "$dir/tansu.pid"; return 0; }; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/tansu.pid"
}

case "${1:-}" in
  build) build ;;
  start) start "${2:?usage: ci/tansu.sh start DIR [PORT]}" "${3:-}" ;;
  stop) stop "${2:?usage: ci/tansu.sh stop DIR}" ;;
  *) echo "usage: ci/tansu.sh build | start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
