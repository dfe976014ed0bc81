// The queue, system and gallery panels. Each refreshes itself on a timer while the page is
// visible, and on demand after something the user did.

import { ApiError, get, request, showImage } from "./api.js";
import { formatBytes, formatTime, h, icon } from "./dom.js";

/**
 * Runs fn now and every `ms` while the page is visible. Returns refresh(), which runs it at
 * once (or right after the run in flight, so a refresh asked for mid-run is not lost).
 */
function every(ms, fn) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    clearTimeout(timer);
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await fn();
    } finally {
      running = false;
    }
    if (again) {
      again = false;
      run();
      return;
    }
    if (!document.hidden) timer = setTimeout(run, ms);
  };
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) run();
    else clearTimeout(timer);
  });
  run();
  return run;
}

export class QueuePanel {
  constructor(root, { onCancel, onOpen }) {
    this.list = root.querySelector("#queue-list");
    this.summary = root.querySelector("#queue-summary");
    this.clearButton = root.querySelector("#queue-clear");
    this.onCancel = onCancel;
    this.onOpen = onOpen;
    this.clearButton.addEventListener("click", () => this.#clear());
    this.refresh = every(2500, () => this.#load());
  }

  async #load() {
    let body;
    try {
      body = await get("api/queue");
    } catch (error) {
      this.summary.textContent = `Queue unavailable: ${error.message}`;
      return;
    }
    const jobs = Object.values(body.jobs || {}).sort(byPosition);
    const running = body.queue.queue_running.length;
    const pending = body.queue.queue_pending.length;
    const ours = new Set(jobs.map((j) => j.prompt_id));
    const others = [...body.queue.queue_running, ...body.queue.queue_pending].filter(
      (item) => !ours.has(item[1]),
    ).length;
    const parts = [`ComfyUI: ${running} running, ${pending} waiting`];
    if (others) parts.push(`${others} from other ComfyUI clients`);
    if (body.comfyui !== "connected") parts.push("ComfyUI unreachable");
    this.summary.textContent = parts.join(" · ");
    this.clearButton.disabled = !jobs.some((j) => j.status === "queued");
    if (!jobs.length) {
      this.list.replaceChildren(h("li", { class: "empty" }, "Nothing queued."));
      return;
    }
    // Rows are rebuilt only when their content changes, so focus stays on a cancel button.
    const existing = new Map([...this.list.children].map((li) => [li.dataset.jobId, li]));
    const rows = jobs.map((job) => {
      const key = rowKey(job);
      const old = existing.get(job.job_id);
      if (old && old.dataset.key === key) return old;
      const fresh = this.#row(job, key);
      if (old && old.contains(document.activeElement)) {
        queueMicrotask(() => fresh.querySelector(".cancel")?.focus());
      }
      return fresh;
    });
    this.list.replaceChildren(...rows);
  }

  #row(job, key) {
    const percent = Math.round((job.progress || 0) * 100);
    const where =
      job.status === "processing"
        ? `Running · ${percent}%`
        : job.queue_position
          ? `#${job.queue_position} in queue`
          : "Waiting for ComfyUI";
    const cancel = h(
      "button",
      {
        type: "button",
        class: "btn btn-danger cancel",
        "aria-label": `Cancel job: ${job.prompt}`,
      },
      icon("x"),
      h("span", { class: "btn-text" }, "Cancel"),
    );
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      await this.onCancel(job);
      this.refresh();
    });
    const open = h(
      "button",
      {
        type: "button",
        class: "linkish prompt",
        title: job.prompt,
        "aria-label": `Show job: ${job.prompt}`,
      },
      job.prompt || "(no prompt)",
    );
    open.addEventListener("click", () => this.onOpen(job));
    return h(
      "li",
      { class: `job status-${job.status}`, "data-job-id": job.job_id, "data-key": key },
      h("span", { class: "dot", "aria-hidden": "true" }),
      open,
      h("span", { class: "job-meta", title: job.workflow }, where),
      cancel,
      h(
        "div",
        { class: "mini-bar", "aria-hidden": "true" },
        h("div", { class: "fill", style: { width: `${percent}%` } }),
      ),
    );
  }

  async #clear() {
    if (!window.confirm("Cancel every waiting job of this sidecar? The running one goes on.")) {
      return;
    }
    try {
      await request("POST", "api/queue/clear", {});
    } catch (error) {
      this.summary.textContent = `Could not clear the queue: ${error.message}`;
    }
    this.refresh();
  }
}

