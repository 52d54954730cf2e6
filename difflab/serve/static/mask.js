// The inpainting mask: a brush that paints on a canvas over the input image, and the mask as a PNG.
import { $, el } from "./dom.js";
import { state } from "./state.js";

export function clearMask() {
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

export function setupBrush() {
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
export function maskPNG() {
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
