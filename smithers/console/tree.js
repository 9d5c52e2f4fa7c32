// The DevTools tree: a snapshot, deltas applied to it (docs/protocol.md#streamdevtools), and its
// drawing, with each node's state and a link to the node's own page.

import { h, badge } from "./dom.js";

export class TreeModel {
  constructor() {
    this.root = null;
    this.seq = null;
    this.runState = null;
    this.index = new Map(); // DevTools id -> node
    this.parents = new Map(); // DevTools id -> parent node
  }

  snapshot(snapshot) {
    this.root = structuredClone(snapshot.root);
    this.seq = snapshot.seq;
    this.runState = snapshot.runState || null;
    this.reindex();
  }

  /** Apply a delta; false when it does not fit what is held (the caller then asks for a snapshot). */
  applyDelta(delta) {
    if (this.root === null || delta.baseSeq !== this.seq) return false;
    for (const op of delta.ops || []) {
      if (!this.apply(op)) return false;
    }
    this.seq = delta.seq;
    return true;
  }

  apply(op) {
    switch (op.op) {
      case "replaceRoot":
        this.root = structuredClone(op.node);
        this.reindex();
        return true;
      case "removeNode": {
        const parent = this.parents.get(op.id);
        const node = this.index.get(op.id);
        if (!parent || !node) return false;
        parent.children = parent.children.filter((child) => child.id !== op.id);
        this.forget(node);
        return true;
      }
      case "addNode": {
        const parent = this.index.get(op.parentId);
        if (!parent) return false;
        const node = structuredClone(op.node);
        parent.children = parent.children || [];
        parent.children.splice(Math.min(op.index, parent.children.length), 0, node);
        this.remember(node, parent);
        return true;
      }
      case "updateProps": {
        const node = this.index.get(op.id);
        if (!node) return false;
        node.props = op.props || {};
        return true;
      }
      case "updateTask": {
        const node = this.index.get(op.id);
        if (!node) return false;
        if ("task" in op && op.task) node.task = op.task;
        else delete node.task;
        return true;
      }
      default:
        return false;
    }
  }

  reindex() {
    this.index.clear();
    this.parents.clear();
    if (this.root) this.remember(this.root, null);
  }

  remember(node, parent) {
    this.index.set(node.id, node);
    if (parent) this.parents.set(node.id, parent);
    for (const child of node.children || []) this.remember(child, node);
  }

  forget(node) {
    this.index.delete(node.id);
    this.parents.delete(node.id);
    for (const child of node.children || []) this.forget(child);
  }
}

/** The engine node id of a DevTools node, for the nodes that have one. */
export function engineNodeId(node) {
  if (node.task && node.task.nodeId) return node.task.nodeId;
  if (["wait-for-event", "timer", "approval"].includes(node.type) && node.props && typeof node.props.id === "string") return node.props.id;
  return null;
}

/** The wait-for-event node with this engine id (signal name and correlation id in its props). */
export function findWait(root, nodeId) {
  const stack = root ? [root] : [];
  while (stack.length) {
    const node = stack.pop();
    if (node.type === "wait-for-event" && engineNodeId(node) === nodeId) return node;
    stack.push(...(node.children || []));
  }
  return null;
}

/**
 * Draw a tree. `states` maps engine node ids to states, `selected` is the selected engine node id,
 * `hrefFor(nodeId)` makes a node's link.
 */
export function renderTree(root, { states, selected, hrefFor }) {
  if (!root) return h("p", { class: "muted" }, "No tree yet.");
  return h("ul", { role: "tree", class: "tree", "data-testid": "tree", "aria-label": "Workflow tree" }, item(root, { states, selected, hrefFor }));
}

function item(node, opts) {
  const nodeId = engineNodeId(node);
  const state = nodeId ? opts.states.get(nodeId) : null;
  const children = node.children || [];
  const props = node.props || {};
  const kind = node.task && node.task.kind === "static" && props.kind === "approval" ? "approval" : node.type;
  let label;
  if (nodeId) {
    const text = (node.task && node.task.label) || props.title || props.label;
    label = h(
      "a",
      { href: opts.hrefFor(nodeId), class: "node-link mono", "data-testid": "tree-node-link", "aria-current": nodeId === opts.selected ? "true" : null },
      nodeId,
    );
    if (text && text !== nodeId) label = [label, h("span", { class: "muted" }, ` ${text}`)];
  } else {
    const extra = [];
    if (node.depth === 0) extra.push(node.name);
    if (typeof props.id === "string") extra.push(props.id);
    if (kind === "loop" && props.iteration !== undefined) extra.push(`iteration ${props.iteration}${props.done ? ", done" : ""}`);
    if (kind === "branch" && props.condition !== undefined) extra.push(`condition ${props.condition}`);
    label = h("span", { class: "muted" }, extra.join(" · "));
  }
  return h(
    "li",
    {
      role: "treeitem",
      "aria-expanded": children.length ? "true" : null,
      "aria-selected": nodeId && nodeId === opts.selected ? "true" : "false",
      "data-testid": "tree-node",
      "data-node-id": nodeId,
      "data-type": kind,
      "data-state": state,
    },
    h("div", { class: `node-line${nodeId && nodeId === opts.selected ? " selected" : ""}` }, h("span", { class: `kind k-${kind}` }, kind), label, state ? badge(state, "node-state") : null),
    children.length ? h("ul", { role: "group" }, children.map((child) => item(child, opts))) : null,
  );
}
