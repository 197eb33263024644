// A shell on the device: xterm.js over the operator API's shell WebSocket
// (GET /devices/{id}/shell, backend/operator/shell.py): binary frames are terminal bytes both
// ways, text frames {"resize": [cols, rows]} from us, {"error", "message"} from the API.
import { getDevice, socketUrl } from "./api.js";
import { report } from "./problem.js";

const { Terminal, FitAddon } = window;
const CLOSES = {
  1000: "The shell ended.",
  1001: "The operator API is stopping: the shell ended. Open it again once the API is back.",
  4100: "The device disconnected: the shell ended. Open it again once the device is back online.",
  4101: "The shell was idle too long and was closed. Open it again to go on.",
};

export function openShell(id, box, onEnd) {
  const screen = document.createElement("div");
  screen.className = "terminal";
  const line = document.createElement("p");
  line.className = "shell-line";
  line.setAttribute("role", "status");
  box.append(screen, line);
  const term = new Terminal({ cols: 80, rows: 20, convertEol: false, fontSize: 13 });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(screen);
  fit.fit();
  const ws = new WebSocket(socketUrl(`/devices/${encodeURIComponent(id)}/shell?cols=${term.cols}&rows=${term.rows}`));
  ws.binaryType = "arraybuffer";
  const encoder = new TextEncoder();
  let opened = false;
  ws.onopen = () => {
    opened = true;
    line.textContent = `Shell on ${id}: type here.`;
    term.focus();
  };
  term.onData((data) => ws.readyState === WebSocket.OPEN && ws.send(encoder.encode(data)));
  term.onResize(({ cols, rows }) => ws.readyState === WebSocket.OPEN && ws.send(JSON.stringify({ resize: [cols, rows] })));
  ws.onmessage = (event) => {
    if (typeof event.data === "string") {
      const problem = JSON.parse(event.data);
      line.textContent = `The shell refused input: ${problem.message}`;
    } else {
      term.write(new Uint8Array(event.data));
    }
  };
  ws.onclose = async (event) => {
    onEnd();
    if (opened) {
      line.textContent = CLOSES[event.code] || `The shell closed (${event.code} ${event.reason}).`;
      return;
    }
    // The upgrade was refused: the browser shows no status, so ask the API why.
    try {
      const device = await getDevice(id);
      line.textContent = device.online
        ? `${id} did not start a shell: try again; if it keeps failing, its shell may be busy.`
        : `${id} is offline: a shell needs it online. Wait for its mark to leave grey, then try again.`;
    } catch (error) {
      report(error, line);
    }
  };
  return { close: () => ws.close(1000), term };
}
