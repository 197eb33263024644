// The device panel: open alerts (severity, description, suggested fix, since when), the last
// status, firmware, shard, online since and recent connections; actions: run a command, open
// a shell, roll out an update to the selection.
import { getDevice, runCommand } from "./api.js";
import { report } from "./problem.js";
import { openShell } from "./shell.js";
import { rolloutForm } from "./rollout.js";

const COMMAND_TIMEOUT = 10;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "never");
const ago = (ts) => {
  const seconds = Math.max(0, Date.now() / 1000 - ts);
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
};

function alertsSection(alerts) {
  if (!alerts.length) return el("p", { class: "ok" }, "No open alert.");
  return el("ul", { class: "alerts" }, ...alerts.map((a) =>
    el("li", { class: `alert severity-${a.severity}` },
      el("strong", {}, `${a.severity}: ${a.description || a.code}`),
      el("p", { class: "fix" }, `Suggested fix: ${a.fix || "none given"}`),
      el("p", { class: "since" }, `Since ${when(a.ts)} (${ago(a.ts)}) · code ${a.code}`))));
}

function facts(device) {
  const status = device.status;
  const values = status ? Object.entries(status.values).map(([k, v]) => `${k} ${v}`).join(", ") : "";
  const rows = [
    ["State", device.online ? (device.health === "red" ? "online, open alerts" : "online, no alert") : "offline"],
    ["Address", device.location ? device.location.address : "no location reported"],
    ["Firmware", device.firmware || "not reported"],
    ["Shard", device.shard || "none yet"],
    [device.online ? "Online since" : "Offline since", when(device.since)],
    ["Last status", status ? `${values || "no readings"} (${when(status.ts)})` : "none yet"],
  ];
  return el("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function history(device) {
  if (!device.history || !device.history.length) return el("p", {}, "No connection recorded yet.");
  return el("ol", { class: "history" }, ...[...device.history].reverse().map((h) =>
    el("li", {}, `${when(h.ts)}: ${h.online ? "connected to" : "disconnected from"} ${h.shard || "?"}`)));
}

export class DevicePanel {
  constructor(element, { selection }) {
    this.element = element;
    this.selection = selection; // () => ids the rollout form targets
    this.id = null;
    this.shell = null;
  }

  async open(id) {
    if (this.id !== id) this.closeShell();
    this.id = id;
    this.element.hidden = false;
    await this.refresh();
  }

  async refresh() {
    const id = this.id;
    if (id === null) return;
    let device;
    try {
      device = await getDevice(id);
    } catch (error) {
      const line = el("p", { class: "error", role: "alert" });
      this.element.replaceChildren(el("h2", {}, id), line, this.closeButton());
      report(error, line);
      return;
    }
    if (id !== this.id) return; // another device was opened meanwhile
    this.render(device);
  }

  render(device) {
    const keep = this.shell ? this.element.querySelector(".shell") : null;
    const kind = !device.online ? "grey" : device.health;
    this.element.replaceChildren(
      el("h2", { class: `title title-${kind}` }, device.id),
      this.closeButton(),
      el("h3", {}, "Open alerts"), alertsSection(device.alerts),
      el("h3", {}, "Device"), facts(device),
      el("h3", {}, "Recent connections"), history(device),
      el("h3", {}, "Run a command"), this.commandForm(device),
      el("h3", {}, "Shell"), keep || this.shellButton(device),
      el("h3", {}, "Update"), rolloutForm(this.selection),
    );
  }

  closeButton() {
    const button = el("button", { type: "button", class: "close", "aria-label": "Close the panel" }, "×");
    button.addEventListener("click", () => {
      this.closeShell();
      this.id = null;
      this.element.hidden = true;
    });
    return button;
  }

  commandForm(device) {
    const input = el("input", { name: "command", "aria-label": "Command", placeholder: "e.g. uptime", required: "" });
    const timeout = el("input", {
      name: "timeout", type: "number", min: "1", max: "300", value: String(COMMAND_TIMEOUT),
      "aria-label": "Timeout in seconds", title: "Timeout (s)", class: "timeout",
    });
    const output = el("pre", { class: "output", "aria-live": "polite" });
    const form = el("form", { class: "command" }, input, timeout, el("button", { type: "submit" }, "Run"), output);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      await this.run(device.id, input.value, Number(timeout.value) || COMMAND_TIMEOUT, output);
    });
    return form;
  }

  async run(id, command, timeout, output) {
    output.classList.remove("error");
    const started = Date.now();
    const tick = () => (output.textContent = `$ ${command}\nrunning… ${Math.round((Date.now() - started) / 1000)} s`);
    tick();
    const timer = setInterval(tick, 1000);
    try {
      const result = await runCommand(id, command, timeout);
      output.textContent = `$ ${command}\n${result.output}[exit ${result.exit_code}, ${result.duration.toFixed(2)} s]`;
    } catch (error) {
      report(error, output);
    } finally {
      clearInterval(timer);
    }
  }

  shellButton(device) {
    const button = el("button", { type: "button" }, "Open a shell");
    const box = el("div", { class: "shell" }, button);
    button.addEventListener("click", () => {
      button.remove();
      this.shell = openShell(device.id, box, () => {
        this.shell = null;
      });
    });
    return box;
  }

  closeShell() {
    if (this.shell) this.shell.close();
    this.shell = null;
  }
}
