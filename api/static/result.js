// The result panel: the job being followed (its progress bar, then its image, large, with the
// parameters it ran with) or an image picked in the gallery.

import { fromApi, showImage } from "./api.js";
import { formatBytes, formatTime, h, humanize } from "./dom.js";
import { FINAL } from "./watch.js";

const LEAD = ["workflow", "width", "height", "steps", "cfg", "seed"];

export class ResultView {
  constructor(root, { onReuse, onCancel }) {
    this.root = root;
    this.el = {
      badge: root.querySelector("#job-status"),
      bar: root.querySelector("#progress"),
      fill: root.querySelector("#progress .fill"),
      label: root.querySelector("#progress-label"),
      stage: root.querySelector("#stage"),
      image: root.querySelector("#result-image"),
      empty: root.querySelector("#stage-empty"),
      thumbs: root.querySelector("#result-thumbs"),
      prompt: root.querySelector("#result-prompt"),
      params: root.querySelector("#result-params"),
      reuse: root.querySelector("#reuse"),
      open: root.querySelector("#open-image"),
      download: root.querySelector("#download-image"),
      cancel: root.querySelector("#cancel-job"),
    };
    this.job = null;
    this.selected = 0;
    this.el.reuse.addEventListener("click", () => this.job && onReuse(this.job));
    this.el.cancel.addEventListener("click", () => this.job && onCancel(this.job));
    this.el.image.addEventListener("load", () => this.root.classList.remove("loading-image"));
  }

  /** Show a job (a status answer, or the 202 of a submit) and every later state of it. */
  showJob(job) {
    const fresh = !this.job || this.job.job_id !== job.job_id;
    this.job = job;
    if (fresh) this.selected = 0;
    const { badge, label } = this.el;
    this.root.dataset.status = job.status;
    this.root.dataset.jobId = job.job_id;
    badge.hidden = false;
    badge.textContent = job.status;
    badge.className = `badge status-${job.status}`;
    const percent = Math.round((job.progress || 0) * 100);
    this.#progress(job.status === "completed" ? 100 : percent, describe(job));
    label.textContent = describe(job);
    this.el.cancel.hidden = FINAL.has(job.status);
    this.el.reuse.hidden = !job.parameters;
    this.#images(job.images || [], job.prompt, job.status);
    this.#details(job);
    document.title =
      job.status === "processing" || job.status === "queued"
        ? `${percent}% · comfy-sidecar`
        : "comfy-sidecar";
  }

