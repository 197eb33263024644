#!/usr/bin/env bash
# The fleet map's browser libraries: installed from npm at the versions package-lock.json pins
# (npm ci), then their built files and licences copied into the folder the operator API serves
# as /static/vendor. Nothing is fetched by the page itself: it works with no network.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=backend/operator/static/vendor

command -v npm >/dev/null || {
    echo "vendor: npm missing: the fleet map's libraries cannot be installed (Debian: apt-get install npm)" >&2
    exit 1
}
npm ci --silent --no-audit --no-fund
rm -rf "$vendor"
mkdir -p "$vendor/images" "$vendor/licences"
m=node_modules
cp "$m/leaflet/dist/leaflet.js" "$m/leaflet/dist/leaflet.css" "$vendor/"
cp "$m/leaflet/dist/images/"*.png "$vendor/images/"
cp "$m/supercluster/dist/supercluster.min.js" "$vendor/"
cp "$m/topojson-client/dist/topojson-client.min.js" "$vendor/"
cp "$m/world-atlas/countries-50m.json" "$vendor/"
cp "$m/@xterm/xterm/lib/xterm.js" "$m/@xterm/xterm/css/xterm.css" "$vendor/"
cp "$m/@xterm/addon-fit/lib/addon-fit.js" "$vendor/"
for package in leaflet supercluster kdbush topojson-client world-atlas @xterm/xterm @xterm/addon-fit; do
    cp "$m/$package/LICENSE" "$vendor/licences/${package//\//-}.txt"
done
