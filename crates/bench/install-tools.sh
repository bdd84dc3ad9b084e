#!/usr/bin/env bash
# Installs the load generators that case G of the licensing bench runs in
# processes of their own: wrk (Debian) for requests per second at
# saturation, and oha (crates.io, built into target/bench-tools) for
# open-loop latency. Run from anywhere; safe to run again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
wrk --version 2>&1 | head -1 || true

if [ ! -x "$root/target/bench-tools/bin/oha" ]; then
  cargo install oha --version 1.16.0 --locked --root "$root/target/bench-tools"
fi
"$root/target/bench-tools/bin/oha" --version
