// The sign-in page: the token is typed here and kept in sessionStorage by the app; the page the
// user asked for (its URL) stays in the address bar and opens once signed in.

import { h } from "./dom.js";

export function signinView({ error, retry, onSubmit }) {
  const input = h("input", {
    id: "token",
    name: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    spellcheck: "false",
    "data-testid": "token-input",
  });
  const button = h("button", { type: "submit", class: "primary", "data-testid": "sign-in" }, "Sign in");
  const form = h(
    "form",
    {
      class: "signin panel",
      "data-testid": "signin",
      onsubmit: (event) => {
        event.preventDefault();
        const token = input.value.trim();
        if (!token) return;
        button.disabled = true;
        button.textContent = "Signing in…";
        onSubmit(token);
      },
    },
    h("h1", {}, "Smithers console"),
    h("p", { class: "muted" }, "Sign in with an access token for this gateway."),
    error ? h("p", { class: "error", role: "alert", "data-testid": "signin-error" }, error) : null,
    h("label", { for: "token" }, "Access token"),
    input,
    h("div", { class: "actions" }, button, retry ? h("button", { type: "button", onclick: retry }, "Try again") : null),
    h(
      "p",
      { class: "muted small" },
      "The token stays in this browser tab (session storage) and is never put in a link. ",
      h("code", {}, "bash scripts/start.sh"),
      " prints one; ",
      h("code", {}, "smithers token issue"),
      " makes more.",
    ),
  );
  queueMicrotask(() => input.focus());
  return h("div", { class: "signin-page" }, form);
}
