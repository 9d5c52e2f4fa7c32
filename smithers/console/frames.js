// The frame slider: pick any stored frame of a run to see its tree (getDevToolsSnapshot with
// frameNo), then rewind the run to it (jumpToFrame, after a confirmation) or fork a new run from it
// (runs.fork), for callers allowed to (docs/protocol.md#rewind).

import { h, put, errorText, notify, confirmDialog } from "./dom.js";

export function frameSlider(ctx, runId, { onPick, canRewind, canFork }) {
  let latest = 0;
  let frame = null; // null: the live tree
  const range = h("input", {
    type: "range",
    min: 1,
    max: 1,
    step: 1,
    value: 1,
    "data-testid": "frame-slider",
    "aria-label": "Frame",
    oninput: () => paintLabel(Number(range.value)),
    onchange: () => onPick(Number(range.value)),
  });
  const label = h("span", { class: "frame-label mono", "data-testid": "frame-label", "aria-live": "polite" });
  const prev = h("button", { type: "button", class: "small", "aria-label": "Previous frame", "data-testid": "frame-prev", onclick: () => onPick(Math.max(1, (frame ?? latest) - 1)) }, "◀");
  const next = h("button", { type: "button", class: "small", "aria-label": "Next frame", "data-testid": "frame-next", onclick: () => onPick(Math.min(latest, (frame ?? latest) + 1)) }, "▶");
  const live = h("button", { type: "button", class: "small", "data-testid": "frame-live", onclick: () => onPick(null) }, "Live");
  const actions = h("div", { class: "frame-actions" });
  const el = h("div", { class: "frames", "data-testid": "frames" }, h("label", { class: "small" }, "Frame"), prev, range, next, label, live, actions);

  function paintLabel(value) {
    label.textContent = latest ? (frame === null ? `live · frame ${latest}` : `frame ${value} of ${latest}`) : "no frames yet";
  }

  function paint() {
    el.hidden = latest === 0;
    range.max = String(Math.max(1, latest));
    range.value = String(frame ?? latest);
    prev.disabled = (frame ?? latest) <= 1;
    next.disabled = frame === null || frame >= latest;
    live.disabled = frame === null;
    paintLabel(frame ?? latest);
    const buttons = [];
    if (frame !== null && canRewind()) {
      buttons.push(h("button", { type: "button", class: "danger", "data-testid": "frame-rewind", onclick: () => rewind(frame) }, `Rewind to frame ${frame}`));
    }
    if (frame !== null && canFork()) {
      buttons.push(h("button", { type: "button", "data-testid": "frame-fork", onclick: () => fork(frame) }, `Fork from frame ${frame}`));
    }
    put(actions, buttons);
  }

  async function rewind(frameNo) {
    const sure = await confirmDialog({
      title: `Rewind ${runId} to frame ${frameNo}?`,
      body: h(
        "p",
        {},
        "Everything after this frame is deleted: later attempts, outputs, decisions and frames. ",
        "The run then runs again from there. This cannot be undone.",
      ),
      confirmLabel: "Rewind",
      danger: true,
    });
    if (!sure) return;
    try {
      const result = await ctx.act("jumpToFrame", { runId, frameNo, confirm: true });
      notify(`Rewound to frame ${result.newFrameNo}: ${result.deletedFrames} frames and ${result.deletedAttempts} attempts deleted.`);
      onPick(null);
    } catch (err) {
      notify(`Rewind refused: ${errorText(err)}`, "error");
    }
  }

  async function fork(frameNo) {
    try {
      const result = await ctx.act("runs.fork", { runId, frameNo });
      notify(`Forked ${result.runId} from frame ${frameNo}`);
      ctx.navigate(`/runs/${encodeURIComponent(result.runId)}`);
    } catch (err) {
      notify(`Fork refused: ${errorText(err)}`, "error");
    }
  }

  paint();
  return {
    el,
    setLatest(n) {
      latest = n;
      paint();
    },
    setFrame(n) {
      frame = n;
      paint();
    },
    repaint: paint,
  };
}
