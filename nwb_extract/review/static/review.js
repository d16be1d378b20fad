// nwb-extract review page: plain JavaScript and canvas, no library. Talks to the local server of
// `nwb-extract review` (nwb_extract/review/server.py); every request carries the page's token.
"use strict";

const TOKEN = window.REVIEW_TOKEN;
const STATUS_NAMES = ["unreviewed", "accepted", "rejected"];
const COLORS = { 0: "#ffd21f", 1: "#2ee66b", 2: "#ff4040", eliminated: "#b070ff", selected: "#00e5ff" };
const KIND_COLORS = ["#4ea3ff", "#ff9f40", "#b8b8b8", "#e377c2", "#17becf"];
const ALIASES = { snr: "T_maxval" };  // filter names: EXTRACT's trace SNR metric is T_maxval
const ROW_HEIGHT = 20;

// Timings the browser test reads: first paint (ms since navigation start, contours drawn) and every cell
// switch (ms from the click or key to the trace drawn).
window.reviewTimings = { firstPaint: null, switches: [], contoursDrawn: 0 };

const state = {
  ov: null,             // /api/overview
  status: null,         // Int8Array (cells): 0 unreviewed, 1 accepted, 2 rejected
  order: [],            // cell indices in the table: filtered and sorted
  sortKey: -1,          // -1: cell index, -2: status, else metric column
  sortDir: 1,
  filter: null,         // function(i) -> bool, or null
  selected: null,       // {elim: bool, i: int}
  undo: [],             // [{cells: [...], before: [...]}]
  dirty: false,
  kindsOn: {},
  view: null,           // [t0, t1] of the trace plot, seconds
  trace: null,          // last /api/trace answer, for the selected cell
  traceSeq: 0,
  image: "summary_image",
  showEliminated: false,
  paths: [],            // Path2D per cell (image pixel units)
  elimPaths: [],
  centroids: [],        // [row, col] per cell (mean of its contour points)
  elimCentroids: [],
  scale: 1,
};

window.reviewState = state;  // for the browser tests and the console
const $ = (id) => document.getElementById(id);

async function api(path, body) {
  const options = { headers: { "X-Review-Token": TOKEN } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || `HTTP ${response.status}`);
  return answer;
}

function showError(error) {
  const box = $("error");
  box.textContent = String(error.message || error);
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 8000);
}

