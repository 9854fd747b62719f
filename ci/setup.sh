#!/usr/bin/env bash
# Installs what the tests and benchmarks need and starts the services they use.
# Safe to run again: it only installs what is missing and starts what is down.
set -euo pipefail

# chromium: tests/replay.rs renders the HTML report headless and checks the screenshot.
packages=(nghttp2-client nghttp2-server curl jq kcat python3-h2 python3-pip chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "ci/setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# cargo-deny for `cargo deny check licenses bans sources` (.ci/run). A cold build from
# crates.io took 42 min on this 2-core VM under a load of ~14 (a few minutes when quiet).
if ! command -v cargo-deny >/dev/null; then
  echo "ci/setup: installing cargo-deny"
  cargo install cargo-deny --locked
fi

# Third-party web push code the tests check ours against (tests/webpush.rs, mock_webpush.rs):
# Mozilla's http_ece decrypts our bodies, pywebpush sends to our fake. From PyPI.
if ! python3 -c "import http_ece, pywebpush" 2>/dev/null; then
  echo "ci/setup: installing http_ece and pywebpush"
  # Debian 12 and later refuse a system-wide pip install (PEP 668) unless told.
  python3 -m pip install --quiet --disable-pip-version-check http_ece pywebpush 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages \
      http_ece pywebpush
fi

# PostgreSQL on 127.0.0.1:5432 (token deletion tests).
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "ci/setup: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
echo "ci/setup: ready"
