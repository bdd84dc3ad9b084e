#!/usr/bin/env bash
# Installs what the dashboard's end-to-end test needs: Debian's chromium
# (a real browser, headless) and playwright-core, pinned in package.json
# and package-lock.json, into e2e/node_modules with `npm ci`.
# Needs node 20+ with npm; downloads only from Debian and the npm registry.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! command -v chromium >/dev/null; then
    echo "== chromium (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
chromium --version
command -v node >/dev/null || { echo "install.sh: node not found: install Node.js 20 or later" >&2; exit 1; }
echo "== playwright-core into $here/node_modules"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
