// difflab serve: the browser UI. ES modules, no build step, no external assets; they talk to the
// same-origin REST API under /api/v1 (the session cookie goes along; no token ever lives here).
// This module wires the page's controls, binds Ctrl+Enter and starts up; the others, one idea each:
//   client.js    the API: fetch helpers, errors, the 401 redirect, a job's event stream
//   state.js     what the page knows (also window.difflab, for tests)
//   dom.js       small DOM helpers
//   feedback.js  the error banner, the toast, messages next to form fields
//   health.js    the server status in the top bar
//   form.js      the settings form: the server's options, a recipe into it, the request from it
//   modes.js     img2img / inpaint / outpaint and their input image
//   mask.js      the inpainting mask brush
//   jobs.js      running a job: submit, follow (events, else polling), cancel
//   stage.js     the middle panel: live preview, progress, results
//   gallery.js   the history panel
//   recipe.js    the recipe dialog, recipes read from PNGs
//   drop.js      drag and drop
//   (login.js is the login page's own script.)
import { $, $$, flash } from "./dom.js";
import { setupDrop } from "./drop.js";
import { hideError, showError, toast } from "./feedback.js";
import { applyRecipe, clampExamples, loadOptions, onModelChange, setValue } from "./form.js";
import { refreshGallery } from "./gallery.js";
import { refreshHealth } from "./health.js";
import { cancel, follow, generate } from "./jobs.js";
import { setupBrush } from "./mask.js";
import { layoutFrame, sendTo, setMode, setSource } from "./modes.js";
import { loadRecipeFile } from "./recipe.js";
import { showLive, showResults, showView } from "./stage.js";
import { state } from "./state.js";

function setup() {
  $("#form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!$("#recipe").open) generate();
    }
  });
  $("#cancel").addEventListener("click", cancel);
  $("#error-close").addEventListener("click", hideError);
  $("#model").addEventListener("change", onModelChange);
  for (const tab of $$(".tabs [role=tab]")) tab.addEventListener("click", () => setMode(tab.dataset.mode));
  $("#seed-random").addEventListener("click", () => { $("#seed").value = ""; flash($("#seed")); });
  $("#seed-reuse").addEventListener("click", () => {
    if (state.lastSeed == null) {
      toast("No result yet to take a seed from.");
      return;
    }
    setValue("seed", state.lastSeed);
  });
  $("#strength").addEventListener("input", () => {
    $("#strength-value").textContent = Number($("#strength").value).toFixed(2);
  });
  for (const id of ["out-left", "out-right", "out-top", "out-bottom"]) $(`#${id}`).addEventListener("input", layoutFrame);
  $("#image-input").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) await setSource(file, file.name);
    event.target.value = "";
  });
  $("#dropzone").addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && !state.source) {
      event.preventDefault();
      $("#image-input").click();
    }
  });
  $("#dropzone-empty").addEventListener("click", (event) => {
    if (event.target.tagName !== "LABEL") $("#image-input").click();
  });
  $("#load-recipe").addEventListener("click", () => $("#recipe-input").click());
  $("#recipe-input").addEventListener("change", async (event) => {
    await loadRecipeFile(event.target.files[0]);
    event.target.value = "";
  });
  $("#history-refresh").addEventListener("click", refreshGallery);
  $("#examples-more").addEventListener("click", () => {
    const more = $("#examples-more");
    more.dataset.open = more.dataset.open === "true" ? "false" : "true";
    clampExamples();
  });
  window.addEventListener("resize", () => { if ($("#examples-more").dataset.open !== "true") clampExamples(); });

  const dialog = $("#recipe");
  $("#recipe-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
  $("#use-settings").addEventListener("click", () => {
    const recipe = state.dialog && state.dialog.recipe;
    dialog.close();
    applyRecipe(recipe);
    if (recipe && recipe.image && state.mode === "txt2img") {
      toast("Settings loaded. This was an edit: its input image is not stored in the recipe.");
    } else {
      toast("Settings loaded into the form.");
    }
  });
  $("#send-img2img").addEventListener("click", () => state.dialog && sendTo("img2img", state.dialog.url, state.dialog.recipe));
  $("#send-inpaint").addEventListener("click", () => state.dialog && sendTo("inpaint", state.dialog.url, state.dialog.recipe));

  setupBrush();
  setupDrop();
}

async function start() {
  setup();
  setMode("txt2img");
  refreshHealth();
  setInterval(() => { if (!document.hidden) refreshHealth(); }, 10000);
  try {
    await loadOptions();
  } catch (error) {
    showError(`Cannot load the server's models: ${error.message}`);
  }
  const jobs = await refreshGallery();
  // Pick up where the page left off: follow a job still in flight, or show the newest result.
  const active = jobs.find((job) => job.state === "running") || jobs.find((job) => job.state === "queued");
  const done = jobs.find((job) => job.state === "succeeded");
  if (done) {
    showResults(done);
  } else {
    showView("empty");
  }
  if (active && !state.job) {
    showLive(active.request);
    follow(active.id);
  }
}

start();
