#!/usr/bin/env bash
# Installs the load generators that case G of the licensing bench runs in
# processes of their own: wrk (Debian) for requests per second at
# saturation, and oha (crates.io) for open-loop latency, built into
# target/bench-tools. With --smoke (CI's quick run, where only whether the
# case works matters) oha is a debug build in target/bench-tools-smoke,
# which is quicker to build; point TOLLGATE_BENCH_OHA at it. Safe to run
# again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/target/bench-tools"
debug=()
if [ "${1:-}" = "--smoke" ]; then
  tools="$root/target/bench-tools-smoke"
  debug=(--debug)
fi

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
wrk --version 2>&1 | head -1 || true

if [ ! -x "$tools/bin/oha" ]; then
  cargo install oha --version 1.16.0 --locked "${debug[@]}" --root "$tools"
fi
"$tools/bin/oha" --version
