// The edit modes (img2img, inpaint, outpaint) and their input image: uploading it, laying it out
// in its frame with the outpainting margins, sending a result here from the stage or the dialog.
import { ApiError, postFile } from "./client.js";
import { $, $$ } from "./dom.js";
import { clearFieldErrors, showError, showFieldError, showRequestError, toast } from "./feedback.js";
import { clearMask } from "./mask.js";
import { state } from "./state.js";

export function setMode(mode) {
  state.mode = mode;
  for (const tab of $$(".tabs [role=tab]")) tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
  const editing = mode !== "txt2img";
  $("#edit").hidden = !editing;
  for (const group of $$(".mode-only")) group.hidden = !group.dataset.modes.split(" ").includes(mode);
  for (const field of $$(".size-field input")) field.disabled = editing;
  $("#size-hint").hidden = !editing;
  document.body.dataset.mode = mode;
  clearFieldErrors();
  layoutFrame();
}

export async function setSource(blob, name) {
  $("#err-image").hidden = true;
  let uploaded;
  try {
    uploaded = await postFile("/uploads", blob, name);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 422 && showFieldError("image", error.message))) {
      showRequestError(error);
    }
    return false;
  }
  if (state.source && state.source.url) URL.revokeObjectURL(state.source.url);
  state.source = { ...uploaded, url: URL.createObjectURL(blob), name: name || "image" };
  const image = $("#source-image");
  image.src = state.source.url;
  const canvas = $("#mask-canvas");
  canvas.width = uploaded.width;
  canvas.height = uploaded.height;
  clearMask();
  $("#frame").hidden = false;
  $("#dropzone-empty").hidden = true;
  $("#dropzone").classList.add("has-image");
  $("#source-info").textContent = `${state.source.name} · ${uploaded.width}×${uploaded.height}`;
  layoutFrame();
  return true;
}

/** Place the image (and mask) in the frame: the frame is the output; outpainting adds margins. */
export function layoutFrame() {
  const source = state.source;
  const frame = $("#frame");
  if (!source) return;
  const margins = state.mode === "outpaint" ? outpaintMargins() : [0, 0, 0, 0];
  const [left, right, top, bottom] = margins.map((m) => (Number.isFinite(m) && m > 0 ? m : 0));
  const outW = source.width + left + right;
  const outH = source.height + top + bottom;
  const ratio = outW / outH;
  frame.style.aspectRatio = `${outW} / ${outH}`;
  frame.style.width = `min(100%, ${Math.round(260 * ratio)}px)`;
  frame.classList.toggle("outpainting", state.mode === "outpaint");
  for (const node of [$("#source-image"), $("#mask-canvas")]) {
    node.style.left = `${(100 * left) / outW}%`;
    node.style.top = `${(100 * top) / outH}%`;
    node.style.width = `${(100 * source.width) / outW}%`;
    node.style.height = `${(100 * source.height) / outH}%`;
  }
  $("#mask-canvas").hidden = state.mode !== "inpaint";
  updateOutpaintSize();
}

export function outpaintMargins() {
  return ["out-left", "out-right", "out-top", "out-bottom"].map((id) => {
    const value = $(`#${id}`).value.trim();
    return value === "" ? 0 : Number(value);
  });
}

export function updateOutpaintSize() {
  const hint = $("#outpaint-size");
  const [l, r, t, b] = outpaintMargins();
  if (!state.source) {
    hint.textContent = "New pixels on each side of the input image.";
  } else if ([l, r, t, b].every(Number.isFinite)) {
    hint.textContent = `Output: ${state.source.width + l + r} × ${state.source.height + t + b} px ` +
      `(input ${state.source.width} × ${state.source.height}).`;
  }
}

export async function sendTo(mode, url, recipe) {
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`cannot fetch ${url} (HTTP ${response.status})`);
    const blob = await response.blob();
    setMode(mode);
    const name = recipe && recipe.seed != null ? `result, seed ${recipe.seed}` : "result";
    const ok = await setSource(blob, name);
    if (!ok) return;
    if (recipe) {
      if (recipe.prompt != null && !$("#prompt").value.trim()) $("#prompt").value = recipe.prompt;
      if (recipe.model && state.models.some((m) => m.name === recipe.model)) $("#model").value = recipe.model;
    }
    $("#recipe").open && $("#recipe").close();
    $("#edit").scrollIntoView({ block: "nearest", behavior: "smooth" });
    toast(mode === "inpaint" ? "Sent to inpaint: paint the part to regenerate." : "Sent to image to image.");
  } catch (error) {
    showError(error.message || String(error));
  }
}