function bytesOf(base64) {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

function esc(text) {  // names and rules come from the file: never markup
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  const a = Math.abs(value);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return value.toExponential(2);
  return Number.isInteger(value) ? String(value) : value.toFixed(a >= 100 ? 1 : 3);
}

// ------------------------------------------------------------------------------------------------------------
// the image with contours

const imageCanvases = {};

function grayCanvas(bytes, rows, cols) {
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(cols, rows);
  for (let i = 0; i < bytes.length; i++) {
    pixels.data[4 * i] = pixels.data[4 * i + 1] = pixels.data[4 * i + 2] = bytes[i];
    pixels.data[4 * i + 3] = 255;
  }
  ctx.putImageData(pixels, 0, 0);
  return canvas;
}

function buildPaths(contours) {
  const paths = [], centroids = [];
  for (const lines of contours) {
    const path = new Path2D();
    let sr = 0, sc = 0, n = 0;
    for (const line of lines) {
      for (let j = 0; j < line.length; j += 2) {
        // pixel centres at integers: +0.5 puts them in the middle of the drawn pixel
        const r = line[j] + 0.5, c = line[j + 1] + 0.5;
        if (j === 0) path.moveTo(c, r); else path.lineTo(c, r);
        sr += r; sc += c; n++;
      }
      path.closePath();
    }
    paths.push(path);
    centroids.push(n ? [sr / n, sc / n] : [NaN, NaN]);
  }
  return [paths, centroids];
}

function drawImage() {
  const canvas = $("image");
  const ctx = canvas.getContext("2d");
  const [rows, cols] = state.ov.frame_shape;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  const source = imageCanvases[state.image] || imageCanvases.summary_image;
  if (source) ctx.drawImage(source, 0, 0, cols * state.scale, rows * state.scale);
  ctx.setTransform(state.scale, 0, 0, state.scale, 0, 0);
  ctx.lineWidth = 1.2 / state.scale;
  let drawn = 0;
  if (state.showEliminated) {
    ctx.strokeStyle = COLORS.eliminated;
    for (const path of state.elimPaths) { ctx.stroke(path); drawn++; }
  }
  const visible = new Set(state.filter ? state.order : []);
  for (let i = 0; i < state.paths.length; i++) {
    ctx.globalAlpha = state.filter && !visible.has(i) ? 0.5 : 1;
    ctx.strokeStyle = COLORS[state.status[i]];
    ctx.stroke(state.paths[i]);
    drawn++;
  }
  ctx.globalAlpha = 1;
  window.reviewTimings.contoursDrawn = drawn;
  drawSelection();
}

function drawSelection() {  // on its own canvas over the image: a cell switch does not redraw every contour
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const selected = state.selected;
  if (!selected) return;
  ctx.setTransform(state.scale, 0, 0, state.scale, 0, 0);
  ctx.strokeStyle = COLORS.selected;
  ctx.lineWidth = 2.5 / state.scale;
  ctx.stroke((selected.elim ? state.elimPaths : state.paths)[selected.i]);
}

function cellAt(event) {
  const canvas = $("image");
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * canvas.width / rect.width;
  const y = (event.clientY - rect.top) * canvas.height / rect.height;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(state.scale, 0, 0, state.scale, 0, 0);
  const row = y / state.scale, col = x / state.scale;
  let best = null, bestDistance = Infinity;
  const consider = (paths, centroids, elim) => {
    for (let i = 0; i < paths.length; i++) {
      const [r, c] = centroids[i];
      const distance = Math.hypot(r - row, c - col);
      const inside = ctx.isPointInPath(paths[i], x, y);
      if ((inside || distance < 3) && distance < bestDistance) { best = { elim, i }; bestDistance = distance; }
    }
  };
  consider(state.paths, state.centroids, false);
  if (state.showEliminated) consider(state.elimPaths, state.elimCentroids, true);
  return best;
}

// ------------------------------------------------------------------------------------------------------------
// the table

function metricIndex(name) {
  const key = ALIASES[name.toLowerCase()] || name;
  return state.ov.metric_names.indexOf(key);
}

function parseFilter(text) {
  text = text.trim();
  if (!text) return null;
  const tests = [];
  for (const clause of text.split(/\s+and\s+|\s*&&?\s*|\s*,\s*/i)) {
    const m = clause.match(/^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|!=|=|<|>)\s*(\S+)\s*$/);
    if (!m) throw new Error(`cannot read "${clause}": write NAME OP VALUE, e.g. SNR < 5`);
    const [, name, op, raw] = m;
    let get;
    let value = Number(raw);
    if (name.toLowerCase() === "status") {
      value = STATUS_NAMES.indexOf(raw.toLowerCase());
      if (value < 0 || !["=", "==", "!="].includes(op)) throw new Error("status = accepted | rejected | unreviewed");
      get = (i) => state.status[i];
    } else if (["cell", "index", "id"].includes(name.toLowerCase())) {
      get = (i) => i;
    } else {
      const column = metricIndex(name);
      if (column < 0) throw new Error(`no metric "${name}"; metrics: SNR (= T_maxval), ${state.ov.metric_names.join(", ")}`);
      get = (i) => state.ov.metrics[column][i];
    }
    if (Number.isNaN(value)) throw new Error(`"${raw}" is not a number`);
    const compare = { "<": (a, b) => a < b, "<=": (a, b) => a <= b, ">": (a, b) => a > b, ">=": (a, b) => a >= b,
                      "=": (a, b) => a === b, "==": (a, b) => a === b, "!=": (a, b) => a !== b }[op];
    tests.push((i) => { const v = get(i); return v !== null && compare(v, value); });
  }
  return (i) => tests.every((test) => test(i));
}

function sortValue(i) {
  if (state.sortKey === -1) return i;
  if (state.sortKey === -2) return state.status[i];
  const v = state.ov.metrics[state.sortKey][i];
  return v === null ? -Infinity : v;
}

function updateOrder() {
  const n = state.ov.n_cells;
  const order = [];
  for (let i = 0; i < n; i++) if (!state.filter || state.filter(i)) order.push(i);
  const dir = state.sortDir;
  order.sort((a, b) => (sortValue(a) - sortValue(b)) * dir || a - b);
  state.order = order;
  $("filter-state").textContent = state.filter ? `${order.length} of ${n} cells match` : `${n} cells`;
  $("table-spacer").style.height = `${order.length * ROW_HEIGHT}px`;
  renderRows();
}

