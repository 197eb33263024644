// The fleet as the live feed tells it (backend/operator/watch.py): one compact row per
// device, [id, lat, lon, flags, firmware, address, open alerts], replaced whole by deltas.

export const ONLINE = 1;
export const RED = 2;

// What a mark shows: grey (offline) wins over red, red (open alerts) over green.
export function markOf(row) {
  const flags = row[3];
  if (!(flags & ONLINE)) return "grey";
  return flags & RED ? "red" : "green";
}

export class Fleet {
  constructor() {
    this.rows = new Map();
    this.firmwares = new Set();
  }

  load(message) {
    this.rows = new Map(message.rows.map((row) => [row[0], row]));
    this.firmwares = new Set(message.rows.map((row) => row[4]).filter(Boolean));
  }

  // Applies a delta; returns the ids it changed.
  apply(delta) {
    for (const row of delta.rows) {
      this.rows.set(row[0], row);
      if (row[4]) this.firmwares.add(row[4]);
    }
    for (const id of delta.removed) this.rows.delete(id);
    return [...delta.rows.map((row) => row[0]), ...delta.removed];
  }

  counts(rows = this.rows.values()) {
    const counts = { green: 0, red: 0, grey: 0, total: 0 };
    for (const row of rows) {
      counts[markOf(row)] += 1;
      counts.total += 1;
    }
    return counts;
  }
}

// filter: {state: "", "red" or "green"; online: "", "true" or "false"; firmware; search}
export function matcher(filter) {
  const search = filter.search.trim().toLowerCase();
  return (row) => {
    const red = (row[3] & RED) !== 0;
    const online = (row[3] & ONLINE) !== 0;
    if (filter.state && (filter.state === "red") !== red) return false;
    if (filter.online && (filter.online === "true") !== online) return false;
    if (filter.firmware && row[4] !== filter.firmware) return false;
    if (search && !row[0].toLowerCase().includes(search) && !row[5].toLowerCase().includes(search)) {
      return false;
    }
    return true;
  };
}
