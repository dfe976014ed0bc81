// Following one job: the server-sent event stream GET api/status/<id>/events (read with
// EventSource, or with fetch when an API key must go along, which EventSource cannot send),
// and when that is not available (a proxy that breaks streams, the worker's cap of open streams
// reached) long polls of GET api/status/<id>?wait=25&since=<version>.

import { apiKey, authHeaders, get, parseJson, url } from "./api.js";
import { sleep } from "./dom.js";

export const FINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * Calls onJob(job) with the job on start and after every change, until it is final. Returns
 * {stop(), mode} where mode is "stream" or "poll". onError(error) hears why watching gave up.
 */
export function watchJob(jobId, { onJob, onError = () => {} }) {
  const id = encodeURIComponent(jobId);
  const controller = new AbortController();
  let stopped = false;
  let source = null;
  let version = null;
  const handle = { stop, mode: "stream" };

  function stop() {
    stopped = true;
    if (source) source.close();
    controller.abort();
  }

  function deliver(job) {
    if (stopped) return;
    version = job.version;
    if (FINAL.has(job.status)) stop();
    onJob(job);
  }

  function stream() {
    source = new EventSource(url(`api/status/${id}/events`));
    for (const kind of ["snapshot", "update", "end"]) {
      source.addEventListener(kind, (event) => deliver(parseJson(event.data)));
    }
    source.onerror = () => {
      if (stopped) return;
      // The stream is gone before the job ended: keep following it by long polls.
      source.close();
      source = null;
      poll();
    };
  }

  async function fetchStream() {
    let reader;
    try {
      const response = await fetch(url(`api/status/${id}/events`), {
        headers: { Accept: "text/event-stream", ...authHeaders() },
        signal: controller.signal,
      });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      while (!stopped) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end = buffer.indexOf("\n\n");
        while (end >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event) deliver(event);
          end = buffer.indexOf("\n\n");
        }
      }
    } catch {
      // Falls through to long polls below.
    }
    if (!stopped) poll();
  }

  async function poll() {
    handle.mode = "poll";
    let waiting = true;
    while (!stopped) {
      const query = version === null ? "" : waiting ? `?wait=25&since=${version}` : "";
      try {
        deliver(await get(`api/status/${id}${query}`, { signal: controller.signal }));
        if (!waiting) await sleep(1500);
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        if (error.status === 404) {
          stop();
          onError(error);
          return;
        }
        // 429: this worker holds as many waits as it may; ask again without waiting.
        if (error.status === 429) waiting = false;
        await sleep((error.retryAfter || 2) * 1000);
      }
    }
  }

  if (apiKey.get()) fetchStream();
  else if (typeof window.EventSource === "function") stream();
  else poll();
  return handle;
}


/** One server-sent event block: the job it carries, or null for comments and other events. */
function parseEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (!data.length || !["snapshot", "update", "end"].includes(kind)) return null;
  return parseJson(data.join("\n"));
}
