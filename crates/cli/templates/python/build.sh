#!/usr/bin/env bash
# Builds {{lib_name}}.wasm from app.py against wit/ (world service-offer).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
want="componentize-py {{componentize_py}}"
if command -v componentize-py >/dev/null 2>&1 && [ "$(componentize-py --version)" = "$want" ]; then
    tool=componentize-py
else
    [ -x .venv/bin/componentize-py ] || { python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt; }
    tool=.venv/bin/componentize-py
fi
"$tool" -d wit -w service-offer componentize app -o {{lib_name}}.wasm
