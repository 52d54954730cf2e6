// Files dragged onto the page: on the input image box of an edit, its new input image; anywhere
// else, a PNG whose recipe goes into the form.
import { $ } from "./dom.js";
import { setSource } from "./modes.js";
import { loadRecipeFile } from "./recipe.js";

export function setupDrop() {
  const overlay = $("#drop-overlay");
  const dropzone = $("#dropzone");
  let depth = 0;
  const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
    overlay.firstElementChild.textContent = $("#edit").hidden
      ? "Drop a PNG to load its recipe"
      : "Drop on the image box to edit it, anywhere else to load its recipe";
  });
  document.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (!depth) overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dropzone.classList.toggle("over", dropzone.contains(event.target));
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    dropzone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (!file) return;
    if (!$("#edit").hidden && dropzone.contains(event.target)) setSource(file, file.name);
    else loadRecipeFile(file);
  });
}
