// The map: a world basemap from Natural Earth (world-atlas, drawn on a canvas: no tile
// server), and one mark per house, clustered at low zoom by supercluster with per-colour
// counts. A mark's shape says what its colour says: green circle (no open alert), red
// triangle (open alerts), grey square (offline).
import { markOf } from "./fleet.js";

const { L, Supercluster, topojson } = window;
const MAX_CLUSTER_ZOOM = 12;
const SELECT_ZOOM = 9;
const SHAPES = {
  green: '<circle cx="8" cy="8" r="6"/>',
  red: '<path d="M8 1 L15 14 L1 14 Z"/><path class="bang" d="M8 5 V10 M8 11.5 V12.5"/>',
  grey: '<rect x="2.5" y="2.5" width="11" height="11"/>',
};
const LABELS = { green: "no open alert", red: "open alerts", grey: "offline" };

// Natural Earth cuts the polygons that cross the antimeridian (Russia, Fiji) with points at
// -180 and 180 side by side; drawn as they are, those edges run across the whole map. Each
// ring is unwrapped instead, so that no edge spans more than half the globe. Antarctica,
// whose ring runs round the pole, is left out: no house stands there.
const ANTARCTICA = "010";

function unwrap(ring) {
  let previous = null;
  return ring.map(([lon, lat]) => {
    let x = lon;
    while (previous !== null && x - previous > 180) x -= 360;
    while (previous !== null && x - previous < -180) x += 360;
    previous = x;
    return [x, lat];
  });
}

function unwrapped(geometry) {
  const { type, coordinates } = geometry;
  if (type === "Polygon") return { type, coordinates: coordinates.map(unwrap) };
  if (type === "MultiPolygon") return { type, coordinates: coordinates.map((p) => p.map(unwrap)) };
  return geometry;
}

function markIcon(kind, selected) {
  return L.divIcon({
    className: `mark mark-${kind}${selected ? " selected" : ""}`,
    html: `<svg viewBox="0 0 16 16" width="16" height="16" aria-hidden="true">${SHAPES[kind]}</svg>`,
    iconSize: [16, 16],
  });
}

function clusterIcon(counts) {
  const parts = ["red", "grey", "green"]
    .filter((kind) => counts[kind] > 0)
    .map((kind) => `<span class="count count-${kind}" title="${LABELS[kind]}">${counts[kind]}</span>`);
  return L.divIcon({ className: "cluster", html: parts.join(""), iconSize: null });
}

function markKey(feature) {
  const p = feature.properties;
  return p.cluster ? `c${p.cluster_id}:${p.green}/${p.red}/${p.grey}` : `p${p.id}:${p.kind}`;
}

export class FleetMap {
  constructor(element, { onSelect, onMove, rowOf }) {
    this.onSelect = onSelect;
    this.rowOf = rowOf;
    this.map = L.map(element, { worldCopyJump: true, preferCanvas: true, minZoom: 2, maxZoom: 18 });
    this.map.setView([25, 10], 2);
    this.layer = L.layerGroup().addTo(this.map);
    this.index = null;
    this.selected = null;
    this.drawn = new Map(); // key (markKey) -> marker on the map
    this.map.on("moveend", () => {
      this.draw();
      onMove();
    });
  }

  async loadBasemap(url) {
    const response = await fetch(url);
    const world = await response.json();
    const countries = topojson.feature(world, world.objects.countries).features
      .filter((country) => country.id !== ANTARCTICA)
      .map((country) => ({ ...country, geometry: unwrapped(country.geometry) }));
    L.geoJSON(countries, {
      renderer: L.canvas({ padding: 0.5 }),
      interactive: false,
      style: { color: "#9ca3af", weight: 0.6, fillColor: "#f9fafb", fillOpacity: 1 },
    }).addTo(this.map);
  }

  // Indexes the rows that pass the filters (those with a location) and draws them.
  setRows(rows) {
    const points = [];
    for (const row of rows) {
      if (row[1] === null) continue;
      points.push({
        type: "Feature",
        geometry: { type: "Point", coordinates: [row[2], row[1]] },
        properties: { id: row[0], kind: markOf(row) },
      });
    }
    this.index = new Supercluster({
      radius: 80,
      maxZoom: MAX_CLUSTER_ZOOM,
      map: (p) => ({ green: p.kind === "green" ? 1 : 0, red: p.kind === "red" ? 1 : 0, grey: p.kind === "grey" ? 1 : 0 }),
      reduce: (sum, p) => {
        sum.green += p.green;
        sum.red += p.red;
        sum.grey += p.grey;
      },
    });
    this.index.load(points);
    this.layer.clearLayers(); // a new index: its cluster ids mean other clusters
    this.drawn = new Map();
    this.draw();
  }

  bounds() {
    return this.map.getBounds();
  }

  draw() {
    if (!this.index) return;
    const b = this.map.getBounds();
    const west = Math.max(-180, b.getWest());
    const east = Math.min(180, b.getEast());
    const zoom = Math.round(this.map.getZoom());
    const features = this.index.getClusters([west, Math.max(-85, b.getSouth()), east, Math.min(85, b.getNorth())], zoom);
    // Marks already on the map stay (a pan redraws few): only the ones that left or changed go.
    const drawn = new Map();
    for (const feature of features) {
      const key = markKey(feature);
      drawn.set(key, this.drawn.get(key) || this.mark(feature));
    }
    const selected = this.selectedMark();
    if (selected) drawn.set("selected", selected);
    for (const [key, mark] of this.drawn) {
      if (drawn.get(key) !== mark) this.layer.removeLayer(mark);
    }
    for (const [key, mark] of drawn) {
      if (this.drawn.get(key) !== mark) this.layer.addLayer(mark);
    }
    this.drawn = drawn;
  }

  // The selected house is always drawn on its own, on top, even inside a cluster.
  selectedMark() {
    const row = this.selected === null ? undefined : this.rowOf(this.selected);
    if (!row || row[1] === null) return null;
    const kind = markOf(row);
    return L.marker([row[1], row[2]], {
      icon: markIcon(kind, true), title: `${row[0]}: ${LABELS[kind]} (selected)`, alt: row[0],
      keyboard: false, zIndexOffset: 1000,
    });
  }

  mark(feature) {
    const [lon, lat] = feature.geometry.coordinates;
    const p = feature.properties;
    if (p.cluster) {
      const marker = L.marker([lat, lon], { icon: clusterIcon(p), keyboard: false });
      marker.on("click", () => {
        const zoom = Math.min(this.index.getClusterExpansionZoom(p.cluster_id), 18);
        this.map.setView([lat, lon], zoom);
      });
      return marker;
    }
    const marker = L.marker([lat, lon], {
      icon: markIcon(p.kind, false),
      title: `${p.id}: ${LABELS[p.kind]}`,
      alt: p.id,
      keyboard: false,
    });
    marker.on("click", () => this.onSelect(p.id));
    return marker;
  }

  select(id) {
    this.selected = id;
    const row = this.rowOf(id);
    if (row && row[1] !== null) {
      this.map.setView([row[1], row[2]], Math.max(this.map.getZoom(), SELECT_ZOOM));
    } else {
      this.draw();
    }
  }
}
