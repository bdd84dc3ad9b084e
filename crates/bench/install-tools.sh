#!/usr/bin/env bash
# Installs the load generators that case G of the licensing bench runs in
# processes of their own: wrk (Debian) for requests per second at
# saturation, and oha (crates.io) for open-loop latency, built into
# target/bench-tools. With --smoke (CI's quick run, where only whether the
# case works matters) oha is a debug build in target/bench-tools-smoke,
# which is quicker to build; point TOLLGATE_BENCH_OHA at it. With
# --wasmtime it also builds wasmtime-cli 48 (the reference host of case G',
# `wasmtime serve`; about 10 minutes on 2 cores) into target/bench-tools.
# Safe to run again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/target/bench-tools"
debug=()
wasmtime=no
for arg in "$@"; do
  case "$arg" in
    --smoke) tools="$root/target/bench-tools-smoke"; debug=(--debug) ;;
    --wasmtime) wasmtime=yes ;;
    *) echo "usage: $0 [--smoke] [--wasmtime]" >&2; exit 2 ;;
  esac
done

if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
fi
wrk --version 2>&1 | head -1 || true

if [ ! -x "$tools/bin/oha" ]; then
  cargo install oha --version 1.16.0 --locked "${debug[@]}" --root "$tools"
fi
"$tools/bin/oha" --version

if [ "$wasmtime" = yes ]; then
  reference="$root/target/bench-tools"
  if [ ! -x "$reference/bin/wasmtime" ]; then
    # What `wasmtime serve` needs at its best: the pooling allocator,
    # parallel compilation and the compile cache, nothing else.
    cargo install wasmtime-cli --version 48.0.8 --locked --root "$reference" \
      --no-default-features \
      --features run,serve,cranelift,pooling-allocator,parallel-compilation,cache,component-model,component-model-async
  fi
  "$reference/bin/wasmtime" --version
fi