function buildHeader() {
  const names = ["cell", "status", ...state.ov.metric_names.map((m) => (m === "T_maxval" ? "T_maxval (SNR)" : m))];
  const keys = [-1, -2, ...state.ov.metric_names.map((_, j) => j)];
  const head = $("table-head");
  head.innerHTML = "";
  names.forEach((name, j) => {
    const div = document.createElement("div");
    div.className = `c${j}` + (keys[j] === state.sortKey ? " sorted" + (state.sortDir < 0 ? " desc" : "") : "");
    div.textContent = name;
    div.title = `sort by ${name}`;
    div.onclick = () => {
      state.sortDir = state.sortKey === keys[j] ? -state.sortDir : 1;
      state.sortKey = keys[j];
      buildHeader();
      updateOrder();
    };
    head.appendChild(div);
  });
}

function renderRows() {
  const scroller = $("table-scroll");
  const headHeight = $("table-head").offsetHeight;
  const first = Math.max(0, Math.floor((scroller.scrollTop - headHeight) / ROW_HEIGHT) - 5);
  const last = Math.min(state.order.length, first + Math.ceil(scroller.clientHeight / ROW_HEIGHT) + 10);
  const parts = [];
  const selected = state.selected && !state.selected.elim ? state.selected.i : -1;
  for (let p = first; p < last; p++) {
    const i = state.order[p];
    const s = state.status[i];
    let html = `<div class="row${i === selected ? " selected" : ""}" data-i="${i}"><div class="c0">${i}</div>` +
               `<div class="c1 st-${s}">${STATUS_NAMES[s]}</div>`;
    for (const column of state.ov.metrics) html += `<div>${fmt(column[i])}</div>`;
    parts.push(html + "</div>");
  }
  const rows = $("table-rows");
  rows.style.top = `${first * ROW_HEIGHT}px`;
  rows.innerHTML = parts.join("");
}

function scrollToRow(i) {
  const p = state.order.indexOf(i);
  if (p < 0) return;
  const scroller = $("table-scroll");
  const headHeight = $("table-head").offsetHeight;
  const top = p * ROW_HEIGHT, bottom = top + ROW_HEIGHT;
  if (top < scroller.scrollTop) scroller.scrollTop = top;
  else if (bottom > scroller.scrollTop + scroller.clientHeight - headHeight) {
    scroller.scrollTop = bottom - scroller.clientHeight + headHeight;
  }
}

// ------------------------------------------------------------------------------------------------------------
// the selected cell: footprint, metrics, traces

async function select(ref) {
  if (!ref) return;
  const started = performance.now();
  state.selected = ref;
  state.view = null;
  const seq = ++state.traceSeq;
  drawSelection();
  if (!ref.elim) { scrollToRow(ref.i); renderRows(); }
  const elim = ref.elim ? 1 : 0;
  const bins = traceBins();
  const [cell, trace] = await Promise.all([api(`api/cell?i=${ref.i}&elim=${elim}`),
                                           api(`api/trace?i=${ref.i}&elim=${elim}&bins=${bins}`)]);
  if (seq !== state.traceSeq) return;
  showCell(cell);
  state.trace = trace;
  state.view = [state.ov.time.start, state.ov.time.end];
  drawTrace();
  window.reviewTimings.switches.push(performance.now() - started);
  if (!ref.elim) prefetchAround(ref.i);
}

function prefetchAround(i) {
  const p = state.order.indexOf(i);
  const near = [state.order[p + 1], state.order[p - 1], state.order[p + 2]].filter((j) => j !== undefined);
  if (near.length) api("api/prefetch", { cells: near }).catch(() => {});
}

function showCell(cell) {
  const i = cell.index;
  const status = cell.eliminated ? "eliminated" : STATUS_NAMES[state.status[i]];
  $("cell-head").innerHTML = `${cell.eliminated ? "eliminated candidate" : "cell"} ${i} &middot; ` +
    `<span style="color:${cell.eliminated ? COLORS.eliminated : COLORS[state.status[i]]}">${status}</span>` +
    (cell.centroid[0] === null ? "" : ` &middot; centre (${cell.centroid[0].toFixed(1)}, ${cell.centroid[1].toFixed(1)})`);
  const info = $("cell-info");
  if (cell.eliminated) {
    info.innerHTML = `<div><b>removed by rule</b> ${esc(cell.rule)}</div>` +
      "<div>candidates eliminated by quality control are shown for reference and are not reviewed</div>";
  } else {
    info.innerHTML = Object.entries(cell.metrics)
      .map(([name, value]) => `<div><b>${name === "T_maxval" ? "T_maxval (SNR)" : esc(name)}</b> ${fmt(value)}</div>`).join("");
  }
  const [h, w] = cell.crop_shape;
  const zoom = grayCanvas(bytesOf(cell.crop), h, w);
  const canvas = $("footprint");
  const ctx = canvas.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const k = Math.min(canvas.width / w, canvas.height / h);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(zoom, (canvas.width - w * k) / 2, (canvas.height - h * k) / 2, w * k, h * k);
  ctx.setTransform(k, 0, 0, k, (canvas.width - w * k) / 2 - cell.corner[1] * k, (canvas.height - h * k) / 2 - cell.corner[0] * k);
  ctx.lineWidth = 1.5 / k;
  ctx.strokeStyle = COLORS.selected;
  ctx.stroke((cell.eliminated ? state.elimPaths : state.paths)[i]);
}