function byPosition(a, b) {
  const rank = (j) => (j.status === "processing" ? -1 : (j.queue_position ?? 1e9));
  return rank(a) - rank(b);
}

function rowKey(job) {
  return [job.status, Math.round((job.progress || 0) * 100), job.queue_position].join("/");
}

export class SystemPanel {
  constructor(root, header, { onModels }) {
    this.list = root.querySelector("#system-list");
    this.templates = root.querySelector("#system-templates");
    this.header = header;
    this.onModels = onModels;
    every(10000, () => this.#health());
    this.refresh = every(20000, () => this.#system());
  }

  async #health() {
    const pill = this.header;
    let state;
    let text;
    try {
      const body = await get("api/health");
      state = "ok";
      text = body.tracker?.websocket === "connected" ? "connected" : "connected, tracker reconnecting";
    } catch (error) {
      state = error.status === 503 ? "down" : "unknown";
      text =
        error.status === 503
          ? "not responding"
          : error.status === 0
            ? "unknown: the sidecar is unreachable"
            : `unknown: ${error.message}`;
    }
    pill.className = `pill health-${state}`;
    pill.querySelector(".pill-text").textContent = text;
    this.health = { state, text };
    this.#row("Health", `ComfyUI ${text}`, `health-${state}`);
  }

  async #system() {
    let body;
    try {
      body = await get("api/system");
    } catch (error) {
      this.#row("GPU", error instanceof ApiError && error.status === 503 ? "—" : error.message);
      return;
    }
    const device = (body.devices || [])[0];
    if (device) {
      this.#row("GPU", deviceName(device));
      if (device.vram) {
        const memory = device.type === "cpu" ? "Memory" : "VRAM";
        const used = device.vram_used ?? device.vram - device.vram_free;
        const share = Math.min(100, Math.max(0, (used / device.vram) * 100));
        this.#row(
          "VRAM",
          h(
            "div",
            { class: "meter-wrap" },
            h(
              "div",
              {
                class: "meter",
                role: "meter",
                "aria-valuemin": "0",
                "aria-valuemax": String(Math.round(device.vram)),
                "aria-valuenow": String(Math.round(used)),
                "aria-label": `${memory} used`,
              },
              h("div", { class: "fill", style: { width: `${share.toFixed(1)}%` } }),
            ),
            h(
              "span",
              { class: "meter-text" },
              `${mb(used)} used · ${mb(device.vram_free)} free of ${mb(device.vram)}`,
            ),
          ),
          "",
          memory,
        );
      }
    } else {
      this.#row("GPU", "none reported");
    }
    const versions = body.versions || {};
    this.#row("ComfyUI", versions.comfyui || "unknown version");
    this.#row("Sidecar", versions.sidecar || "");
    if (versions.pytorch) this.#row("PyTorch", versions.pytorch);
    this.onModels(body.models || {});
    this.templates.replaceChildren(
      ...Object.entries(body.templates || {}).map(([name, info]) => {
        const missing = (info.missing || []).map(fileName);
        const text = info.ready
          ? "ready"
          : missing.length
            ? `missing ${missing.length} model file${missing.length > 1 ? "s" : ""}`
            : "not checked";
        const row = [
          h("span", { class: "dot", "aria-hidden": "true" }),
          h("span", { class: "template-name" }, name),
          h("span", { class: "template-state" }, text),
        ];
        if (!missing.length) {
          const className = info.ready ? "ready" : "not-ready";
          return h("li", { class: className }, h("div", { class: "template-row" }, ...row));
        }
        // The file list opens on demand: a box without models lists a dozen of them.
        return h(
          "li",
          { class: "not-ready" },
          h(
            "details",
            {},
            h("summary", { class: "template-row" }, ...row),
            h("ul", { class: "missing" }, ...missing.map((file) => h("li", {}, file))),
          ),
        );
      }),
    );
  }

  #row(term, value, className = "", label = term) {
    let row = [...this.list.children].find((el) => el.dataset.term === term);
    if (!row) {
      row = h("div", { class: "sys-row", "data-term": term }, h("dt", {}, term), h("dd"));
      const order = ["Health", "GPU", "VRAM", "ComfyUI", "Sidecar", "PyTorch"];
      const after = [...this.list.children].find(
        (el) => order.indexOf(el.dataset.term) > order.indexOf(term),
      );
      this.list.insertBefore(row, after || null);
    }
    row.querySelector("dt").textContent = label;
    const dd = row.querySelector("dd");
    dd.className = className;
    dd.replaceChildren(value instanceof Node ? value : document.createTextNode(value));
  }
}

