// The one line at the top of the page that says what went wrong and what to do: never a
// blank panel, never a stack trace.
import { SIGN_IN } from "./api.js";

const line = () => document.getElementById("problem");

export function showProblem(text, { signIn = false } = {}) {
  const el = line();
  el.replaceChildren(document.createTextNode(text + " "));
  if (signIn) {
    const link = document.createElement("a");
    link.href = SIGN_IN;
    link.textContent = "Sign in";
    el.append(link);
  }
  el.hidden = false;
}

export function clearProblem() {
  line().hidden = true;
}

// An ApiProblem (or anything thrown) shown where the operator looks: in ``target`` if given,
// and at the top when the session is over.
export function report(error, target) {
  const text = error && error.message ? error.message : String(error);
  const signIn = error && error.reason === "session_expired";
  if (signIn || !target) showProblem(text, { signIn });
  if (target) {
    target.replaceChildren(document.createTextNode(text));
    target.classList.add("error");
  }
}