function traceBins() {
  return Math.max(64, Math.round($("trace").clientWidth || 800));
}

function niceStep(span, target) {
  const raw = span / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

function drawTrace() {
  const canvas = $("trace");
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 800, cssH = canvas.clientHeight || 260;
  if (canvas.width !== Math.round(cssW * dpr)) { canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const trace = state.trace;
  if (!trace || !state.view) return;
  const left = 52, right = 8, top = 8, bottom = 22;
  const W = cssW - left - right, H = cssH - top - bottom;
  const [t0, t1] = state.view;
  const span = Math.max(t1 - t0, 1e-9);
  const kinds = Object.keys(trace.kinds).filter((kind) => state.kindsOn[kind] !== false);
  let lo = Infinity, hi = -Infinity;
  for (const kind of kinds) {
    const { min, max } = trace.kinds[kind];
    for (let j = 0; j < trace.t.length; j++) {
      if (trace.t[j] < t0 || trace.t[j] > t1) continue;
      if (min[j] !== null && min[j] < lo) lo = min[j];
      if (max[j] !== null && max[j] > hi) hi = max[j];
    }
  }
  if (!(hi > lo)) { lo = (isFinite(lo) ? lo : 0) - 1; hi = lo + 2; }
  const pad = 0.05 * (hi - lo);
  lo -= pad; hi += pad;
  const X = (t) => left + (t - t0) / span * W;
  const Y = (v) => top + (hi - v) / (hi - lo) * H;
  // axes and ticks
  ctx.strokeStyle = "#444"; ctx.fillStyle = "#aaa"; ctx.lineWidth = 1; ctx.font = "11px sans-serif";
  ctx.beginPath(); ctx.moveTo(left, top); ctx.lineTo(left, top + H); ctx.lineTo(left + W, top + H); ctx.stroke();
  const step = niceStep(span, 8);
  ctx.textAlign = "center";
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    ctx.fillText(`${+t.toFixed(6)}`, X(t), top + H + 14);
    ctx.beginPath(); ctx.moveTo(X(t), top + H); ctx.lineTo(X(t), top + H + 4); ctx.stroke();
  }
  ctx.textAlign = "right";
  ctx.fillText("s", left + W, top + H + 14 > cssH ? cssH - 2 : top + H + 14);
  const vstep = niceStep(hi - lo, 4);
  for (let v = Math.ceil(lo / vstep) * vstep; v <= hi; v += vstep) ctx.fillText(`${+v.toFixed(6)}`, left - 4, Y(v) + 4);
  // one band (min to max per pixel column) per kind
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top, W, H); ctx.clip();
  kinds.forEach((kind) => {
    const color = KIND_COLORS[Object.keys(trace.kinds).indexOf(kind) % KIND_COLORS.length];
    const { min, max } = trace.kinds[kind];
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 1;
    ctx.beginPath();
    let started = false;
    for (let j = 0; j < trace.t.length; j++) {
      if (max[j] === null) continue;
      const x = X(trace.t[j]);
      if (!started) { ctx.moveTo(x, Y(max[j])); started = true; } else ctx.lineTo(x, Y(max[j]));
    }
    for (let j = trace.t.length - 1; j >= 0; j--) if (min[j] !== null) ctx.lineTo(X(trace.t[j]), Y(min[j]));
    ctx.closePath();
    ctx.globalAlpha = 0.45; ctx.fill(); ctx.globalAlpha = 1; ctx.stroke();
  });
  ctx.restore();
  window.reviewTimings.traceDrawn = (window.reviewTimings.traceDrawn || 0) + 1;
}

