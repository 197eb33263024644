// "Roll out an update to the selection": the devices that pass the page's filters (the
// selected device if there is no filter), through the rollouts API (POST /rollouts).
import { createRollout } from "./api.js";
import { report } from "./problem.js";

const FIELDS = [
  ["version", "Version", "e.g. 2.1.0", "text"],
  ["artifact_url", "Artifact URL", "http://…", "url"],
  ["checksum", "SHA-256", "64 hex digits", "text"],
  ["size", "Size (bytes)", "size in bytes", "number"],
];

export function rolloutForm(selection) {
  const form = document.createElement("form");
  form.className = "rollout";
  const inputs = {};
  for (const [name, label, placeholder, type] of FIELDS) {
    const input = document.createElement("input");
    Object.assign(input, { name, type, placeholder, required: true });
    input.setAttribute("aria-label", label);
    inputs[name] = input;
    form.append(input);
  }
  const ids = selection();
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = `Roll out to ${ids.length} device${ids.length === 1 ? "" : "s"}`;
  const line = document.createElement("p");
  line.setAttribute("role", "status");
  form.append(button, line);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    line.classList.remove("error");
    const devices = selection();
    try {
      const rollout = await createRollout({
        version: inputs.version.value,
        artifact_url: inputs.artifact_url.value,
        checksum: inputs.checksum.value,
        size: Number(inputs.size.value),
        selector: { devices },
      });
      line.textContent = `Rollout ${rollout.id} started for ${rollout.total} devices: GET /rollouts/${rollout.id} follows it.`;
    } catch (error) {
      report(error, line);
    }
  });
  return form;
}
