// The server's status in the top bar: device, version, queue.
import { api } from "./client.js";
import { $ } from "./dom.js";

export async function refreshHealth() {
  const status = $("#status");
  try {
    const health = await api("/health");
    const q = health.queue || {};
    $("#status-text").textContent =
      `${health.device} · v${health.version} · queue ${q.queued ?? 0}/${q.capacity ?? "?"}` +
      (q.running ? " · running" : "");
    status.dataset.state = q.running || q.queued ? "busy" : "ok";
  } catch (error) {
    $("#status-text").textContent = "offline";
    status.dataset.state = "down";
  }
}