function buildKinds() {
  const bar = $("kinds");
  bar.innerHTML = "traces:";
  const names = state.ov.kinds.length ? state.ov.kinds : [];
  names.forEach((kind, j) => {
    state.kindsOn[kind] = true;
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" checked data-kind="${esc(kind)}"> <span style="color:${KIND_COLORS[j]}">${esc(kind)}` +
      `${kind === state.ov.primary ? " (primary)" : ""}</span>`;
    label.querySelector("input").onchange = (e) => { state.kindsOn[kind] = e.target.checked; drawTrace(); };
    bar.appendChild(label);
  });
  if (!names.length) bar.innerHTML = "this run has no traces";
}

let refetchTimer = null;
function setView(t0, t1) {
  const { start, end } = state.ov.time;
  const full = end - start;
  const minimum = full / Math.max(state.ov.time.n_frames, 1) * 10;
  let span = Math.min(Math.max(t1 - t0, minimum), full);
  t0 = Math.min(Math.max(t0, start), end - span);
  state.view = [t0, t0 + span];
  drawTrace();
  clearTimeout(refetchTimer);
  refetchTimer = setTimeout(refetchWindow, 60);
}

async function refetchWindow() {
  const ref = state.selected;
  if (!ref || !state.view) return;
  const seq = ++state.traceSeq;
  const [t0, t1] = state.view;
  const trace = await api(`api/trace?i=${ref.i}&elim=${ref.elim ? 1 : 0}&bins=${traceBins()}&t0=${t0}&t1=${t1}`);
  if (seq !== state.traceSeq) return;
  state.trace = trace;
  drawTrace();
}

function bindTraceMouse() {
  const canvas = $("trace");
  canvas.addEventListener("wheel", (event) => {
    if (!state.view) return;
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const fraction = Math.min(Math.max((event.clientX - rect.left - 52) / (rect.width - 60), 0), 1);
    const [t0, t1] = state.view;
    const anchor = t0 + fraction * (t1 - t0);
    const factor = Math.exp(event.deltaY * 0.0015);
    setView(anchor - (anchor - t0) * factor, anchor + (t1 - anchor) * factor);
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("mousedown", (event) => { if (state.view) drag = { x: event.clientX, view: state.view.slice() }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const rect = canvas.getBoundingClientRect();
    const shift = (event.clientX - drag.x) / (rect.width - 60) * (drag.view[1] - drag.view[0]);
    setView(drag.view[0] - shift, drag.view[1] - shift);
  });
  canvas.addEventListener("dblclick", () => { if (state.ov) setView(state.ov.time.start, state.ov.time.end); });
}

// ------------------------------------------------------------------------------------------------------------
// review: statuses, undo, bulk, save

function setStatus(cells, value) {
  if (!cells.length) return;
  state.undo.push({ cells: cells.slice(), before: cells.map((i) => state.status[i]) });
  for (const i of cells) state.status[i] = value;
  changed();
}

function undo() {
  const last = state.undo.pop();
  if (!last) return;
  last.cells.forEach((i, j) => { state.status[i] = last.before[j]; });
  changed();
  if (last.cells.length === 1) select({ elim: false, i: last.cells[0] });
}

function changed() {
  state.dirty = true;
  $("save-state").textContent = "unsaved changes";
  $("save-state").className = "dirty";
  updateCounts();
  if (state.filter) updateOrder(); else renderRows();
  drawImage();
  if (state.selected && !state.selected.elim) {
    const head = $("cell-head").querySelector("span");
    if (head) { head.textContent = STATUS_NAMES[state.status[state.selected.i]]; head.style.color = COLORS[state.status[state.selected.i]]; }
  }
}

function updateCounts() {
  const counts = [0, 0, 0];
  for (const s of state.status) counts[s]++;
  $("counts").innerHTML = `<span class="st-1">${counts[1]} accepted</span> &middot; <span class="st-2">${counts[2]} rejected</span>` +
    ` &middot; <span class="st-0">${counts[0]} unreviewed</span>`;
}

function step(delta) {
  if (!state.order.length) return;
  const current = state.selected && !state.selected.elim ? state.order.indexOf(state.selected.i) : -1;
  const p = current < 0 ? (delta > 0 ? 0 : state.order.length - 1)
                        : Math.min(Math.max(current + delta, 0), state.order.length - 1);
  if (p !== current) select({ elim: false, i: state.order[p] });
}

function review(value) {
  const ref = state.selected;
  if (!ref || ref.elim) return;
  const p = state.order.indexOf(ref.i);
  const next = state.order[p + 1];
  setStatus([ref.i], value);
  if (next !== undefined && state.order.includes(next)) select({ elim: false, i: next });
}

async function save() {
  const accepted = [], rejected = [];
  state.status.forEach((s, i) => { if (s === 1) accepted.push(i); else if (s === 2) rejected.push(i); });
  $("save-state").textContent = "saving…";
  try {
    const answer = await api("api/save", { accepted, rejected });
    state.dirty = false;
    $("save-state").textContent = `saved to ${answer.saved_to} (${answer.curated_by}, ${answer.curated_at})`;
    $("save-state").className = "saved";
    window.reviewTimings.saved = answer;
  } catch (error) {
    $("save-state").textContent = "not saved";
    showError(error);
  }
}

function bindKeys() {
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") { event.preventDefault(); save(); return; }
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); return; }
    if (event.target.tagName === "INPUT" && event.target.type === "text") return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const actions = {
      ArrowDown: () => step(1), j: () => step(1), n: () => step(1),
      ArrowUp: () => step(-1), k: () => step(-1), p: () => step(-1),
      a: () => review(1), r: () => review(2), c: () => review(0), u: undo,
    };
    const action = actions[event.key];
    if (action) { event.preventDefault(); action(); }
  });
}

