#!/usr/bin/env bash
# Creates the virtualenv given as $1 and installs fleetharness into it with its dev tools,
# HAProxy, Prometheus and Chromium (the fleet map's browser tests) from the system packages
# when they are missing, and the fleet map's browser libraries from npm (scripts/vendor.sh).
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3}

die() { echo "bootstrap: $*" >&2; exit 1; }

command -v "$python" >/dev/null || die "no '$python' on PATH: install Python 3.11 or newer (Debian: apt-get install python3 python3-venv), or run 'make PYTHON=/path/to/python3.11'."
"$python" - <<'PY' || die "fleetharness needs Python 3.11 or newer; run 'make PYTHON=/path/to/python3.11'."
import sys
sys.exit(sys.version_info < (3, 11))
PY
"$python" -c 'import venv, ensurepip' 2>/dev/null || die "Python's venv module is missing (Debian: apt-get install python3-venv)."

echo "bootstrap: creating $venv and installing fleetharness (first run only)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev]'

# HAProxy (the proxy tier in front of the shards), Prometheus (scrapes the stack for the
# dashboards), Chromium (drives the fleet map in its tests; Playwright is told to use it, so
# no browser is downloaded) and npm (the map's libraries) come from the system's packages.
# The stack runs its own processes of HAProxy and Prometheus, so the services the packages
# start are stopped: they would only hold ports (Prometheus: 9090).
missing=()
for package in haproxy prometheus chromium npm; do
    command -v "$package" >/dev/null || [ -x "/usr/sbin/$package" ] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${missing[*]} (apt-get)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
        for package in "${missing[@]}"; do
            case "$package" in haproxy | prometheus) ;; *) continue ;; esac
            systemctl disable --now "$package" || service "$package" stop
        done >/dev/null 2>&1 || true
    else
        echo "bootstrap: ${missing[*]} missing; install (Debian): sudo apt-get install ${missing[*]}" >&2
    fi
fi

scripts/vendor.sh
