#!/usr/bin/env bash
# Builds the example plugins written in other languages against ../wit (world
# `service-offer`) into OUT_DIR:
#   hello_python.wasm  from python/hello-python/app.py, with componentize-py
#   hello_js.wasm      from js/hello-js/hello.js, with componentize-js
#
# Usage: build-other-languages.sh [--force] OUT_DIR [python] [js]   (default: both)
#
# Installs nothing: run install-other-languages.sh first. A component that is
# newer than its sources, built by the same tool version, is kept unless
# --force is given.
#
# Exit status: 0 built (or up to date); 1 a build failed; 2 bad usage;
# 3 a pinned toolchain is missing (the message says how to install it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wit_dir="$here/../wit"
python_dir="$here/python/hello-python"
js_dir="$here/js/hello-js"
self="$here/build-other-languages.sh"
install_hint="run guest-examples/install-other-languages.sh"

usage() { echo "usage: build-other-languages.sh [--force] OUT_DIR [python] [js]" >&2; exit 2; }
missing() { echo "build-other-languages.sh: $*" >&2; exit 3; }

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
[ $# -ge 1 ] || usage
out_dir="$1"; shift
languages=("$@")
[ ${#languages[@]} -gt 0 ] || languages=(python js)
for language in "${languages[@]}"; do
    case "$language" in python|js) ;; *) echo "unknown language '$language'" >&2; usage ;; esac
done
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

# up_to_date OUT STAMP INPUT...: OUT exists, was built by the tool STAMP names,
# and no file in INPUT... (files or folders) is newer than it.
up_to_date() {
    local out="$1" stamp="$2"; shift 2
    [ "$force" = 0 ] && [ -f "$out" ] && [ -f "$out.tool" ] || return 1
    [ "$(cat "$out.tool")" = "$stamp" ] || return 1
    [ -z "$(find "$@" \( -name .venv -o -name node_modules -o -name __pycache__ \) -prune \
        -o -type f -newer "$out" -print -quit)" ]
}

# finish OUT STAMP: moves the fresh OUT.tmp into place and records the tool.
finish() {
    mv -f "$1.tmp" "$1"
    printf '%s\n' "$2" > "$1.tool"
    echo "built $1 ($(wc -c < "$1") bytes, $2)"
}

build_python() {
    local pinned tool="" version
    pinned="$(sed -n 's/^componentize-py==\([^ ;#]*\).*/\1/p' "$python_dir/requirements.txt")"
    if [ -x "$python_dir/.venv/bin/componentize-py" ]; then
        tool="$python_dir/.venv/bin/componentize-py"
    elif command -v componentize-py >/dev/null 2>&1; then
        tool="componentize-py"
    fi
    version="$( [ -n "$tool" ] && "$tool" --version 2>/dev/null || true)"
    [ -n "$version" ] || missing "componentize-py is not installed (wanted componentize-py==$pinned): $install_hint python"
    [ "$version" = "componentize-py $pinned" ] ||
        missing "found $version ($tool), but the plugin is pinned to componentize-py==$pinned: $install_hint python"

    local out="$out_dir/hello_python.wasm"
    if up_to_date "$out" "$version" "$python_dir" "$wit_dir" "$self"; then
        echo "up to date: $out"; return
    fi
    # Build from a copy: componentize-py leaves a __pycache__ beside the sources.
    local src
    src="$(mktemp -d)"
    tar -C "$python_dir" --exclude=./.venv --exclude=__pycache__ -cf - . | tar -C "$src" -xf -
    if ! "$tool" -d "$wit_dir" -w service-offer componentize -p "$src" app -o "$out.tmp" >&2; then
        rm -rf "$src"; return 1
    fi
    rm -rf "$src"
    finish "$out" "$version"
}

build_js() {
    command -v node >/dev/null 2>&1 || missing "node is not installed (Node.js 20 or later builds the JS plugin)"
    local pinned installed="" version
    pinned="$(cd "$js_dir" && node -p "require('./package.json').devDependencies['@bytecodealliance/componentize-js']")"
    local tool="$js_dir/node_modules/.bin/componentize-js"
    if [ -x "$tool" ]; then
        installed="$(cd "$js_dir" && node -p "require('./node_modules/@bytecodealliance/componentize-js/package.json').version")"
    fi
    [ -n "$installed" ] ||
        missing "componentize-js is not installed in js/hello-js/node_modules (wanted @bytecodealliance/componentize-js@$pinned): $install_hint js"
    [ "$installed" = "$pinned" ] ||
        missing "found componentize-js $installed, but the plugin is pinned to $pinned: $install_hint js"
    version="componentize-js $installed"

    local out="$out_dir/hello_js.wasm"
    if up_to_date "$out" "$version" "$js_dir" "$wit_dir" "$self"; then
        echo "up to date: $out"; return
    fi
    # componentize-js reports a syntax error without saying where; node does.
    (cd "$js_dir" && node --check hello.js)
    # The host links WASI 0.2 but not wasi:http, so leave out the engine's
    # fetch() and fetch-event support (they would import wasi:http).
    (cd "$js_dir" && "$tool" --wit "$wit_dir" --world-name service-offer \
        --disable http fetch-event -o "$out.tmp" hello.js >&2)
    finish "$out" "$version"
}

for language in "${languages[@]}"; do
    "build_$language"
done