// ------------------------------------------------------------------------------------------------------------
// start

async function start() {
  const ov = await api("api/overview");
  state.ov = ov;
  state.status = Int8Array.from(ov.status);
  document.title = `review: ${ov.file} (${ov.run})`;
  $("file").textContent = `${ov.file} · run ${ov.run}` + (ov.runs.length > 1 ? ` (of ${ov.runs.join(", ")})` : "") +
    ` · ${ov.n_cells} cells · saves to ${ov.save_target}`;
  $("save-state").textContent = ov.curated_at ? `last saved by ${ov.curated_by}, ${ov.curated_at}` : "not reviewed yet";
  const [rows, cols] = ov.frame_shape;
  for (const [name, data] of Object.entries(ov.images)) imageCanvases[name] = grayCanvas(bytesOf(data), rows, cols);
  const canvas = $("image");
  const room = Math.min(640, Math.max(320, window.innerHeight - 360, (window.innerWidth - 40) * 0.45));
  state.scale = Math.min(room / rows, room / cols);
  canvas.width = $("overlay").width = Math.round(cols * state.scale);
  canvas.height = $("overlay").height = Math.round(rows * state.scale);
  $("left").style.width = `${Math.max(canvas.width, 360)}px`;  // the bar above wraps to the image's width
  [state.paths, state.centroids] = buildPaths(ov.contours);
  [state.elimPaths, state.elimCentroids] = buildPaths(ov.eliminated.contours);
  buildKinds();
  buildHeader();
  updateOrder();
  updateCounts();
  drawImage();
  window.reviewTimings.firstPaint = performance.now();

  $("overlay").addEventListener("click", (event) => select(cellAt(event)).catch(showError));
  $("table-rows").addEventListener("click", (event) => {
    const row = event.target.closest(".row");
    if (row) select({ elim: false, i: Number(row.dataset.i) }).catch(showError);
  });
  $("table-scroll").addEventListener("scroll", renderRows);
  document.querySelectorAll('input[name="image"]').forEach((input) => {
    input.onchange = () => { state.image = input.value; drawImage(); };
  });
  $("show-eliminated").onchange = (event) => { state.showEliminated = event.target.checked; drawImage(); };
  $("filter").addEventListener("input", (event) => {
    try {
      state.filter = parseFilter(event.target.value);
      event.target.classList.remove("bad");
      updateOrder();
      drawImage();
    } catch (error) {
      event.target.classList.add("bad");
      $("filter-state").textContent = error.message;
    }
  });
  $("filter").addEventListener("keydown", (event) => { if (event.key === "Escape" || event.key === "Enter") event.target.blur(); });
  $("bulk-accept").onclick = () => setStatus(state.order.slice(), 1);
  $("bulk-reject").onclick = () => setStatus(state.order.slice(), 2);
  $("save").onclick = save;
  bindKeys();
  bindTraceMouse();
  window.addEventListener("beforeunload", (event) => { if (state.dirty) { event.preventDefault(); event.returnValue = ""; } });
  window.addEventListener("resize", drawTrace);
}

start().catch(showError);
