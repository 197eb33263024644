// The list beside the map: the devices in view that pass the filters, red first, at most
// MAX_SHOWN of them (main.js picks them). A listbox: arrow keys, Home and End move, Enter opens the device.
import { markOf } from "./fleet.js";

export const MAX_SHOWN = 200;
const ORDER = { red: 0, grey: 1, green: 2 };

// Red first, then grey, then green; by id within each.
export function inListOrder(a, b) {
  return ORDER[markOf(a)] - ORDER[markOf(b)] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);
}

export class DeviceList {
  constructor(element, note, { onOpen }) {
    this.element = element;
    this.note = note;
    this.onOpen = onOpen;
    this.ids = [];
    this.active = -1;
    element.addEventListener("keydown", (event) => this.key(event));
    element.addEventListener("click", (event) => {
      const item = event.target.closest("li[data-id]");
      if (item) this.open(this.ids.indexOf(item.dataset.id));
    });
  }

  // rows: the first devices in view, in list order; count: all in view; total: the fleet.
  show(rows, count, total, selected) {
    this.ids = rows.map((row) => row[0]);
    this.element.replaceChildren(...rows.map((row) => this.item(row, row[0] === selected)));
    this.active = this.ids.indexOf(selected);
    this.mark();
    const more = count > rows.length ? `; the first ${rows.length} shown, zoom in or filter for the rest` : "";
    this.note.textContent = `${count} of ${total} devices in view${more}`;
  }

  item(row, selected) {
    const li = document.createElement("li");
    const kind = markOf(row);
    li.id = `item-${row[0]}`;
    li.dataset.id = row[0];
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(selected));
    li.className = `item item-${kind}`;
    const label = document.createElement("span");
    label.className = `swatch swatch-${kind}`;
    label.textContent = { green: "●", red: "▲", grey: "■" }[kind];
    const text = document.createElement("span");
    const alerts = row[6] ? ` · ${row[6]} alert${row[6] > 1 ? "s" : ""}` : "";
    text.textContent = `${row[0]}${alerts} · ${row[5] || "no location"}`;
    li.append(label, text);
    return li;
  }

  key(event) {
    const moves = { ArrowDown: 1, ArrowUp: -1, Home: -Infinity, End: Infinity };
    if (event.key === "Enter" && this.active >= 0) {
      event.preventDefault();
      this.open(this.active);
    } else if (event.key in moves && this.ids.length) {
      event.preventDefault();
      const step = moves[event.key];
      const next = Number.isFinite(step) ? this.active + step : step < 0 ? 0 : this.ids.length - 1;
      this.active = Math.max(0, Math.min(this.ids.length - 1, next));
      this.mark();
    }
  }

  mark() {
    for (const item of this.element.querySelectorAll(".active")) item.classList.remove("active");
    const id = this.ids[this.active];
    if (id === undefined) {
      this.element.removeAttribute("aria-activedescendant");
      return;
    }
    const item = document.getElementById(`item-${id}`);
    item.classList.add("active");
    item.scrollIntoView({ block: "nearest" });
    this.element.setAttribute("aria-activedescendant", item.id);
  }

  open(index) {
    if (index < 0) return;
    this.active = index;
    this.mark();
    this.onOpen(this.ids[index]);
  }
}
