// The page's entry point: loads the workflows, builds the form, submits jobs and follows them,
// and wires the queue, system and gallery panels together.

import { ApiError, apiKey, get, request, toJson } from "./api.js";
import { h, icon } from "./dom.js";
import { ParamForm } from "./form.js";
import { Gallery, QueuePanel, SystemPanel } from "./panels.js";
import { ResultView } from "./result.js";
import { FINAL, watchJob } from "./watch.js";

const $ = (selector) => document.querySelector(selector);
const STORED_WORKFLOW = "comfy-sidecar.workflow";

const state = { workflows: [], details: new Map(), watcher: null };

const alerts = $("#alerts");
const formEl = $("#generate-form");
const workflowSelect = $("#workflow");
const workflowHelp = $("#workflow-help");
const submitButton = $("#submit");
const form = new ParamForm($("#fields"));

const result = new ResultView($("#result"), {
  onReuse: (job) => reuse(job),
  onCancel: (job) => cancel(job),
});
const queue = new QueuePanel($("#queue"), {
  onCancel: (job) => cancel(job),
  onOpen: (job) => follow(job.job_id),
});
const gallery = new Gallery($("#gallery"), { onOpen: (item) => result.showFile(item) });
new SystemPanel($("#system"), $("#health"), {
  onModels: (models) => form.setLoraNames(models.loras || []),
});

// --- alerts ---------------------------------------------------------------------------------

function showError(error, title) {
  const problems = error instanceof ApiError ? error.problems : [];
  const requestId = error instanceof ApiError ? error.body.request_id : null;
  const dismiss = h(
    "button",
    { type: "button", class: "btn icon-btn", "aria-label": "Dismiss this message" },
    icon("x"),
  );
  // ComfyUI's rejections join one sentence per problem into `error`; a list reads better.
  const listed = problems.length > 1;
  const lead = listed ? `${error.message.split(": ")[0]}:` : error.message;
  const box = h(
    "div",
    { class: "alert" },
    h(
      "div",
      { class: "alert-body" },
      title ? h("strong", {}, title) : null,
      h("p", {}, lead),
      listed ? h("ul", {}, ...problems.map((p) => h("li", {}, p))) : null,
      requestId ? h("p", { class: "muted small" }, `Request id ${requestId}`) : null,
    ),
    dismiss,
  );
  dismiss.addEventListener("click", () => {
    box.remove();
    submitButton.focus();
  });
  alerts.replaceChildren(box);
}

function clearAlerts() {
  alerts.replaceChildren();
}

// --- workflows and the form -----------------------------------------------------------------

async function loadWorkflows() {
  let body;
  try {
    body = await get("api/workflows");
  } catch (error) {
    showError(error, "Could not load the workflows");
    return;
  }
  state.workflows = body.workflows || [];
  const stored = localStorage.getItem(STORED_WORKFLOW);
  const chosen = state.workflows.includes(stored) ? stored : body.default;
  workflowSelect.replaceChildren(
    ...state.workflows.map((name) =>
      h("option", { value: name }, name === body.default ? `${name} (default)` : name),
    ),
  );
  if (chosen && state.workflows.includes(chosen)) workflowSelect.value = chosen;
  await selectWorkflow(workflowSelect.value);
}

async function workflowDetail(name) {
  if (!state.details.has(name)) {
    state.details.set(name, await get(`api/workflows/${encodeURIComponent(name)}`));
  }
  return state.details.get(name);
}

async function selectWorkflow(name) {
  if (!name) return;
  formEl.setAttribute("aria-busy", "true");
  try {
    const detail = await workflowDetail(name);
    workflowSelect.value = name;
    workflowHelp.textContent = detail.description || "";
    form.render(detail);
    localStorage.setItem(STORED_WORKFLOW, name);
  } catch (error) {
    showError(error, `Could not load the workflow ${name}`);
  } finally {
    formEl.removeAttribute("aria-busy");
  }
}

workflowSelect.addEventListener("change", () => selectWorkflow(workflowSelect.value));

async function reuse(job) {
  if (job.workflow && job.workflow !== workflowSelect.value) await selectWorkflow(job.workflow);
  form.fill(job.parameters || {});
  $("#create").scrollIntoView({ block: "start", behavior: "smooth" });
  $("#f-prompt")?.focus({ preventScroll: true });
}

// --- submitting and following a job ---------------------------------------------------------

formEl.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearAlerts();
  const { body, invalid } = form.values();
  if (invalid) {
    invalid.focus();
    return;
  }
  body.workflow = workflowSelect.value;
  submitButton.disabled = true;
  submitButton.classList.add("busy");
  try {
    const { data } = await request("POST", "api/generate", toJson(body));
    form.showSeed(data.seed);
    follow(data.job_id, { ...data, progress: 0, images: [] });
    queue.refresh();
  } catch (error) {
    const field = error instanceof ApiError ? error.field : null;
    showError(error, error.status === 422 ? "ComfyUI cannot run this workflow" : null);
    if (field) form.markInvalid(field, error.message);
  } finally {
    submitButton.disabled = false;
    submitButton.classList.remove("busy");
  }
});

formEl.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    formEl.requestSubmit();
  }
});

/** Show a job in the result panel and follow it until it ends. */
function follow(jobId, first = null) {
  if (state.watcher) state.watcher.stop();
  if (first) result.showJob(first);
  state.watcher = watchJob(jobId, {
    onJob: (job) => {
      result.showJob(job);
      if (FINAL.has(job.status)) {
        queue.refresh();
        // The output listing trails the disk by up to half a second.
        if (job.status === "completed" && gallery.offset === 0) {
          setTimeout(() => gallery.offset === 0 && gallery.load(0), 1200);
        }
      }
    },
    onError: (error) => showError(error, "Lost track of the job"),
  });
}

async function cancel(job) {
  try {
    await request("DELETE", `api/queue/${encodeURIComponent(job.job_id)}`);
  } catch (error) {
    // 409: it finished meanwhile; the panels catch up on their own.
    if (error.status !== 409) showError(error, "Could not cancel the job");
  }
  queue.refresh();
}

// --- API key --------------------------------------------------------------------------------

const keyPanel = $("#key-panel");
window.addEventListener("sidecar:unauthorized", () => {
  if (!keyPanel.hidden) return;
  if (apiKey.get()) $("#key-title").textContent = "The stored API key was refused: enter another";
  keyPanel.hidden = false;
  $("#api-key").focus();
});
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey.set($("#api-key").value.trim());
  window.location.reload();
});
if (apiKey.get()) {
  $("#key-status").hidden = false;
  $("#key-forget").addEventListener("click", () => {
    apiKey.set("");
    window.location.reload();
  });
}

// --- start ----------------------------------------------------------------------------------

async function showLatestJob() {
  try {
    const { jobs } = await get("api/jobs?limit=1");
    if (jobs?.length && !state.watcher) follow(jobs[0].job_id);
  } catch {
    // An empty result panel is fine.
  }
}

// data-ready tells scripted browsers (and the tests) that the first load is done.
Promise.allSettled([loadWorkflows(), showLatestJob()]).then(() => {
  document.body.dataset.ready = "true";
});
