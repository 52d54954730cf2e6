// The settings form: the server's models and samplers in it, a recipe read into it, and the job
// request built from it (checked here first, the messages next to their fields).
import { api, postFile } from "./client.js";
import { $, $$, el, flash } from "./dom.js";
import { clearFieldErrors } from "./feedback.js";
import { maskPNG } from "./mask.js";
import { layoutFrame, outpaintMargins, setMode, updateOutpaintSize } from "./modes.js";
import { state } from "./state.js";

// ----- the server's options --------------------------------------------------------------------
function currentModel() {
  return state.models.find((m) => m.name === $("#model").value) || state.models[0] || null;
}

export async function loadOptions() {
  const [models, samplers] = await Promise.all([api("/models"), api("/samplers")]);
  state.models = models.models || [];
  state.samplers = samplers.samplers || [];
  state.spacings = samplers.spacings || [];
  const modelSelect = $("#model");
  modelSelect.replaceChildren(...state.models.map((m) => el("option", { value: m.name }, m.name)));
  const preferred = state.models.find((m) => m.default) || state.models[0];
  if (preferred) modelSelect.value = preferred.name;
  $("#spacing").replaceChildren(
    el("option", { value: "" }, "default"),
    ...state.spacings.map((s) => el("option", { value: s }, s)));
  onModelChange();
}

export function onModelChange() {
  const model = currentModel();
  if (!model) return;
  const d = model.defaults || {};
  const sampler = $("#sampler");
  const chosen = sampler.value;
  sampler.replaceChildren(
    el("option", { value: "" }, d.sampler ? `default (${d.sampler})` : "default"),
    ...state.samplers.map((s) => el("option", { value: s }, s)));
  sampler.value = state.samplers.includes(chosen) ? chosen : "";
  $("#spacing").options[0].textContent = d.spacing ? `default (${d.spacing})` : "default";
  $("#steps").placeholder = d.steps != null ? String(d.steps) : "default";
  $("#guidance").placeholder = d.guidance_scale != null ? String(d.guidance_scale) : "default";
  $("#steps").title = `Sampling steps (empty: the model's default, ${d.steps})`;
  $("#guidance").title = `Classifier-free guidance scale (empty: the model's default, ${d.guidance_scale})`;
  for (const id of ["width", "height"]) {
    $(`#${id}`).placeholder = String(model.resolution);
    $(`#${id}`).step = String(model.size_multiple);
    $(`#${id}`).min = String(model.size_multiple);
  }
  for (const id of ["out-left", "out-right", "out-top", "out-bottom"]) $(`#${id}`).step = String(model.size_multiple);
  const examples = $("#examples");
  examples.replaceChildren(...(model.examples || []).map((text) => {
    const chip = el("button", { type: "button", className: "chip", title: "Use this prompt" }, text);
    chip.addEventListener("click", () => {
      $("#prompt").value = text;
      flash($("#prompt"));
      $("#prompt").focus();
    });
    return chip;
  }));
  clampExamples();
  updateOutpaintSize();
  setMedia(model);
}

/** A video or audio model makes clips from a prompt at its own size: no edit modes, no width or height. */
function setMedia(model) {
  const media = model.media || "image";
  document.body.dataset.media = media;
  for (const tab of $$(".tabs [role=tab]")) {
    if (tab.dataset.mode !== "txt2img") tab.disabled = media !== "image";
  }
  if (media !== "image" && state.mode !== "txt2img") setMode("txt2img");
  for (const field of $$(".size-field input")) {
    field.disabled = media !== "image" || state.mode !== "txt2img";
    if (media !== "image") field.value = "";
  }
  const what = { video: "the clip", audio: "the sound" }[media] || "what to draw";
  $("#prompt").placeholder = `Describe ${what}… (Ctrl+Enter to generate)`;
}

/** Two rows of example chips, and a toggle for the rest. */
export function clampExamples() {
  const examples = $("#examples");
  const more = $("#examples-more");
  examples.classList.add("clamped");
  const overflowing = examples.scrollHeight > examples.clientHeight + 2;
  examples.classList.toggle("clamped", overflowing && more.dataset.open !== "true");
  more.hidden = !overflowing;
  more.textContent = more.dataset.open === "true" ? "fewer examples" : "more examples";
}

// ----- a recipe into the form ---------------------------------------------------------------------
export function setValue(id, value) {
  const input = $(`#${id}`);
  const text = value == null ? "" : String(value);
  if (input.value !== text) {
    input.value = text;
    flash(input);
  }
}

