// Talking to the sidecar. Every URL is relative to where the page was loaded from, so the page
// works at /, at /ui/ and under any prefix a proxy puts in front of either: the API lives at
// <prefix>/api/ in every case.

const pageDir = new URL(".", document.baseURI);
const root = pageDir.pathname.endsWith("/ui/") ? new URL("..", pageDir) : pageDir;

/** The absolute URL of an API path such as "api/queue". */
export function url(path) {
  return new URL(path.replace(/^\/+/, ""), root).href;
}

/** A URL the API returned ("/api/image/x.png") as seen from this page. */
export function fromApi(href) {
  if (!href) return href;
  const at = href.indexOf("/api/");
  return at >= 0 ? url(href.slice(at + 1)) : href;
}

// With API_KEYS set on the sidecar every API call needs a key: the page asks for it once
// (the "sidecar:unauthorized" event) and keeps it in this browser's local storage.
const KEY_STORE = "comfy-sidecar.api-key";

export const apiKey = {
  get: () => localStorage.getItem(KEY_STORE) || "",
  set(value) {
    if (value) localStorage.setItem(KEY_STORE, value);
    else localStorage.removeItem(KEY_STORE);
  },
};

export function authHeaders() {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }

  /** One sentence per problem ComfyUI reported (422), beyond the summary in `error`. */
  get problems() {
    const details = this.body.details;
    if (!Array.isArray(details)) return [];
    return details.map((d) => (typeof d === "string" ? d : d?.message)).filter(Boolean);
  }

  get field() {
    const details = this.body.details;
    return details && !Array.isArray(details) && typeof details === "object" ? details.field : null;
  }
}

/** fetch() with JSON in and out; failures become ApiError carrying the API's error body. */
export async function request(method, path, body, { signal } = {}) {
  const init = { method, headers: { Accept: "application/json", ...authHeaders() }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url(path), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { error: "The sidecar is not answering (network error)" });
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? parseJson(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const fallback = { error: `${response.status} ${response.statusText}`.trim() };
    const error = new ApiError(response.status, data && data.error ? data : fallback);
    error.retryAfter = Number(response.headers.get("Retry-After")) || null;
    if (response.status === 401) window.dispatchEvent(new CustomEvent("sidecar:unauthorized"));
    throw error;
  }
  return { data, text, status: response.status };
}

export const get = async (path, options) => (await request("GET", path, undefined, options)).data;

/**
 * JSON for a request body in which integers too large for a JavaScript number (seeds go up to
 * 2^64-1) are given as BigInt and written out digit for digit.
 */
export function toJson(body) {
  const marks = [];
  const text = JSON.stringify(body, (key, value) => {
    if (typeof value === "bigint") {
      marks.push(value.toString());
      return `\u0000big${marks.length - 1}\u0000`;
    }
    return value;
  });
  return text.replace(/"\\u0000big(\d+)\\u0000"/g, (_, i) => marks[Number(i)]);
}

/**
 * JSON.parse, keeping seeds past 2^53 exact (as BigInt) where the browser gives the reviver the
 * number's source text; elsewhere such seeds are rounded, as any JavaScript number would be.
 */
export function parseJson(text) {
  return JSON.parse(text, (key, value, context) =>
    key === "seed" && typeof value === "number" && !Number.isSafeInteger(value) && context?.source
      ? BigInt(context.source)
      : value,
  );
}

// Images: an <img> cannot send the key, so with a key they are fetched and shown from blob:
// URLs (the last few dozen are kept; older ones are released).
const blobs = new Map();
const BLOB_LIMIT = 60;

/** Show the API image `href` in `img` (or set it as `link`'s href). */
export async function showImage(element, href, attribute = "src") {
  const target = fromApi(href);
  element.dataset.want = target;
  if (!apiKey.get()) {
    element.setAttribute(attribute, target);
    return;
  }
  let blobUrl = blobs.get(target);
  if (blobUrl) {
    blobs.delete(target); // most recently used last
    blobs.set(target, blobUrl);
  } else {
    try {
      const response = await fetch(target, { headers: authHeaders() });
      if (!response.ok) return;
      blobUrl = URL.createObjectURL(await response.blob());
    } catch {
      return;
    }
    blobs.set(target, blobUrl);
    if (blobs.size > BLOB_LIMIT) {
      const [oldest, url] = blobs.entries().next().value;
      blobs.delete(oldest);
      URL.revokeObjectURL(url);
    }
  }
  if (element.dataset.want === target) element.setAttribute(attribute, blobUrl);
}
