// The stage, the page's middle panel: empty, a job's live preview and progress, or its results.
import { $, el } from "./dom.js";
import { sendTo } from "./modes.js";
import { openRecipe } from "./recipe.js";
import { state } from "./state.js";

const fmt = (x) => (x == null ? "" : String(x));

export function showView(name) {
  $("#stage-empty").hidden = name !== "empty";
  $("#live").hidden = name !== "live";
  $("#results").hidden = name !== "results";
}

export function showLive(request) {
  const preview = $("#preview");
  preview.removeAttribute("src");
  preview.classList.remove("shown");
  setProgress(0, request && request.steps ? request.steps : 0, "queued");
  $("#stage-title").textContent = "Generating";
  $("#stage-meta").textContent = request ? request.prompt : "";
  showView("live");
}

export function setProgress(step, total, label) {
  const fraction = total ? Math.min(1, step / total) : 0;
  $("#progress-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
  $("#progress").setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
  $("#progress-text").textContent = label || `step ${step} / ${total}`;
}

export function showResults(job) {
  const images = job.images || [];
  const results = $("#results");
  const cols = images.length <= 1 ? 1 : images.length <= 4 ? 2 : images.length <= 9 ? 3 : 4;
  results.dataset.count = String(images.length);
  results.style.setProperty("--cols", String(cols));
  results.style.setProperty("--rows", String(Math.max(1, Math.ceil(images.length / cols))));
  results.classList.toggle("dense", cols > 2);
  results.replaceChildren(...images.map((image) => resultFigure(image)));
  const first = images[0] && images[0].recipe;
  if (first && first.seed != null) state.lastSeed = first.seed;
  const seconds = job.finished && job.started ? (job.finished - job.started).toFixed(1) : null;
  const media = (images[0] && images[0].media) || "image";
  const noun = { image: "images", video: "clips", audio: "sounds" }[media] || "results";
  $("#stage-title").textContent = images.length > 1 ? `${images.length} ${noun}` : "Result";
  $("#stage-meta").textContent = [
    first && media === "image" ? `${first.width}×${first.height}` : null,
    first ? `${first.sampler}, ${first.steps} steps` : null,
    seconds ? `${seconds} s` : null,
  ].filter(Boolean).join(" · ");
  showView(images.length ? "results" : "empty");
}

function resultFigure(image) {
  const recipe = image.recipe || {};
  const media = image.media || "image";
  const open = el("button", { type: "button", className: "result-open", title: "Show the recipe" },
    el("img", { src: image.url, alt: recipe.prompt || "result", width: recipe.width || 32, height: recipe.height || 32 }));
  open.addEventListener("click", () => openRecipe(image));
  const actions = [];
  if (media === "image") {
    const toImg = el("button", { type: "button", className: "small ghost send-img2img", title: "Send to image to image" }, "img2img");
    toImg.addEventListener("click", () => sendTo("img2img", image.url, recipe));
    const toInpaint = el("button", { type: "button", className: "small ghost send-inpaint", title: "Send to inpaint" }, "inpaint");
    toInpaint.addEventListener("click", () => sendTo("inpaint", image.url, recipe));
    actions.push(toImg, toInpaint);
  }
  const kept = image.file_url || image.url;
  const what = { image: "the PNG", video: "the MP4", audio: "the WAV" }[media] || "the file";
  actions.push(el("a", { href: kept, download: image.file || image.name, className: "button small ghost",
    title: `Download ${what} (it carries its recipe)` }, "⤓"));
  // a sound plays under its spectrogram; a clip plays as the animated GIF shown above
  const player = media === "audio" ? el("audio", { controls: true, src: kept, preload: "none", className: "result-audio" }) : null;
  return el("figure", { className: `result ${media}` }, open, player,
    el("figcaption", {},
      el("span", { className: "seed" }, `seed ${fmt(recipe.seed)}`),
      el("span", { className: "result-actions" }, ...actions)));
}