export function applyRecipe(recipe) {
  if (!recipe) return;
  setValue("prompt", recipe.prompt ?? "");
  setValue("negative", recipe.negative_prompt ?? "");
  if (recipe.model && state.models.some((m) => m.name === recipe.model)) {
    setValue("model", recipe.model);
    onModelChange();
  }
  if (recipe.sampler != null) setValue("sampler", state.samplers.includes(recipe.sampler) ? recipe.sampler : "");
  if (recipe.spacing != null) setValue("spacing", state.spacings.includes(recipe.spacing) ? recipe.spacing : "");
  if (recipe.steps != null) setValue("steps", recipe.steps);
  if (recipe.guidance_scale != null) setValue("guidance", recipe.guidance_scale);
  if (recipe.seed != null) setValue("seed", recipe.seed);
  const sized = ((currentModel() || {}).media || "image") === "image";   // a clip or a sound has its model's size
  if (sized && recipe.width != null) setValue("width", recipe.width);
  if (sized && recipe.height != null) setValue("height", recipe.height);
  if (recipe.strength != null) {
    setValue("strength", recipe.strength);
    $("#strength-value").textContent = Number(recipe.strength).toFixed(2);
  }
  if (recipe.mask_blur != null) setValue("mask-blur", recipe.mask_blur);
  if (Array.isArray(recipe.outpaint) && recipe.outpaint.length === 4) {
    ["out-left", "out-right", "out-top", "out-bottom"].forEach((id, i) => setValue(id, recipe.outpaint[i]));
    layoutFrame();
  }
  clearFieldErrors();
}

// ----- the request ---------------------------------------------------------------------------------
function numberField(id, field, errors, { integer = false, min = null } = {}) {
  const raw = $(`#${id}`).value.trim();
  const input = $(`#${id}`);
  if (raw === "") {
    if (input.validity && input.validity.badInput) errors.push([field, `${field} must be a number`]);
    return null;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    errors.push([field, `${field} must be ${integer ? "an integer" : "a number"}, got ${raw}`]);
    return null;
  }
  if (min != null && value < min) {
    errors.push([field, `${field} must be >= ${min}, got ${raw}`]);
    return null;
  }
  return value;
}

export async function buildRequest() {
  const errors = [];
  const model = currentModel();
  const body = { prompt: $("#prompt").value };
  if (!body.prompt.trim()) errors.push(["prompt", "Write a prompt: what should the image show?"]);
  const negative = $("#negative").value;
  body.negative_prompt = negative.trim() ? negative : null;
  body.model = $("#model").value || null;
  body.sampler = $("#sampler").value || null;
  body.spacing = $("#spacing").value || null;
  body.steps = numberField("steps", "steps", errors, { integer: true, min: 1 });
  body.guidance_scale = numberField("guidance", "guidance_scale", errors, { min: 0 });
  body.seed = numberField("seed", "seed", errors, { integer: true, min: 0 });
  if (body.seed != null && body.seed > Number.MAX_SAFE_INTEGER) {
    errors.push(["seed", `a browser keeps seeds exactly only up to ${Number.MAX_SAFE_INTEGER}`]);
  }
  body.num_images = numberField("num-images", "num_images", errors, { integer: true, min: 1 }) ?? 1;

  if (state.mode === "txt2img") {
    for (const side of ["width", "height"]) {
      const value = numberField(side, side, errors, { integer: true, min: 1 });
      if (value != null && model && value % model.size_multiple) {
        errors.push([side, `${side} must be a multiple of ${model.size_multiple} for ${model.name}`]);
      }
      body[side] = value;
    }
  } else {
    if (!state.source) {
      errors.push(["image", "Choose or drop an input image first (or send a result here from the gallery)."]);
    } else {
      body.image = state.source.id;
    }
    if (state.mode === "img2img") body.strength = Number($("#strength").value);
    if (state.mode === "inpaint") {
      body.mask_blur = numberField("mask-blur", "mask_blur", errors, { min: 0 }) ?? 0;
      if (state.source && !state.maskPainted) errors.push(["mask", "Paint the part of the image to regenerate."]);
    }
    if (state.mode === "outpaint") {
      const margins = outpaintMargins();
      if (!margins.every((m) => Number.isInteger(m) && m >= 0)) {
        errors.push(["outpaint", "Margins must be whole numbers of pixels >= 0."]);
      } else if (!margins.some((m) => m > 0)) {
        errors.push(["outpaint", "Add pixels on at least one side."]);
      }
      body.outpaint = margins;
    }
  }
  if (errors.length) return { errors };
  if (state.mode === "inpaint") {
    const { blob, count } = await maskPNG();
    if (!count) return { errors: [["mask", "Paint the part of the image to regenerate."]] };
    const uploaded = await postFile("/uploads", blob, "mask.png");
    body.mask = uploaded.id;
  }
  return { body };
}
