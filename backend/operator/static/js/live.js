// The live feed (GET /fleet/live, backend/operator/watch.py): the fleet once, then deltas.
// When it drops, the line at the top says why and the page reconnects by itself, with a
// growing delay; a fresh connection starts again from the whole fleet.
import { request, socketUrl } from "./api.js";
import { clearProblem, report, showProblem } from "./problem.js";

const RETRY_START = 1000;
const RETRY_CAP = 15000;

export class LiveFeed {
  constructor({ onFleet, onDelta }) {
    this.onFleet = onFleet;
    this.onDelta = onDelta;
    this.retry = RETRY_START;
  }

  connect() {
    const ws = new WebSocket(socketUrl("/fleet/live"));
    let opened = false;
    ws.onopen = () => {
      opened = true;
    };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "fleet") {
        this.retry = RETRY_START;
        clearProblem();
        this.onFleet(message);
      } else if (message.type === "delta") {
        this.onDelta(message);
      }
    };
    ws.onclose = (event) => this.lost(event, opened);
  }

  async lost(event, opened) {
    const wait = this.retry;
    this.retry = Math.min(this.retry * 2, RETRY_CAP);
    const again = `reconnecting in ${Math.round(wait / 1000)} s`;
    if (event.code === 1001) {
      showProblem(`The operator API is stopping or restarting: live updates paused, ${again}.`);
    } else if (event.code === 4002) {
      showProblem(`This page fell behind the fleet's changes: ${again} to load it afresh.`);
    } else {
      // A refused upgrade shows the page no status: ask the API why, in a plain request.
      try {
        await request("GET", "/devices?limit=1", { what: "Checking the session" });
        showProblem(`Live updates were interrupted${opened ? "" : " (the feed did not open)"}: ${again}.`);
      } catch (error) {
        report(error);
        if (error.reason === "session_expired") return; // only signing in again helps
      }
    }
    setTimeout(() => this.connect(), wait);
  }
}
