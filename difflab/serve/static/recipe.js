// The recipe dialog (what a PNG was made with), and recipes read from PNG files into the form.
import { ApiError, postFile } from "./client.js";
import { $, el } from "./dom.js";
import { hideError, showError, showRequestError, toast } from "./feedback.js";
import { applyRecipe } from "./form.js";
import { state } from "./state.js";

const RECIPE_ROWS = [
  ["prompt", "Prompt"], ["negative_prompt", "Negative prompt"], ["seed", "Seed"], ["steps", "Steps"],
  ["sampler", "Sampler"], ["guidance_scale", "Guidance"], ["guidance_rescale", "Guidance rescale"], ["spacing", "Spacing"], ["size", "Size"],
  ["model", "Model"], ["strength", "Strength"], ["mask_blur", "Mask blur"], ["outpaint", "Outpaint"],
  ["image", "Input image"], ["mask", "Mask"], ["weights", "Weights"], ["difflab", "difflab"],
];

export function openRecipe(image) {
  const recipe = image.recipe || {};
  state.dialog = image;
  const img = $("#recipe-img");
  img.src = image.url;
  img.alt = recipe.prompt || "";
  const rows = [];
  const shown = new Set(["width", "height"]);
  for (const [key, label] of RECIPE_ROWS) {
    let value = key === "size" ? (recipe.width != null ? `${recipe.width} × ${recipe.height}` : null) : recipe[key];
    shown.add(key);
    if (value == null || value === "") continue;
    if (Array.isArray(value)) value = value.join(", ");
    rows.push(el("tr", { dataset: { key } }, el("th", {}, label), el("td", {}, String(value))));
  }
  for (const [key, value] of Object.entries(recipe)) {
    if (shown.has(key) || value == null) continue;
    rows.push(el("tr", { dataset: { key } }, el("th", {}, key),
      el("td", {}, typeof value === "object" ? JSON.stringify(value) : String(value))));
  }
  $("#recipe-table").replaceChildren(el("tbody", {}, ...rows));
  $("#recipe-json").textContent = JSON.stringify(recipe, null, 2);
  $("#recipe-title").replaceChildren("Recipe", image.name ? el("span", { className: "muted small name" }, image.name) : "");
  const download = $("#recipe-download");
  download.href = image.file_url || image.url;             // a clip's MP4, a sound's WAV, else the PNG
  download.download = image.file || image.name || "difflab.png";
  const editable = (image.media || "image") === "image";   // only images go to the edit modes
  const player = $("#recipe-audio");                       // a sound plays under its spectrogram
  player.hidden = image.media !== "audio";
  if (image.media === "audio") player.src = image.file_url;
  else player.removeAttribute("src");
  $("#send-img2img").hidden = $("#send-inpaint").hidden = !editable;
  const dialog = $("#recipe");
  if (!dialog.open) dialog.showModal();
  $("#use-settings").focus();
}

export async function loadRecipeFile(file) {
  if (!file) return;
  hideError();
  try {
    const { recipe } = await postFile("/recipe", file, file.name);
    applyRecipe(recipe);
    const url = URL.createObjectURL(file);
    toast(`Loaded the recipe of ${file.name} into the form.`,
      { label: "View", run: () => openRecipe({ url, name: file.name, recipe }) });
  } catch (error) {
    if (error instanceof ApiError && error.status === 422) showError(`${file.name}: ${error.body.detail.map((d) => d.msg).join("; ")}`);
    else showRequestError(error);
  }
}
