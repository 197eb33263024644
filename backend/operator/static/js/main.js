// The fleet map page: the live feed fills the fleet; the filters choose what the map and the
// list show; a mark or a list item opens the device panel.
import { Fleet, markOf, matcher } from "./fleet.js";
import { DeviceList, MAX_SHOWN, inListOrder } from "./list.js";
import { LiveFeed } from "./live.js";
import { FleetMap } from "./map.js";
import { DevicePanel } from "./panel.js";
import { report } from "./problem.js";

const REINDEX_DELAY = 150; // ms: deltas arriving together are indexed once
const MAX_REINDEX_RATE = 1000; // ms between two re-indexings of a large fleet
const LARGE = 20000;

const $ = (id) => document.getElementById(id);
const fleet = new Fleet();
let filtered = [];
let selected = null;
let reindexTimer = null;
let lastReindex = 0;

const filter = () => ({ search: $("search").value, state: $("state").value, online: $("online").value, firmware: $("firmware").value });
const filtering = () => Object.values(filter()).some(Boolean);

const panel = new DevicePanel($("panel"), {
  selection: () => (filtering() || selected === null ? filtered.map((row) => row[0]) : [selected]),
});
const map = new FleetMap($("map"), {
  onSelect: (id) => open(id),
  onMove: () => showList(),
  rowOf: (id) => fleet.rows.get(id),
});
const list = new DeviceList($("list"), $("list-note"), { onOpen: (id) => open(id) });

function open(id) {
  selected = id;
  map.select(id);
  showList();
  panel.open(id);
}

function showCounts() {
  const all = fleet.counts();
  const shown = filtering() ? ` · ${filtered.length} match the filters` : "";
  $("counts").textContent = `${all.total} devices: ${all.green} green, ${all.red} red, ${all.grey} offline${shown}`;
  $("counts").dataset.green = all.green;
  $("counts").dataset.red = all.red;
  $("counts").dataset.grey = all.grey;
}

// The devices in view, in list order (``filtered`` is kept sorted), the first MAX_SHOWN of
// them, and how many there are: one pass of number comparisons, as it runs after every move.
function showList() {
  const b = map.bounds();
  const [south, north, west, east] = [b.getSouth(), b.getNorth(), b.getWest(), b.getEast()];
  const wraps = east - west >= 360;
  const shown = [];
  let count = 0;
  for (const row of filtered) {
    const lat = row[1];
    if (lat !== null) {
      const lon = ((((row[2] - west) % 360) + 360) % 360) + west; // into the view's longitudes
      if (lat < south || lat > north || (!wraps && lon > east)) continue;
    }
    count += 1;
    if (shown.length < MAX_SHOWN) shown.push(row);
  }
  list.show(shown, count, fleet.rows.size, selected);
}

function showFirmwares() {
  const select = $("firmware");
  const known = new Set([...select.options].map((o) => o.value));
  for (const firmware of [...fleet.firmwares].sort()) {
    if (!known.has(firmware)) select.append(new Option(firmware, firmware));
  }
}

function reindex() {
  reindexTimer = null;
  lastReindex = performance.now();
  const match = matcher(filter());
  filtered = [...fleet.rows.values()].filter(match).sort(inListOrder);
  map.setRows(filtered);
  showCounts();
  showList();
  showFirmwares();
  document.body.dataset.ready = "true";
}

function reindexSoon() {
  if (reindexTimer !== null) return;
  const spacing = fleet.rows.size > LARGE ? MAX_REINDEX_RATE - (performance.now() - lastReindex) : 0;
  reindexTimer = setTimeout(reindex, Math.max(REINDEX_DELAY, spacing));
}

const feed = new LiveFeed({
  onFleet: (message) => {
    fleet.load(message);
    reindex();
    if (selected !== null) panel.refresh();
  },
  onDelta: (delta) => {
    const changed = fleet.apply(delta);
    reindexSoon();
    if (selected !== null && changed.includes(selected)) panel.refresh();
  },
});

for (const id of ["state", "online", "firmware"]) $(id).addEventListener("change", reindex);
$("search").addEventListener("input", () => {
  clearTimeout(reindexTimer);
  reindexTimer = setTimeout(reindex, REINDEX_DELAY);
});
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  reindex();
  if (filtered.length) open(filtered[0][0]);
});

map.loadBasemap("/static/vendor/countries-50m.json").catch((error) =>
  report(new Error(`The world map could not be drawn (${error.message}): marks are shown on a blank map.`)),
);
feed.connect();
window.fleetMap = { fleet, map, markOf }; // for the benchmark and tests: read-only use