  /** Show an output file picked in the gallery (no job parameters come with it). */
  showFile(item) {
    this.job = null;
    this.root.dataset.status = "file";
    delete this.root.dataset.jobId;
    this.el.badge.hidden = false;
    this.el.badge.textContent = "output";
    this.el.badge.className = "badge status-file";
    this.#progress(0, "");
    this.el.bar.hidden = true;
    this.el.label.textContent = `Showing ${item.name} from the gallery.`;
    this.el.cancel.hidden = true;
    this.el.reuse.hidden = true;
    this.#images([{ url: item.url, name: item.name }], item.name, "completed");
    this.el.prompt.hidden = true;
    this.#rows([
      ["File", item.name],
      ["Size", formatBytes(item.size)],
      ["Saved", formatTime(item.modified)],
    ]);
    this.el.stage.scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  #progress(percent, text) {
    const { bar, fill } = this.el;
    bar.hidden = false;
    bar.setAttribute("aria-valuenow", String(percent));
    bar.setAttribute("aria-valuetext", text || `${percent}%`);
    fill.style.width = `${percent}%`;
  }

  #images(images, alt, status) {
    const { image, empty, thumbs, open, download } = this.el;
    const saved = images.filter((i) => (i.type ?? "output") === "output");
    const list = saved.length ? saved : images;
    const chosen = list[Math.min(this.selected, list.length - 1)];
    if (chosen) {
      if (image.dataset.want !== fromApi(chosen.url)) {
        this.root.classList.add("loading-image");
        showImage(image, chosen.url);
        showImage(open, chosen.url, "href");
        showImage(download, chosen.url, "href");
      }
      image.alt = alt ? `Generated image: ${alt}` : "Generated image";
      image.hidden = false;
      empty.hidden = true;
      download.setAttribute("download", (chosen.name || "image.png").split("/").pop());
      open.hidden = download.hidden = false;
    } else {
      image.hidden = true;
      image.removeAttribute("src");
      delete image.dataset.want;
      empty.hidden = false;
      empty.textContent = emptyText(status);
      open.hidden = download.hidden = true;
    }
    thumbs.replaceChildren();
    thumbs.hidden = list.length < 2;
    if (list.length > 1) {
      list.forEach((item, index) => {
        thumbs.append(
          h(
            "button",
            {
              type: "button",
              class: "thumb",
              "aria-label": `Image ${index + 1} of ${list.length}`,
              "aria-pressed": String(item === chosen),
              onclick: () => {
                this.selected = index;
                this.#images(images, alt, status);
              },
            },
            thumbnail(item.url, ""),
          ),
        );
      });
    }
  }

  #details(job) {
    const { prompt } = this.el;
    prompt.hidden = !job.prompt;
    prompt.textContent = job.prompt || "";
    const params = { workflow: job.workflow, ...(job.parameters || {}) };
    delete params.prompt;
    const rows = [];
    if (params.width && params.height) {
      rows.push(["Size", `${params.width} × ${params.height}`]);
    }
    const names = [
      ...LEAD.filter((n) => n in params),
      ...Object.keys(params).filter((n) => !LEAD.includes(n)),
    ];
    for (const name of names) {
      if (name === "width" || name === "height") continue;
      const value = params[name];
      if (value === null || value === undefined || value === "") continue;
      rows.push([humanize(name), formatValue(value)]);
    }
    if (job.started_at && job.finished_at) {
      const seconds = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
      if (Number.isFinite(seconds)) rows.push(["Time", `${seconds.toFixed(1)} s`]);
    }
    for (const [name, reason] of Object.entries(job.ignored_fields || {})) {
      rows.push([`${humanize(name)} (ignored)`, String(reason)]);
    }
    this.#rows(rows);
  }

  #rows(rows) {
    this.el.params.replaceChildren(
      ...rows.map(([term, value]) =>
        h(
          "div",
          { class: chipClass(String(value)) },
          h("dt", {}, term),
          h("dd", {}, value),
        ),
      ),
    );
  }
}

export function describe(job) {
  switch (job.status) {
    case "queued":
      if (job.queue_position) return `Queued — position ${job.queue_position} in ComfyUI's queue`;
      return "Queued — waiting for ComfyUI";
    case "processing": {
      const percent = Math.round((job.progress || 0) * 100);
      if (job.total_steps) return `Step ${job.current_step || 0} of ${job.total_steps} · ${percent}%`;
      return `Processing · ${percent}%`;
    }
    case "completed": {
      const seconds = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
      return Number.isFinite(seconds) ? `Completed in ${seconds.toFixed(1)} s` : "Completed";
    }
    case "cancelled":
      return "Cancelled";
    case "failed":
      return `Failed: ${job.error || "unknown error"}`;
    default:
      return job.status;
  }
}

function emptyText(status) {
  if (status === "failed") return "No image: the job failed.";
  if (status === "cancelled") return "No image: the job was cancelled.";
  if (status === "completed") return "The job finished without an image.";
  return "The image appears here when the job is done.";
}

function formatValue(value) {
  if (Array.isArray(value)) {
    return value
      .map((v) => (typeof v === "object" && v ? `${v.name}:${v.strength ?? 1}` : String(v)))
      .join(", ");
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function chipClass(text) {
  if (text.length > 26) return "param wide";
  if (text.length > 11) return "param span-2";
  return "param";
}

function thumbnail(href, alt) {
  const img = h("img", { alt, loading: "lazy", decoding: "async" });
  showImage(img, href);
  return img;
}
