// Running a job: submitting the form, following the job (its event stream, else polling), cancelling.
import { ApiError, api, jobEvents, postJSON } from "./client.js";
import { $ } from "./dom.js";
import { clearFieldErrors, hideError, showError, showFieldErrors, showRequestError, toast } from "./feedback.js";
import { buildRequest } from "./form.js";
import { refreshGallery } from "./gallery.js";
import { refreshHealth } from "./health.js";
import { setProgress, showLive, showResults, showView } from "./stage.js";
import { state, stats } from "./state.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

let submitting = false;

export async function generate() {
  if (submitting || state.job) return;
  submitting = true;
  hideError();
  clearFieldErrors();
  setBusy(true);
  try {
    const built = await buildRequest();
    if (built.errors) {
      showFieldErrors(built.errors);
      setBusy(false);
      return;
    }
    const job = await postJSON("/jobs", built.body);
    stats.states = [];
    showLive(built.body);
    follow(job.id);
    if (window.matchMedia("(max-width: 760px)").matches) {
      $(".stage").scrollIntoView({ block: "start", behavior: "smooth" });
    }
    refreshGallery();
  } catch (error) {
    showRequestError(error);
    setBusy(false);
  } finally {
    submitting = false;
  }
}

function setBusy(busy) {
  $("#generate").disabled = busy;
  $("#generate").classList.toggle("busy", busy);
  $(".generate-label").textContent = busy ? "Generating…" : "Generate";
  $("#cancel").hidden = !(busy && state.job);
}

export function follow(jobId) {
  stopFollowing();
  state.job = jobId;
  setBusy(true);
  const events = jobEvents(jobId);
  state.events = events;
  events.addEventListener("state", (event) => {
    if (state.events !== events) return;
    onJob(JSON.parse(event.data));
  });
  events.addEventListener("progress", (event) => {
    if (state.events !== events) return;
    onProgress(JSON.parse(event.data));
  });
  events.addEventListener("error", () => {
    // The stream broke before the job ended (a proxy, a restart): follow it by polling instead.
    if (state.events !== events) return;
    events.close();
    state.events = null;
    if (state.job === jobId) poll(jobId, 0);
  });
}

function stopFollowing() {
  if (state.events) state.events.close();
  state.events = null;
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

function poll(jobId, failures) {
  state.pollTimer = setTimeout(async () => {
    if (state.job !== jobId) return;
    try {
      onJob(await api(`/jobs/${jobId}`));
      if (state.job === jobId) poll(jobId, 0);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        finish(null);
        showError(`The job ${jobId.slice(0, 8)} is gone from the server.`);
        return;
      }
      if (failures >= 2) showError(`${error.message} (retrying…)`);
      poll(jobId, failures + 1);
    }
  }, failures ? Math.min(5000, 500 * 2 ** failures) : 400);
}

function onJob(job) {
  stats.states.push(job.state);
  if (job.id !== state.job) return;
  if (TERMINAL.includes(job.state)) {
    finish(job);
    return;
  }
  const p = job.progress || {};
  if (job.state === "queued") setProgress(0, p.total, "queued: waiting for the worker");
  else setProgress(p.step || 0, p.total || 0, p.total ? `step ${p.step || 0} / ${p.total}` : "starting");
  $("#stage-title").textContent = job.state === "queued" ? "Queued" : "Generating";
  $("#cancel").hidden = false;
}

function onProgress(progress) {
  stats.progressEvents += 1;
  setProgress(progress.step, progress.total);
  if (progress.preview) {
    stats.previews += 1;
    const preview = $("#preview");
    preview.src = progress.preview;
    preview.classList.add("shown");
  }
}

function finish(job) {
  stopFollowing();
  state.job = null;
  setBusy(false);
  refreshGallery();
  refreshHealth();
  if (!job) return;
  if (job.state === "succeeded") {
    showResults(job);
    if (Array.isArray(job.warnings) && job.warnings.length) toast(job.warnings.join(" "));
  } else if (job.state === "failed") {
    showView("empty");
    $("#stage-title").textContent = "Failed";
    $("#stage-meta").textContent = "";
    showError(`The job failed: ${job.error || "no reason given"}`);
  } else {
    showView("empty");
    $("#stage-title").textContent = "Cancelled";
    $("#stage-meta").textContent = "";
    toast("Cancelled.");
  }
}

export async function cancel() {
  const jobId = state.job;
  if (!jobId) return;
  $("#cancel").disabled = true;
  try {
    const job = await api(`/jobs/${jobId}`, { method: "DELETE" });
    if (TERMINAL.includes(job.state)) onJob(job);
  } catch (error) {
    showRequestError(error);
  } finally {
    $("#cancel").disabled = false;
  }
}

