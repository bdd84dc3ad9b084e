#!/usr/bin/env bash
# Installs the pinned toolchains that build the example plugins written in
# other languages (see build-other-languages.sh):
#   python: componentize-py (pinned in python/hello-python/requirements.txt)
#           into the virtual environment python/hello-python/.venv
#   js:     @bytecodealliance/componentize-js (pinned in js/hello-js/package.json
#           and package-lock.json) into js/hello-js/node_modules, with `npm ci`
#
# Usage: install-other-languages.sh [python] [js]     (default: both)
# Needs python3 (3.9+, with venv) and node 20+ with npm; downloads only from
# PyPI and the npm registry. Set PYTHON to use another interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python_dir="$here/python/hello-python"
js_dir="$here/js/hello-js"

languages=("$@")
[ ${#languages[@]} -gt 0 ] || languages=(python js)

die() { echo "install-other-languages.sh: $*" >&2; exit 1; }

install_python() {
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null || die "$python not found: install Python 3 (with venv) or set PYTHON"
    echo "== componentize-py into $python_dir/.venv"
    "$python" -m venv "$python_dir/.venv"
    "$python_dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$python_dir/requirements.txt"
    "$python_dir/.venv/bin/componentize-py" --version
}

install_js() {
    command -v node >/dev/null || die "node not found: install Node.js 20 or later"
    command -v npm >/dev/null || die "npm not found: install npm (it comes with Node.js)"
    echo "== componentize-js into $js_dir/node_modules"
    (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "componentize-js $("$js_dir/node_modules/.bin/componentize-js" --version)"
}

for language in "${languages[@]}"; do
    case "$language" in
        python) install_python ;;
        js) install_js ;;
        *) die "unknown language '$language' (expected python or js)" ;;
    esac
done
