// The history panel: the server's recent jobs as thumbnails, newest first.
import { ApiError, api } from "./client.js";
import { $, el } from "./dom.js";
import { openRecipe } from "./recipe.js";

function modeOf(request) {
  if (!request || !request.image) return "txt2img";
  if (request.mask) return "inpaint";
  if (request.outpaint) return "outpaint";
  return "img2img";
}

let galleryLoading = null;

export function refreshGallery() {
  if (galleryLoading) return galleryLoading;
  galleryLoading = (async () => {
    try {
      const { jobs } = await api("/jobs?limit=50");
      renderGallery(jobs || []);
      return jobs || [];
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) {
        $("#gallery").replaceChildren(el("p", { className: "muted small" }, `History unavailable: ${error.message}`));
      }
      return [];
    } finally {
      galleryLoading = null;
    }
  })();
  return galleryLoading;
}

function renderGallery(jobs) {
  const gallery = $("#gallery");
  const tiles = [];
  for (const job of jobs) {
    const mode = modeOf(job.request);
    const prompt = (job.request && job.request.prompt) || "";
    if (job.state === "succeeded") {
      for (const image of job.images || []) {
        const tile = el("button", { type: "button", className: "thumb", title: prompt, dataset: { job: job.id } },
          el("img", { src: image.url, alt: prompt, loading: "lazy", width: 64, height: 64 }),
          mode !== "txt2img" ? el("span", { className: "badge" }, mode) : null);
        tile.addEventListener("click", () => openRecipe(image));
        tiles.push(tile);
      }
    } else {
      const label = job.state === "failed" ? "failed" : job.state === "cancelled" ? "cancelled" : job.state;
      const tile = el("div", {
        className: `thumb placeholder ${job.state}`, title: job.error ? `${prompt}\n${job.error}` : prompt,
      }, el("span", {}, label));
      tiles.push(tile);
    }
  }
  $("#history-count").textContent = tiles.length ? String(tiles.length) : "";
  $("#history-count").title = `${jobs.length} job(s), ${tiles.length} tile(s)`;
  if (!tiles.length) {
    gallery.replaceChildren(el("p", { className: "muted small" }, "No images yet. Results land here, newest first."));
  } else {
    gallery.replaceChildren(...tiles);
  }
}