function deviceName(device) {
  // "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync" -> "NVIDIA GeForce RTX 4090"
  const name = String(device.name || device.type || "unknown")
    .replace(/^\w+:\d+\s+/, "")
    .replace(/\s+:\s+\w+$/, "");
  return device.type === "cpu" ? "None (ComfyUI runs on the CPU)" : name;
}

function mb(value) {
  if (value == null) return "?";
  return value >= 1024 ? `${(value / 1024).toFixed(1)} GB` : `${Math.round(value)} MB`;
}

function fileName(item) {
  if (typeof item === "string") return item;
  return item.file ? `${item.folder ? `${item.folder}/` : ""}${item.file}` : JSON.stringify(item);
}

export class Gallery {
  constructor(root, { onOpen }) {
    this.grid = root.querySelector("#gallery-grid");
    this.status = root.querySelector("#gallery-status");
    this.prev = root.querySelector("#gallery-prev");
    this.next = root.querySelector("#gallery-next");
    this.onOpen = onOpen;
    this.limit = this.#pageSize();
    this.offset = 0;
    this.prev.addEventListener("click", () => this.load(Math.max(0, this.offset - this.limit)));
    this.next.addEventListener("click", () => this.load(this.offset + this.limit));
    root.querySelector("#gallery-refresh").addEventListener("click", () => this.load(this.offset));
    this.load(0);
  }

  /** Two full rows of tiles on a wide screen, four on a phone. */
  #pageSize() {
    const style = getComputedStyle(this.grid);
    const columns = style.gridTemplateColumns.split(" ").filter(Boolean).length || 4;
    return Math.min(40, columns * (columns <= 4 ? 4 : 2));
  }

  async load(offset) {
    let body;
    try {
      body = await get(`api/outputs?limit=${this.limit}&offset=${offset}`);
    } catch (error) {
      this.status.textContent = `Gallery unavailable: ${error.message}`;
      return;
    }
    this.offset = offset;
    const items = body.items || [];
    this.grid.replaceChildren(
      ...items.map((item) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: "tile",
              title: `${item.name} · ${formatBytes(item.size)} · ${formatTime(item.modified)}`,
              onclick: () => this.onOpen(item),
            },
            tileImage(item),
          ),
        ),
      ),
    );
    const total = body.total ?? items.length;
    this.status.textContent = items.length
      ? `${offset + 1}–${offset + items.length} of ${total}`
      : total
        ? `Nothing past ${total} images`
        : "No images yet: generate one above.";
    this.prev.disabled = offset === 0;
    this.next.disabled = body.next_offset == null;
  }
}

function tileImage(item) {
  const img = h("img", { alt: item.name, loading: "lazy", decoding: "async" });
  showImage(img, item.url);
  return img;
}
