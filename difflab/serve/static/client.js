// The same-origin REST API under /api/v1: fetch helpers, its errors, the 401 redirect to the login
// page, a job's event stream. The session cookie goes along; no token ever lives in the page.

const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, body, fallback) {
    super(detailText(body) || fallback || `the server answered HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function detailText(body) {
  if (!body) return "";
  if (typeof body === "string") return body.slice(0, 300);
  const detail = body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => (fieldOf(d) ? `${fieldOf(d)}: ${d.msg}` : d.msg)).join("; ");
  }
  return "";
}

/** The request field a 422's detail item names, or null. */
export function fieldOf(item) {
  return item && Array.isArray(item.loc) && item.loc.length > 1 ? String(item.loc[1]) : null;
}

export async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(API + path, { credentials: "same-origin", ...options });
  } catch (error) {
    throw new ApiError(0, null, "The server cannot be reached; is `difflab serve` still running?");
  }
  if (response.status === 401) {
    window.location.assign("/login");
    throw new ApiError(401, null, "Log in first.");
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = text;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export const postJSON = (path, data) =>
  api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(data) });

export function postFile(path, blob, name) {
  const form = new FormData();
  form.append("file", blob, name || "image.png");
  return api(path, { method: "POST", body: form });
}

/** The server-sent events of a job: "state" and "progress". */
export function jobEvents(jobId) {
  return new EventSource(`${API}/jobs/${jobId}/events`);
}
