#!/usr/bin/env bash
# Creates the virtualenv given as $1 and installs fleetharness into it with its dev tools,
# and HAProxy from the system packages when it is missing.
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

# HAProxy (the proxy tier in front of the shards) comes from the system's packages.
if ! command -v haproxy >/dev/null && ! [ -x /usr/sbin/haproxy ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing haproxy (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    else
        echo "bootstrap: haproxy is missing; install it (Debian: sudo apt-get install haproxy)" >&2
    fi
fi
