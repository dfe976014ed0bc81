// Small DOM helpers. Text always goes in as text nodes (textContent), never as HTML: prompts,
// file names and error messages come from users and from ComfyUI.

const SVG = "http://www.w3.org/2000/svg";

/** h("button", {class: "btn", onclick: f, "aria-label": "Close"}, "text", child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "style") {
      // Through the CSSOM: the page's Content-Security-Policy forbids style attributes.
      Object.assign(el.style, value);
    } else if (key === "text") {
      el.textContent = value;
    } else if (key in el && typeof value !== "string") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// Icons drawn with a few strokes each (24x24 grid), so the page needs no icon font or download.
const ICONS = {
  lock: ["M7 11V8a5 5 0 0 1 10 0v3", "rect:5,11,14,10"],
  unlock: ["M7 11V8a5 5 0 0 1 9.6-2", "rect:5,11,14,10"],
  dice: ["rect:4,4,16,16", "dot:9,9", "dot:15,15", "dot:15,9", "dot:9,15", "dot:12,12"],
  x: ["M7 7l10 10M17 7L7 17"],
  reuse: ["M5 12a7 7 0 0 1 12-4.9L19 9", "M19 4v5h-5", "M19 12a7 7 0 0 1-12 4.9L5 15", "M5 20v-5h5"],
  download: ["M12 4v11", "M7 10l5 5 5-5", "M5 20h14"],
  open: ["M14 4h6v6", "M20 4l-9 9", "M18 14v5H5V6h5"],
  left: ["M15 6l-6 6 6 6"],
  right: ["M9 6l6 6-6 6"],
  refresh: ["M19 12a7 7 0 1 1-2.1-5", "M19 4v4h-4"],
  plus: ["M12 5v14M5 12h14"],
  spark: ["M12 3v4M12 17v4M3 12h4M17 12h4M6 6l2.5 2.5M15.5 15.5L18 18M18 6l-2.5 2.5M8.5 15.5L6 18"],
};

export function icon(name) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  svg.classList.add("icon");
  for (const part of ICONS[name] || []) {
    let node;
    if (part.startsWith("rect:")) {
      const [x, y, w, hh] = part.slice(5).split(",");
      node = document.createElementNS(SVG, "rect");
      Object.entries({ x, y, width: w, height: hh, rx: 2.5 }).forEach(([k, v]) =>
        node.setAttribute(k, v),
      );
    } else if (part.startsWith("dot:")) {
      const [cx, cy] = part.slice(4).split(",");
      node = document.createElementNS(SVG, "circle");
      Object.entries({ cx, cy, r: 1.3, class: "fill" }).forEach(([k, v]) => node.setAttribute(k, v));
    } else {
      node = document.createElementNS(SVG, "path");
      node.setAttribute("d", part);
    }
    svg.append(node);
  }
  return svg;
}

export function formatBytes(bytes) {
  if (bytes == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit ? 1 : 0)} ${units[unit]}`;
}

export function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function humanize(name) {
  const special = { cfg: "Guidance (cfg)", lora_strength: "LoRA strength" };
  if (special[name]) return special[name];
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
