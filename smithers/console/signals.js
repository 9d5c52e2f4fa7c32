// Sending a signal to a run: name, correlation id and a JSON payload (submitSignal,
// docs/protocol.md#signalssend--submitsignal). A run waiting for an event pre-fills the form.

import { h, put, errorText, notify, parseInput, field } from "./dom.js";

export function signalForm(ctx, runId) {
  const name = h("input", { type: "text", required: true, autocomplete: "off", "data-testid": "signal-name" });
  const correlation = h("input", { type: "text", autocomplete: "off", placeholder: "optional", "data-testid": "signal-correlation" });
  const payload = h("textarea", { rows: 3, class: "mono", spellcheck: "false", "data-testid": "signal-payload" }, "{}");
  const error = h("p", { class: "error", role: "alert", hidden: true, "data-testid": "signal-error" });
  const result = h("p", { class: "muted small", "aria-live": "polite", "data-testid": "signal-result" });
  const send = h("button", { type: "submit", class: "primary", "data-testid": "signal-send" }, "Send signal");
  let touched = false;
  [name, correlation].forEach((input) => input.addEventListener("input", () => (touched = true)));

  const form = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        error.hidden = true;
        put(result);
        let data;
        try {
          data = parseInput(payload.value, "Payload");
        } catch (err) {
          error.textContent = err.message;
          error.hidden = false;
          return;
        }
        const params = { runId, signalName: name.value.trim(), data };
        if (correlation.value.trim()) params.correlationId = correlation.value.trim();
        send.disabled = true;
        try {
          const sent = await ctx.act("submitSignal", params);
          result.textContent = `Sent “${sent.signalName}” (signal #${sent.seq}).`;
          notify(`Signal ${sent.signalName} sent to ${runId}`);
          touched = false;
        } catch (err) {
          error.textContent = errorText(err);
          error.hidden = false;
        } finally {
          send.disabled = false;
        }
      },
    },
    h("div", { class: "row" }, field("Signal name", name), field("Correlation id", correlation)),
    field("Payload (JSON)", payload),
    error,
    h("div", { class: "actions" }, send),
    result,
  );
  const el = h("details", { class: "panel", "data-testid": "signal-form" }, h("summary", { "data-testid": "signal-open" }, "Send a signal"), form);
  return {
    el,
    /** Fill in what the run waits for, unless the user typed something already. */
    prefill(wait) {
      if (touched || !wait) return;
      if (wait.signalName) name.value = wait.signalName;
      correlation.value = wait.correlationId || "";
      el.open = true;
    },
  };
}
