// Calls to the operator API from the page. The session cookie goes with every same-origin
// request; the page never holds a token. Every failure becomes an ApiProblem whose text
// says what happened and what the operator can do about it.

export class ApiProblem extends Error {
  constructor(text, { reason = "", status = 0 } = {}) {
    super(text);
    this.reason = reason; // the API's error token ("offline", "timeout", ...) or "network"
    this.status = status;
  }
}

export const SIGN_IN = "/signin?expired=1";

// What an operator reads for an API error answer (docs/operator.md, "The fleet map").
export function describe(status, body, what) {
  const message = (body && body.message) || `HTTP ${status}`;
  switch (body && body.error) {
    case "session_expired":
      return "Your session has expired: sign in again.";
    case "unauthorized":
      return "You are not signed in (or the API no longer knows your session): sign in again.";
    case "offline":
      return `${message}. Wait for it to reconnect (its mark turns from grey), then try again.`;
    case "timeout":
      return `${what} timed out: ${message}. The device may be busy or on a slow link: ` +
        "try again, with a longer timeout for slow commands.";
    case "not_found":
      return `${message}.`;
    default:
      return `${what} failed: ${message}.`;
  }
}

export async function request(method, path, { body, what = "The request" } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiProblem(
      `The operator API is not reachable (${error.message}): check that it is running; ` +
        "the page retries by itself.",
      { reason: "network" },
    );
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (!response.ok) {
    const reason = (answer && answer.error) || "";
    throw new ApiProblem(describe(response.status, answer, what), {
      reason: reason === "unauthorized" ? "session_expired" : reason,
      status: response.status,
    });
  }
  return answer;
}

export const getDevice = (id) =>
  request("GET", `/devices/${encodeURIComponent(id)}`, { what: `Reading ${id}` });

export const runCommand = (id, command, timeout) =>
  request("POST", `/devices/${encodeURIComponent(id)}/commands`, {
    body: { command, timeout },
    what: `The command on ${id}`,
  });

export const createRollout = (spec) => request("POST", "/rollouts", { body: spec, what: "The rollout" });

export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}
