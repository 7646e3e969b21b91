// The detector's page: upload an image or a video, draw and list what the service found.
// Plain JavaScript, no build step, no network access besides this service. Boxes from the API are
// [x1, y1, x2, y2] in the image's own pixels; the canvas has the image's size, so they are drawn as they are.
"use strict";

// visualize.PALETTE: the same colour per class as the annotated images and videos (label l -> PALETTE[l - 1]).
const PALETTE = [
  [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
  [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
  [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180],
  [0, 0, 128],
];
const VIDEO_NAME = /\.(mp4|m4v|webm|mov|avi|mkv|mpe?g|wmv|flv|ts|3gp)$/i;
const POLL_MS = 500;
const KEY_STORE = "detector-api-key";

const $ = (id) => document.getElementById(id);
const state = { image: null, detections: [], videoUrl: null };

function color(label, alpha = 1) {
  const [r, g, b] = PALETTE[(label - 1 + PALETTE.length) % PALETTE.length];
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

function setStatus(text, pageState) {
  $("status").textContent = text;
  if (pageState) document.body.dataset.state = pageState;
}

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

// fetch with the API key; a non-2xx answer throws its {"error": "..."} sentence.
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch (_) { /* not JSON: keep the status line */ }
    if (response.status === 401) $("key-field").hidden = false;
    throw new Error(message);
  }
  return response;
}

function upload(path, file) {
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  return api(path, { method: "POST", body: form });
}

// ---- images ------------------------------------------------------------------------------------------

function threshold() {
  return parseFloat($("score").value);
}

function shownDetections() {
  const minimum = threshold();
  return state.detections.filter((d) => d.score >= minimum);
}

function drawBoxes(shown) {
  const canvas = $("canvas");
  const context = canvas.getContext("2d");
  context.drawImage(state.image, 0, 0);
  const width = Math.max(2, Math.round(Math.max(canvas.width, canvas.height) / 400));
  const fontSize = Math.max(12, width * 6);
  context.font = `${fontSize}px system-ui, sans-serif`;
  context.textBaseline = "top";
  for (const d of shown) {
    const [x1, y1, x2, y2] = d.box;
    context.lineWidth = width;
    context.strokeStyle = color(d.label);
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  for (const d of shown) {  // labels after all boxes, so no outline crosses a label
    const [x1, y1] = d.box;
    const text = `${d.class} ${d.score.toFixed(2)}`;
    const textWidth = context.measureText(text).width + 6;
    const top = y1 - fontSize - 4 >= 0 ? y1 - fontSize - 4 : y1;
    context.fillStyle = color(d.label, 0.85);
    context.fillRect(x1, top, textWidth, fontSize + 4);
    context.fillStyle = "#fff";
    context.fillText(text, x1 + 3, top + 2);
  }
}

function fillTable(shown) {
  const body = $("detections").tBodies[0];
  const rows = shown.map((d, index) => {
    const row = document.createElement("tr");
    const swatch = `<span class="swatch" style="background:${color(d.label)}"></span>`;
    const cells = [String(index + 1), d.class, d.score.toFixed(3), d.box.map((v) => v.toFixed(1)).join(", ")];
    cells.forEach((text, column) => {
      const cell = document.createElement("td");
      if (column === 1) cell.innerHTML = swatch;  // a constant colour swatch; the class name is text below
      cell.append(text);
      row.append(cell);
    });
    return row;
  });
  body.replaceChildren(...rows);
  $("count").textContent = String(shown.length);
}

// Redraw from the last answer: moving the slider never calls the service again.
function render() {
  $("score-value").textContent = threshold().toFixed(2);
  if (!state.image) return;
  const shown = shownDetections();
  drawBoxes(shown);
  fillTable(shown);
}

async function runImage(file) {
  $("video-result").hidden = true;
  setStatus(`detecting on ${file.name}…`, "working");
  const image = await createImageBitmap(file);
  // score_thresh=0: everything the model keeps comes back, and the slider filters it here
  const response = await upload("/v1/detect?score_thresh=0", file);
  const result = await response.json();
  state.image = image;
  state.detections = result.detections;
  const canvas = $("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const t = result.timing_ms;
  $("timing").textContent = `model ${t.model.toFixed(0)} ms, queue ${t.queue.toFixed(0)} ms, total ${t.total.toFixed(0)} ms`;
  $("image-result").hidden = false;
  render();
  setStatus(`${file.name}: ${result.width}×${result.height}, ${result.detections.length} detections from ${result.model}`,
    "done");
}

// ---- videos ------------------------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function runVideo(file) {
  $("image-result").hidden = true;
  $("video-result").hidden = false;
  $("video").hidden = true;
  $("progress").value = 0;
  $("video-summary").textContent = "";
  setStatus(`uploading ${file.name}…`, "working");
  const { id } = await (await upload("/v1/videos", file)).json();
  let job;
  for (;;) {
    job = await (await api(`/v1/videos/${id}`)).json();
    $("progress").value = job.progress;
    const total = job.frames_total === null ? "?" : job.frames_total;
    $("video-progress").textContent = `${job.status}: ${job.frames_done} / ${total} frames`;
    setStatus(`${file.name}: ${job.status}`, "working");
    if (job.status === "done" || job.status === "failed") break;
    await sleep(POLL_MS);
  }
  if (job.status === "failed") throw new Error(job.error || "the video job failed");
  // fetched as a blob, so the API key header goes with it (a <video src> request cannot carry one)
  const blob = await (await api(job.video_url)).blob();
  if (state.videoUrl) URL.revokeObjectURL(state.videoUrl);
  state.videoUrl = URL.createObjectURL(blob);
  $("video").src = state.videoUrl;
  $("video").hidden = false;
  const found = job.frames.reduce((sum, frame) => sum + frame.detections.length, 0);
  $("video-summary").textContent = `${job.frames.length} frames, ${found} detections`;
  setStatus(`${file.name}: done`, "done");
}

// ---- wiring ------------------------------------------------------------------------------------------

async function handleFile(file) {
  if (!file) return;
  const isVideo = file.type.startsWith("video/") || VIDEO_NAME.test(file.name);
  try {
    await (isVideo ? runVideo(file) : runImage(file));
  } catch (error) {
    setStatus(`${file.name}: ${error.message}`, "error");
  }
}

async function loadModelInfo() {
  try {
    const health = await (await fetch("/healthz")).json();
    $("model").textContent = `${health.model} · classes: ${health.classes.join(", ")}`;
    if (health.auth_required) $("key-field").hidden = false;
  } catch (error) {
    $("model").textContent = `the service does not answer: ${error.message}`;
  }
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => handleFile(event.target.files[0]));
  $("score").addEventListener("input", render);
  $("api-key").value = localStorage.getItem(KEY_STORE) || "";
  $("api-key").addEventListener("change", (event) => localStorage.setItem(KEY_STORE, event.target.value.trim()));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    handleFile(event.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file").click();
  });
  render();
  loadModelInfo();
}

wire();
