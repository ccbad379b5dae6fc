// The page behind `difflab serve`: plain JavaScript against the JSON API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], model: null, limits: {}, dataImages: [], exploreIndex: 0, sourceBlob: null,
                exploreSeq: 0, curves: null };

// ---- API -------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = {};
  try { body = await response.json(); } catch (_) { /* an image or an empty body */ }
  if (!response.ok) {
    let message = body.detail || `HTTP ${response.status}`;
    const retry = response.headers.get("Retry-After");
    if (response.status === 503 && retry) message += ` (Retry-After ${retry} s)`;
    throw new Error(message);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function postJSON(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// ---- models and tabs ---------------------------------------------------------------------------
async function loadModels() {
  const body = await api("/api/models");
  state.models = body.models;
  state.limits = body.limits;
  const select = $("model");
  select.innerHTML = "";
  for (const m of state.models) select.add(new Option(`${m.name} (${m.kinds.join(", ")})`, m.name));
  select.onchange = () => chooseModel(select.value);
  if (state.models.length) await chooseModel(state.models[0].name);
}

function show(selector, visible) {
  document.querySelectorAll(selector).forEach((el) => { el.hidden = !visible; });
}

async function chooseModel(name) {
  const m = state.models.find((x) => x.name === name);
  state.model = m;
  $("model-kind").textContent = `${m.kinds.join(" + ")} · ${m.image_shape[2]}×${m.image_shape[1]} · T ${m.T}`;
  const sampler = $("gen-sampler");
  sampler.innerHTML = "";
  for (const s of m.samplers) sampler.add(new Option(s, s, false, s === m.default_sampler));
  $("gen-steps").value = m.default_steps;
  $("gen-steps").max = Math.min(state.limits.max_steps, m.T);
  $("gen-n").max = state.limits.max_images;
  $("gen-guidance").placeholder = m.default_guidance;
  $("gen-guidance").max = state.limits.max_guidance;
  $("gen-prompt").maxLength = $("gen-negative").maxLength = state.limits.max_prompt;
  const label = $("gen-label");
  label.innerHTML = "";
  label.add(new Option("(unconditional)", ""));
  m.class_names.forEach((c, i) => label.add(new Option(`${i}: ${c}`, String(i))));
  show(".if-class", m.kind === "class");
  show(".if-text", m.kind === "text");
  show(".if-guided", m.kind === "class" || m.kind === "text");
  show(".if-lowres", m.kind === "lowres");
  for (const edit of ["inpaint", "img2img", "interpolate", "upscale"]) show(`.if-edit-${edit}`, m.edits.includes(edit));
  $("generate-btn").disabled = m.kind === "lowres";
  $("t-slider").max = m.T - 1;
  $("t-slider").value = Math.round((m.T - 1) / 2);
  state.curves = null;
  showError("");
  await Promise.all([loadExplore(), loadCard()]);
}

function showTab(name) {
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => { s.hidden = s.id !== `tab-${name}`; });
}

// ---- jobs: progress by server-sent events, then the images -------------------------------------
function watchJob(created, ui) {
  const events = new EventSource(created.events);
  ui.cancel.disabled = false;
  ui.text.textContent = "queued";
  ui.bar.style.width = "0";
  ui.cancel.onclick = async () => {
    ui.cancel.disabled = true;
    try {
      const s = await api(`/api/jobs/${created.id}/cancel`, { method: "POST" });
      ui.text.textContent = s.state === "cancelling" ? "cancelling… (the current step ends first)" : s.state;
    } catch (err) { showError(err.message); }
  };
  return new Promise((resolve) => {
    const finish = (status) => {
      events.close();
      ui.cancel.disabled = true;
      ui.onFinish && ui.onFinish();
      resolve(status);
    };
    events.addEventListener("progress", (e) => {
      const d = JSON.parse(e.data);
      if (d.total) ui.bar.style.width = `${Math.round((100 * d.step) / d.total)}%`;
      ui.text.textContent = d.state === "cancelling" ? "cancelling… (the current step ends first)"
        : `${d.state} · step ${d.step} of ${d.total}`;
      if (d.preview) { ui.preview.src = d.preview; ui.preview.hidden = false; }
    });
    events.addEventListener("done", (e) => {
      const s = JSON.parse(e.data);
      ui.bar.style.width = "100%";
      ui.text.textContent = `done in ${s.seconds} s`;
      if (ui.onDone) ui.onDone(s); else addToGallery(ui.gallery, s);
      finish(s);
    });
    events.addEventListener("cancelled", (e) => { ui.text.textContent = "cancelled"; finish(JSON.parse(e.data)); });
    events.addEventListener("failed", (e) => {
      const s = JSON.parse(e.data);
      ui.text.textContent = "failed";
      showError(s.error);
      finish(s);
    });
    events.onerror = () => { if (events.readyState === EventSource.CLOSED) finish(null); };
  });
}

function addToGallery(gallery, status) {
  status.images.forEach((url, k) => {
    const card = document.createElement("div");
    card.className = "shot";
    const img = document.createElement("img");
    img.src = url;
    img.alt = `image ${k}`;
    const p = status.params;
    const what = [p.edit || "sample", p.sampler, `${p.steps} steps`, p.label !== undefined ? `class ${p.label}` : "",
      p.prompt ? `“${p.prompt}”` : "", p.strength !== undefined ? `strength ${p.strength}` : ""].filter(Boolean);
    const seed = p.edit === "interpolate" ? `frame ${k}` : `seed ${p.seed + k}`;
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = `<span>${seed}</span><a href="${url}" download="${p.model}-${seed.replace(" ", "")}.png">PNG</a>`;
    const info = document.createElement("div");
    info.className = "muted";
    info.textContent = what.join(" · ");
    card.append(img, row, info);
    const command = status.commands[k];
    if (command) {
      const code = document.createElement("code");
      code.textContent = command;
      code.title = "the difflab sample command that draws this image (click to copy)";
      code.onclick = () => navigator.clipboard && navigator.clipboard.writeText(command);
      card.append(code);
    }
    gallery.prepend(card);
  });
}

const genUI = () => ({ bar: $("progress-bar"), text: $("progress-text"), preview: $("preview"), cancel: $("cancel-btn"),
                       gallery: $("gallery") });
const editUI = () => ({ bar: $("edit-progress-bar"), text: $("edit-progress-text"), preview: $("edit-preview"),
                        cancel: $("edit-cancel"), gallery: $("edit-gallery") });

function conditioning() {
  const m = state.model;
  const out = {};
  if (m.kind === "class" && $("gen-label").value !== "") out.label = $("gen-label").value;
  if (m.kind === "text") {
    out.prompt = $("gen-prompt").value;
    if ($("gen-negative").value) out.negative_prompt = $("gen-negative").value;
  }
  if ((out.label !== undefined || out.prompt) && $("gen-guidance").value !== "") out.guidance = Number($("gen-guidance").value);
  return out;
}

function sampling() {
  const out = { model: state.model.name, sampler: $("gen-sampler").value, seed: Number($("gen-seed").value || 0) };
  if ($("gen-steps").value) out.steps = Number($("gen-steps").value);
  return out;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  const button = $("generate-btn");
  button.disabled = true;
  try {
    const created = await postJSON("/api/generate", { ...sampling(), ...conditioning(), n: Number($("gen-n").value || 1) });
    await watchJob(created, genUI());
  } catch (err) {
    showError(err.message);
  } finally {
    button.disabled = state.model.kind === "lowres";
  }
}

// ---- explore -------------------------------------------------------------------------------------
async function loadExplore() {
  const m = state.model;
  const data = await api(`/api/explore/${encodeURIComponent(m.name)}/data`);
  state.dataImages = data.images;
  state.exploreIndex = 0;
  for (const holder of [$("data-images"), $("edit-thumbs")]) {
    holder.innerHTML = "";
    data.images.forEach((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = `data image ${i}`;
      img.onclick = () => (holder.id === "data-images" ? pickExplore(i) : pickSource(src, img));
      holder.append(img);
    });
  }
  if (!data.images.length) {
    $("data-images").textContent = "The run's data set cannot be read here; the model's own samples stand in (index = seed).";
  }
  pickExplore(0);
  if (data.images.length) pickSource(data.images[0], $("edit-thumbs").firstChild);
}

function pickExplore(i) {
  state.exploreIndex = i;
  $("data-images").querySelectorAll("img").forEach((img, k) => img.classList.toggle("picked", k === i));
  updateExplore();
}

async function updateExplore() {
  const m = state.model;
  const t = Number($("t-slider").value);
  $("t-value").textContent = t;
  const seq = ++state.exploreSeq;
  try {
    const q = new URLSearchParams({ t, index: state.exploreIndex, seed: $("explore-seed").value || 0 });
    const r = await api(`/api/explore/${encodeURIComponent(m.name)}/forward?${q}`);
    if (seq !== state.exploreSeq) return; // a newer slider position is on its way
    $("ex-x0").src = r.x0; $("ex-noise").src = r.noise; $("ex-xt").src = r.xt;
    $("ex-eps").src = r.eps_hat; $("ex-x0hat").src = r.x0_hat;
    $("ex-xt").dataset.t = String(t);
    const snr = r.log_snr === null ? "—" : r.log_snr.toFixed(3);
    $("ex-numbers").textContent = `t = ${t}: ᾱ_t = ${r.alpha_bar.toFixed(4)}, log SNR = ${snr}, ` +
      `mean squared error of the predicted noise = ${r.noise_mse.toFixed(4)} (${r.source} image)`;
    drawSchedule(t);
  } catch (err) { showError(err.message); }
}

function svgPlot(series, opts) {
  // series: [{x: [], y: [], color, label, axis: "left"|"right"}]; returns an inline SVG string
  const W = 720, H = 240, L = 50, R = 50, T = 12, B = 28;
  const xs = series.flatMap((s) => s.x);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1;
  const range = (axis) => {
    const ys = series.filter((s) => s.axis === axis).flatMap((s) => s.y).filter((v) => v !== null && isFinite(v));
    if (!ys.length) return [0, 1];
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (hi === lo) { hi += 1; lo -= 1; }
    return [lo, hi];
  };
  const ranges = { left: opts.left || range("left"), right: range("right") };
  const px = (x) => L + ((x - x0) / (x1 - x0 || 1)) * (W - L - R);
  const py = (y, axis) => { const [lo, hi] = ranges[axis]; return T + (1 - (y - lo) / (hi - lo)) * (H - T - B); };
  let svg = `<svg viewBox="0 0 ${W} ${H}" xmlns="http://www.w3.org/2000/svg">`;
  svg += `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#dde1e8"/>`;
  for (const s of series) {
    const pts = s.x.map((x, i) => (s.y[i] === null ? null : `${px(x).toFixed(1)},${py(s.y[i], s.axis).toFixed(1)}`)).filter(Boolean);
    svg += `<polyline fill="none" stroke="${s.color}" stroke-width="1.8" points="${pts.join(" ")}"/>`;
  }
  for (const axis of ["left", "right"]) {
    if (!series.some((s) => s.axis === axis)) continue;
    const [lo, hi] = ranges[axis];
    const x = axis === "left" ? L - 6 : W - R + 6;
    const anchor = axis === "left" ? "end" : "start";
    svg += `<text x="${x}" y="${T + 8}" text-anchor="${anchor}">${+hi.toPrecision(3)}</text>`;
    svg += `<text x="${x}" y="${H - B}" text-anchor="${anchor}">${+lo.toPrecision(3)}</text>`;
  }
  svg += `<text x="${L}" y="${H - 8}">${x0}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${x1}</text>`;
  svg += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${opts.xlabel}</text>`;
  series.forEach((s, i) => {
    svg += `<text x="${L + 8}" y="${T + 16 + 14 * i}" style="fill:${s.color}">${s.label}</text>`;
  });
  if (opts.marker !== undefined) {
    svg += `<line id="${opts.markerId || ""}" x1="${px(opts.marker)}" x2="${px(opts.marker)}" y1="${T}" y2="${H - B}" stroke="#b3261e" stroke-dasharray="4 3"/>`;
  }
  return svg + "</svg>";
}

async function drawSchedule(t) {
  const m = state.model;
  if (!state.curves) state.curves = await api(`/api/explore/${encodeURIComponent(m.name)}/schedule`);
  const c = state.curves;
  $("schedule-plot").innerHTML = svgPlot([
    { x: c.t, y: c.alpha_bar, color: "#2f6fde", label: "ᾱ_t (left axis)", axis: "left" },
    { x: c.t, y: c.log_snr, color: "#e07b00", label: "log SNR(t) (right axis)", axis: "right" },
  ], { xlabel: "t", left: [0, 1], marker: t, markerId: "t-marker" });
}

function showTrajectory(status) {
  const steps = status.params.steps;
  const box = $("trajectory");
  box.innerHTML = "";
  box.style.gridTemplateColumns = `110px repeat(${steps}, minmax(28px, 64px))`;
  const label = (text) => { const span = document.createElement("span"); span.textContent = text; box.append(span); };
  label("step");
  for (let i = 1; i <= steps; i++) label(String(i));
  ["x_t after the step", "predicted x_0"].forEach((name, row) => {
    label(name);
    for (let i = 0; i < steps; i++) {
      const img = document.createElement("img");
      img.src = status.images[row * steps + i];
      img.alt = `${name}, step ${i + 1}`;
      box.append(img);
    }
  });
}

async function runTrajectory() {
  showError("");
  $("traj-btn").disabled = true;
  try {
    const body = { ...sampling(), ...conditioning(), seed: Number($("traj-seed").value || 0),
                   steps: Number($("traj-steps").value || 10) };
    const created = await postJSON("/api/explore/trajectory", body);
    await watchJob(created, { bar: $("traj-bar"), text: $("traj-text"), preview: $("traj-preview"),
                              cancel: $("traj-cancel"), onDone: showTrajectory });
  } catch (err) { showError(err.message); } finally { $("traj-btn").disabled = false; }
}

// ---- model card ------------------------------------------------------------------------------------
async function loadCard() {
  const m = state.model;
  const card = await api(`/api/models/${encodeURIComponent(m.name)}/card`);
  $("card-config").textContent = JSON.stringify(card.config, null, 2);
  $("loss-plot").innerHTML = card.loss.length
    ? svgPlot([{ x: card.loss.map((p) => p[0]), y: card.loss.map((p) => p[1]), color: "#2f6fde", label: "loss", axis: "left" }],
      { xlabel: "step" })
    : '<p class="muted">no log.jsonl in this run</p>';
  const summary = { model: card.model, kind: [card.kind, card.latent ? "latent" : ""].filter(Boolean).join(" + "),
                    parameters: card.parameters.toLocaleString("en"), weights: card.weights || "(in memory)",
                    "steps trained": card.steps_trained ?? "—" };
  $("card-summary").innerHTML = "";
  $("card-summary").append(table(summary));
  const palette = ["#2f6fde", "#e07b00", "#2a9d5c", "#b3261e", "#7b4fd0", "#6a7285"];
  const names = [...new Set(card.eval.flatMap((r) => Object.keys(r)).filter((k) => k !== "step"))];
  const numeric = names.filter((k) => card.eval.every((r) => r[k] === undefined || typeof r[k] === "number"));
  $("eval-plot").innerHTML = card.eval.length > 1 && numeric.length
    ? svgPlot(numeric.slice(0, 2).map((k, i) => ({
      x: card.eval.filter((r) => typeof r[k] === "number").map((r) => r.step),
      y: card.eval.filter((r) => typeof r[k] === "number").map((r) => r[k]),
      color: palette[i], label: `${k} (${i ? "right" : "left"} axis)`, axis: i ? "right" : "left" })), { xlabel: "step" })
    : '<p class="muted">fewer than two evaluations logged</p>';
  const latest = card.latest_eval;
  $("eval-latest").innerHTML = "";
  if (!latest) { $("eval-latest").innerHTML = '<p class="muted">no evaluation logged (train with --eval-every N)</p>'; return; }
  $("eval-latest").append(table(latest));
}

function table(record) {
  const out = document.createElement("table");
  for (const [k, v] of Object.entries(record)) {
    const row = out.insertRow();
    row.insertCell().textContent = k;
    row.insertCell().textContent = typeof v === "number" ? +v.toPrecision(5) : String(v);
  }
  return out;
}

// ---- edit -------------------------------------------------------------------------------------------
async function pickSource(src, img) {
  document.querySelectorAll("#edit-thumbs img").forEach((x) => x.classList.toggle("picked", x === img));
  state.sourceBlob = await (await fetch(src)).blob();
  drawSource(src);
}

function drawSource(src) {
  const image = new Image();
  image.onload = () => {
    const ctx = $("edit-canvas").getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, 0, 0, 256, 256);
  };
  image.src = src;
}

function setupMask() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  const paint = (e) => {
    if (!drawing) return;
    const r = canvas.getBoundingClientRect();
    ctx.fillStyle = "#fff";
    ctx.beginPath();
    ctx.arc(((e.clientX - r.left) * 256) / r.width, ((e.clientY - r.top) * 256) / r.height, Number($("brush").value) / 2, 0, 2 * Math.PI);
    ctx.fill();
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; paint(e); });
  canvas.addEventListener("pointermove", paint);
  window.addEventListener("pointerup", () => { drawing = false; });
  $("mask-clear").onclick = () => ctx.clearRect(0, 0, 256, 256);
}

function maskBlob() {
  const out = document.createElement("canvas");
  out.width = out.height = 256;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 256, 256);
  ctx.drawImage($("mask-canvas"), 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

function editForm(extra) {
  const form = new FormData();
  const s = { ...sampling(), ...conditioning(), n: Number($("gen-n").value || 1), ...extra };
  for (const [k, v] of Object.entries(s)) if (v !== undefined && v !== null && v !== "") form.append(k, String(v));
  return form;
}

async function runEdit(path, form) {
  showError("");
  try {
    if (!state.sourceBlob && !path.endsWith("interpolate")) throw new Error("pick or upload a source image first");
    const created = await api(path, { method: "POST", body: form });
    await watchJob(created, editUI());
  } catch (err) { showError(err.message); }
}

function setupEdit() {
  $("edit-file").onchange = () => {
    const file = $("edit-file").files[0];
    if (!file) return;
    state.sourceBlob = file;
    drawSource(URL.createObjectURL(file));
  };
  $("strength").oninput = () => { $("strength-value").textContent = Number($("strength").value).toFixed(2); };
  $("img2img-btn").onclick = () => {
    const form = editForm({ strength: $("strength").value, negative_prompt: undefined });
    if (state.sourceBlob) form.append("image", state.sourceBlob, "image.png");
    runEdit("/api/edit/img2img", form);
  };
  $("inpaint-btn").onclick = async () => {
    const form = editForm({ method: $("inpaint-method").value, steps: $("inpaint-steps").value, sampler: "ddpm",
                            negative_prompt: undefined });
    if (state.sourceBlob) form.append("image", state.sourceBlob, "image.png");
    form.append("mask", await maskBlob(), "mask.png");
    runEdit("/api/edit/inpaint", form);
  };
  $("upscale-btn").onclick = () => {
    const s = sampling();
    const form = new FormData();
    for (const [k, v] of Object.entries({ ...s, n: Number($("gen-n").value || 1) })) form.append(k, String(v));
    if (state.sourceBlob) form.append("image", state.sourceBlob, "image.png");
    runEdit("/api/edit/upscale", form);
  };
  $("interp-btn").onclick = async () => {
    showError("");
    try {
      const body = { ...sampling(), ...conditioning(), seed: Number($("interp-a").value), seed_b: Number($("interp-b").value),
                     frames: Number($("interp-frames").value) };
      const created = await postJSON("/api/edit/interpolate", body);
      await watchJob(created, editUI());
    } catch (err) { showError(err.message); }
  };
}

// ---- start ----------------------------------------------------------------------------------------
document.querySelectorAll("#tabs button").forEach((b) => { b.onclick = () => showTab(b.dataset.tab); });
$("gen-form").addEventListener("submit", generate);
$("t-slider").addEventListener("input", updateExplore);
$("explore-seed").addEventListener("change", updateExplore);
$("traj-btn").addEventListener("click", runTrajectory);
setupMask();
setupEdit();
loadModels().catch((err) => showError(`cannot load the models: ${err.message}`));
