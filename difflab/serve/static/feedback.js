// Telling the user what happened: the error banner, the toast, messages next to form fields.
import { ApiError, fieldOf } from "./client.js";
import { $, $$, el } from "./dom.js";

// Request fields -> the form control next to which a 422 names them.
const FIELD_INPUTS = {
  prompt: "prompt", negative_prompt: "negative", num_images: "num-images", seed: "seed", steps: "steps",
  sampler: "sampler", guidance_scale: "guidance", spacing: "spacing", width: "width", height: "height",
  model: "model", image: "dropzone", mask: "mask-canvas", strength: "strength", outpaint: "out-left",
  mask_blur: "mask-blur",
};

export function showError(message) {
  $("#error-text").textContent = message;
  $("#error").hidden = false;
}

export function hideError() {
  $("#error").hidden = true;
}

let toastTimer = null;
export function toast(message, action) {
  const box = $("#toast");
  box.replaceChildren(document.createTextNode(message));
  if (action) {
    const button = el("button", { type: "button", className: "link" }, action.label);
    button.addEventListener("click", () => { box.hidden = true; action.run(); });
    box.append(" ", button);
  }
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, action ? 7000 : 3500);
}

export function clearFieldErrors() {
  $$(".field-error").forEach((p) => { p.hidden = true; p.textContent = ""; });
  $$("[aria-invalid]").forEach((input) => input.removeAttribute("aria-invalid"));
}

/** Show a message next to a request field; false if that field has no visible place here. */
export function showFieldError(field, message) {
  const box = document.getElementById(`err-${field}`);
  if (!box || (box.parentElement && box.parentElement.closest("[hidden]"))) return false;
  box.textContent = message;
  box.hidden = false;
  const input = document.getElementById(FIELD_INPUTS[field] || field);
  if (input) input.setAttribute("aria-invalid", "true");
  return true;
}

export function showFieldErrors(errors) {
  let first = null;
  const rest = [];
  for (const [field, message] of errors) {
    if (showFieldError(field, message)) first = first || field;
    else rest.push(field ? `${field}: ${message}` : message);
  }
  if (rest.length) showError(rest.join("; "));
  if (first) {
    const input = document.getElementById(FIELD_INPUTS[first] || first);
    const box = document.getElementById(`err-${first}`);
    (box || input).scrollIntoView({ block: "nearest", behavior: "smooth" });
    if (input && typeof input.focus === "function") input.focus({ preventScroll: true });
  }
}

/** A failed API call: a 422 next to its fields, anything else in the banner. */
export function showRequestError(error) {
  if (error instanceof ApiError && error.status === 422 && error.body && Array.isArray(error.body.detail)) {
    showFieldErrors(error.body.detail.map((d) => [fieldOf(d), d.msg]));
  } else if (error instanceof ApiError && error.status === 429) {
    showError(error.message.charAt(0).toUpperCase() + error.message.slice(1));
  } else {
    showError(error.message || String(error));
  }
}
