// difflab serve: the browser UI. Plain script, no build step, no external assets; talks to the
// same-origin REST API under /api/v1 (the session cookie goes along; no token ever lives here).
"use strict";

(() => {
  const API = "/api/v1";
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  if (document.getElementById("login-form")) {
    loginPage();
    return;
  }

  // ----- state ----------------------------------------------------------------------------------
  const state = {
    models: [],
    samplers: [],
    spacings: [],
    mode: "txt2img",
    source: null,        // input image of an edit: {id, width, height, url, name}
    job: null,           // id of the job the stage follows
    events: null,        // its EventSource
    pollTimer: null,
    lastSeed: null,      // seed of the newest result (the ♻ button)
    dialog: null,        // what the recipe dialog shows: {url, name, recipe}
    maskPainted: false,
  };
  // For tests and the curious: counters of what the live view received.
  const stats = { progressEvents: 0, previews: 0, states: [] };
  window.difflab = { state, stats };

  // Request fields -> the form control next to which a 422 names them.
  const FIELD_INPUTS = {
    prompt: "prompt", negative_prompt: "negative", num_images: "num-images", seed: "seed", steps: "steps",
    sampler: "sampler", guidance_scale: "guidance", spacing: "spacing", width: "width", height: "height",
    model: "model", image: "dropzone", mask: "mask-canvas", strength: "strength", outpaint: "out-left",
    mask_blur: "mask-blur",
  };

  // ----- API ------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body, fallback) {
      super(detailText(body) || fallback || `the server answered HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  function detailText(body) {
    if (!body) return "";
    if (typeof body === "string") return body.slice(0, 300);
    const detail = body.detail;
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((d) => (fieldOf(d) ? `${fieldOf(d)}: ${d.msg}` : d.msg)).join("; ");
    }
    return "";
  }

  function fieldOf(item) {
    return item && Array.isArray(item.loc) && item.loc.length > 1 ? String(item.loc[1]) : null;
  }

  async function api(path, options = {}) {
    let response;
    try {
      response = await fetch(API + path, { credentials: "same-origin", ...options });
    } catch (error) {
      throw new ApiError(0, null, "The server cannot be reached; is `difflab serve` still running?");
    }
    if (response.status === 401) {
      window.location.assign("/login");
      throw new ApiError(401, null, "Log in first.");
    }
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = text;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  const postJSON = (path, data) =>
    api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(data) });

  function postFile(path, blob, name) {
    const form = new FormData();
    form.append("file", blob, name || "image.png");
    return api(path, { method: "POST", body: form });
  }

  // ----- feedback: banner, toast, field errors -------------------------------------------------
  function showError(message) {
    $("#error-text").textContent = message;
    $("#error").hidden = false;
  }

  function hideError() {
    $("#error").hidden = true;
  }

  let toastTimer = null;
  function toast(message, action) {
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

  function clearFieldErrors() {
    $$(".field-error").forEach((p) => { p.hidden = true; p.textContent = ""; });
    $$("[aria-invalid]").forEach((input) => input.removeAttribute("aria-invalid"));
  }

  /** Show a message next to a request field; false if that field has no visible place here. */
  function showFieldError(field, message) {
    const box = document.getElementById(`err-${field}`);
    if (!box || (box.parentElement && box.parentElement.closest("[hidden]"))) return false;
    box.textContent = message;
    box.hidden = false;
    const input = document.getElementById(FIELD_INPUTS[field] || field);
    if (input) input.setAttribute("aria-invalid", "true");
    return true;
  }

  function showFieldErrors(errors) {
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

  function showRequestError(error) {
    if (error instanceof ApiError && error.status === 422 && error.body && Array.isArray(error.body.detail)) {
      showFieldErrors(error.body.detail.map((d) => [fieldOf(d), d.msg]));
    } else if (error instanceof ApiError && error.status === 429) {
      showError(error.message.charAt(0).toUpperCase() + error.message.slice(1));
    } else {
      showError(error.message || String(error));
    }
  }

  // ----- small DOM helpers ------------------------------------------------------------------------
  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "dataset") Object.assign(node.dataset, value);
      else if (key in node) node[key] = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child != null) node.append(child);
    }
    return node;
  }

  function flash(input) {
    input.classList.remove("flash");
    void input.offsetWidth; // restart the animation
    input.classList.add("flash");
  }

  const fmt = (x) => (x == null ? "" : String(x));

  // ----- loading the server's options -----------------------------------------------------------
  function currentModel() {
    return state.models.find((m) => m.name === $("#model").value) || state.models[0] || null;
  }

  async function loadOptions() {
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

  function onModelChange() {
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
  }

  /** Two rows of example chips, and a toggle for the rest. */
  function clampExamples() {
    const examples = $("#examples");
    const more = $("#examples-more");
    examples.classList.add("clamped");
    const overflowing = examples.scrollHeight > examples.clientHeight + 2;
    examples.classList.toggle("clamped", overflowing && more.dataset.open !== "true");
    more.hidden = !overflowing;
    more.textContent = more.dataset.open === "true" ? "fewer examples" : "more examples";
  }

  async function refreshHealth() {
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

  // ----- modes and the input image ------------------------------------------------------------------
  function setMode(mode) {
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

  async function setSource(blob, name) {
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
  function layoutFrame() {
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

  function outpaintMargins() {
    return ["out-left", "out-right", "out-top", "out-bottom"].map((id) => {
      const value = $(`#${id}`).value.trim();
      return value === "" ? 0 : Number(value);
    });
  }

  function updateOutpaintSize() {
    const hint = $("#outpaint-size");
    const [l, r, t, b] = outpaintMargins();
    if (!state.source) {
      hint.textContent = "New pixels on each side of the input image.";
    } else if ([l, r, t, b].every(Number.isFinite)) {
      hint.textContent = `Output: ${state.source.width + l + r} × ${state.source.height + t + b} px ` +
        `(input ${state.source.width} × ${state.source.height}).`;
    }
  }

  async function sendTo(mode, url, recipe) {
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

  // ----- the mask brush ------------------------------------------------------------------------------
  function clearMask() {
    const canvas = $("#mask-canvas");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    state.maskPainted = false;
  }

  function invertMask() {
    const canvas = $("#mask-canvas");
    const ctx = canvas.getContext("2d");
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let painted = false;
    for (let i = 0; i < data.data.length; i += 4) {
      const on = data.data[i + 3] < 128;
      data.data[i] = 255; data.data[i + 1] = 64; data.data[i + 2] = 160; data.data[i + 3] = on ? 255 : 0;
      painted = painted || on;
    }
    ctx.putImageData(data, 0, 0);
    state.maskPainted = painted;
  }

  function setupBrush() {
    const canvas = $("#mask-canvas");
    const cursor = $("#brush-cursor");
    let drawing = false;
    let last = null;

    const brushDisplay = () => Number($("#brush").value);
    const toCanvas = (event) => {
      const rect = canvas.getBoundingClientRect();
      return {
        x: ((event.clientX - rect.left) / rect.width) * canvas.width,
        y: ((event.clientY - rect.top) / rect.height) * canvas.height,
        scale: canvas.width / rect.width,
      };
    };
    const stroke = (from, to) => {
      const ctx = canvas.getContext("2d");
      const width = Math.max(1, brushDisplay() * to.scale);
      ctx.strokeStyle = ctx.fillStyle = "rgb(255, 64, 160)";
      ctx.lineWidth = width;
      ctx.lineCap = ctx.lineJoin = "round";
      ctx.beginPath();
      if (from) {
        ctx.moveTo(from.x, from.y);
        ctx.lineTo(to.x, to.y);
        ctx.stroke();
      } else {
        ctx.arc(to.x, to.y, width / 2, 0, Math.PI * 2);
        ctx.fill();
      }
      state.maskPainted = true;
      $("#err-mask").hidden = true;
    };
    const moveCursor = (event) => {
      const frame = $("#frame").getBoundingClientRect();
      const size = brushDisplay();
      cursor.style.width = cursor.style.height = `${size}px`;
      cursor.style.left = `${event.clientX - frame.left - size / 2}px`;
      cursor.style.top = `${event.clientY - frame.top - size / 2}px`;
      cursor.hidden = false;
    };

    canvas.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      drawing = true;
      try { canvas.setPointerCapture(event.pointerId); } catch { /* synthetic pointers */ }
      last = toCanvas(event);
      stroke(null, last);
    });
    canvas.addEventListener("pointermove", (event) => {
      moveCursor(event);
      if (!drawing) return;
      const point = toCanvas(event);
      stroke(last, point);
      last = point;
    });
    const end = () => { drawing = false; last = null; };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", () => { cursor.hidden = true; });
    $("#brush").addEventListener("input", () => { $("#brush-value").textContent = `${$("#brush").value} px`; });
    $("#mask-clear").addEventListener("click", clearMask);
    $("#mask-invert").addEventListener("click", invertMask);
  }

  /** The mask as the server wants it: a black/white PNG of the image's size, white where painted. */
  function maskPNG() {
    const canvas = $("#mask-canvas");
    const painted = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const out = el("canvas", { width: canvas.width, height: canvas.height });
    const ctx = out.getContext("2d");
    const pixels = ctx.createImageData(canvas.width, canvas.height);
    let count = 0;
    for (let i = 0; i < painted.length; i += 4) {
      const value = painted[i + 3] >= 128 ? 255 : 0;
      if (value) count += 1;
      pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = value;
      pixels.data[i + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
    return new Promise((resolve) => out.toBlob((blob) => resolve({ blob, count }), "image/png"));
  }

  // ----- building a request ------------------------------------------------------------------------
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

  async function buildRequest() {
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

  // ----- running a job -------------------------------------------------------------------------------
  let submitting = false;

  async function generate() {
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

  function showView(name) {
    $("#stage-empty").hidden = name !== "empty";
    $("#live").hidden = name !== "live";
    $("#results").hidden = name !== "results";
  }

  function showLive(request) {
    const preview = $("#preview");
    preview.removeAttribute("src");
    preview.classList.remove("shown");
    setProgress(0, request && request.steps ? request.steps : 0, "queued");
    $("#stage-title").textContent = "Generating";
    $("#stage-meta").textContent = request ? request.prompt : "";
    showView("live");
  }

  function setProgress(step, total, label) {
    const fraction = total ? Math.min(1, step / total) : 0;
    $("#progress-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
    $("#progress").setAttribute("aria-valuenow", String(Math.round(fraction * 100)));
    $("#progress-text").textContent = label || `step ${step} / ${total}`;
  }

  function follow(jobId) {
    stopFollowing();
    state.job = jobId;
    setBusy(true);
    const events = new EventSource(`${API}/jobs/${jobId}/events`);
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

  async function cancel() {
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

  // ----- results ---------------------------------------------------------------------------------
  function modeOf(request) {
    if (!request || !request.image) return "txt2img";
    if (request.mask) return "inpaint";
    if (request.outpaint) return "outpaint";
    return "img2img";
  }

  function showResults(job) {
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
    $("#stage-title").textContent = images.length > 1 ? `${images.length} images` : "Result";
    $("#stage-meta").textContent = [
      first ? `${first.width}×${first.height}` : null,
      first ? `${first.sampler}, ${first.steps} steps` : null,
      seconds ? `${seconds} s` : null,
    ].filter(Boolean).join(" · ");
    showView(images.length ? "results" : "empty");
  }

  function resultFigure(image) {
    const recipe = image.recipe || {};
    const open = el("button", { type: "button", className: "result-open", title: "Show the recipe" },
      el("img", { src: image.url, alt: recipe.prompt || "result", width: recipe.width || 32, height: recipe.height || 32 }));
    open.addEventListener("click", () => openRecipe(image));
    const toImg = el("button", { type: "button", className: "small ghost send-img2img", title: "Send to image to image" }, "img2img");
    toImg.addEventListener("click", () => sendTo("img2img", image.url, recipe));
    const toInpaint = el("button", { type: "button", className: "small ghost send-inpaint", title: "Send to inpaint" }, "inpaint");
    toInpaint.addEventListener("click", () => sendTo("inpaint", image.url, recipe));
    const download = el("a", { href: image.url, download: image.name, className: "button small ghost", title: "Download the PNG (it carries its recipe)" }, "⤓");
    return el("figure", { className: "result" }, open,
      el("figcaption", {},
        el("span", { className: "seed" }, `seed ${fmt(recipe.seed)}`),
        el("span", { className: "result-actions" }, toImg, toInpaint, download)));
  }

  // ----- the gallery ---------------------------------------------------------------------------------
  let galleryLoading = null;

  function refreshGallery() {
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

  // ----- the recipe dialog -------------------------------------------------------------------------
  const RECIPE_ROWS = [
    ["prompt", "Prompt"], ["negative_prompt", "Negative prompt"], ["seed", "Seed"], ["steps", "Steps"],
    ["sampler", "Sampler"], ["guidance_scale", "Guidance"], ["guidance_rescale", "Guidance rescale"], ["spacing", "Spacing"], ["size", "Size"],
    ["model", "Model"], ["strength", "Strength"], ["mask_blur", "Mask blur"], ["outpaint", "Outpaint"],
    ["image", "Input image"], ["mask", "Mask"], ["weights", "Weights"], ["difflab", "difflab"],
  ];

  function openRecipe(image) {
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
    download.href = image.url;
    download.download = image.name || "difflab.png";
    const dialog = $("#recipe");
    if (!dialog.open) dialog.showModal();
    $("#use-settings").focus();
  }

  function setValue(id, value) {
    const input = $(`#${id}`);
    const text = value == null ? "" : String(value);
    if (input.value !== text) {
      input.value = text;
      flash(input);
    }
  }

  function applyRecipe(recipe) {
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
    if (recipe.width != null) setValue("width", recipe.width);
    if (recipe.height != null) setValue("height", recipe.height);
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

  async function loadRecipeFile(file) {
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

  // ----- drag and drop ----------------------------------------------------------------------------
  function setupDrop() {
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

  // ----- wiring ------------------------------------------------------------------------------------
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

  // ----- the login page (same script: the page's CSP allows no inline code) ---------------------------
  // The form posts by itself without JS; with JS it posts through fetch, whose same-origin Origin
  // header the server's cross-origin check accepts (a form navigation under Referrer-Policy:
  // no-referrer sends "Origin: null").
  function loginPage() {
    const form = document.getElementById("login-form");
    const error = document.getElementById("login-error");
    const input = document.getElementById("token");
    if (new URLSearchParams(window.location.search).has("error")) error.hidden = false;
    input.focus();
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      error.hidden = true;
      try {
        const response = await fetch("/login", {
          method: "POST", credentials: "same-origin", body: new URLSearchParams({ token: input.value }),
        });
        const landed = new URL(response.url, window.location.href);
        if (!response.ok || landed.pathname === "/login") {
          error.textContent = response.ok ? "That token is not the right one; try again."
            : `The server refused the login (HTTP ${response.status}).`;
          error.hidden = false;
          input.select();
        } else {
          window.location.assign("/");
        }
      } catch {
        error.textContent = "The server cannot be reached.";
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    });
  }
})();
