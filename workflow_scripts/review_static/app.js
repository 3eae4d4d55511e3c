// tractmap-review: one held biopsy's page. The server embeds the data; every decision is sent as JSON
// and validated there (workflow_scripts/review_app.py); this script only draws and collects.
"use strict";
// the token now lives in the cookie: keep the URL without it in the address bar and the history
if (location.search) history.replaceState(null, "", location.pathname + location.hash);
const D = JSON.parse(document.getElementById("data").textContent);
const SVGNS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const ids = { participant_id: D.participant_id, biopsy_id: D.biopsy_id };
const base = `/img/${encodeURIComponent(D.participant_id)}/${encodeURIComponent(D.biopsy_id)}`;
const T = D.tract;
const [W, H] = [T.shape[1], T.shape[0]];
let state; // flipped, t0, t1, moved, stroke

function fromDecision(d) {
  const s = { flipped: false, t0: T.t0.slice(), t1: T.t1.slice(), moved: false, stroke: "" };
  if (d) {
    s.flipped = d.dye_end === D.orient.other_side;
    if (d.points) { s.t0 = d.points[0]; s.t1 = d.points[1]; s.moved = true; }
    if (d.stroke_mm !== undefined) s.stroke = String(d.stroke_mm);
  }
  return s;
}

// ---------------------------------------------------------------- drawing
function el(parent, name, attrs) {
  const e = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  parent.appendChild(e);
  return e;
}

const [SW, SH] = D.wsi_size;
const S = D.slide;
const dyedEnd = () => (state.flipped ? 1 - D.orient.dyed : D.orient.dyed);

// every core of the slide, as the cores step measured it (a box along its axis), each named
function drawCores() {
  const g = $("slide-cores");
  const r = Math.max(SW, SH) / 60;
  for (const c of S.cores) {
    const mine = c.position === S.this;
    const deg = (Math.atan2(c.axis[1], c.axis[0]) * 180) / Math.PI;
    el(g, "rect", { class: mine ? "core this" : "core other", x: -c.length / 2, y: -c.width / 2, width: c.length,
      height: c.width, fill: "none", stroke: mine ? "#ffd400" : "#00c8ff", "stroke-width": r / (mine ? 5 : 8),
      "stroke-dasharray": mine ? "none" : `${r / 2} ${r / 3}`,
      transform: `translate(${c.centre[0]} ${c.centre[1]}) rotate(${deg})` });
    // above the core, kept inside the image (a name cut at its edge cannot be read)
    const t = el(g, "text", { x: Math.min(Math.max(c.centre[0], SW * 0.15), SW * 0.85),
      y: Math.max(c.centre[1] - c.width / 2 - r / 2, r * 1.5), fill: mine ? "#ffd400" : "#00c8ff",
      "font-size": r * 1.4, "text-anchor": "middle" });
    t.textContent = (c.names.join(", ") || `core ${c.position}`) + (mine ? " (this biopsy)" : "");
  }
}

function drawSlide() {
  const [sw, sh] = [SW, SH];
  $("slide").setAttribute("viewBox", slideView.vb.join(" "));
  $("oriented").className = state.flipped ? "flipped" : "";
  const g = $("slide-overlay");
  g.replaceChildren();
  const [a, b] = D.orient.ends;
  const r = Math.max(sw, sh) / 60;
  el(g, "line", { x1: a[0], y1: a[1], x2: b[0], y2: b[1], stroke: "#ffd400", "stroke-width": r / 4,
    "stroke-dasharray": `${r} ${r / 2}` });
  // the dye mass the orientation counted in from each end, along the axis (thumbnail px)
  const len = Math.hypot(b[0] - a[0], b[1] - a[1]) || 1;
  const u = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
  D.orient.ends.forEach((p, i) => {
    const m = Math.min(S.dye_mass[i] || 0, len / 2) * (i === 0 ? 1 : -1);
    if (m) el(g, "line", { class: "dye-mass", x1: p[0], y1: p[1], x2: p[0] + u[0] * m, y2: p[1] + u[1] * m,
      stroke: "#00ff00", "stroke-opacity": 0.6, "stroke-width": r * 0.8 });
  });
  const dyed = dyedEnd();
  D.orient.ends.forEach((p, i) => {
    el(g, "circle", { id: i === dyed ? "dyed-end" : "undyed-end", cx: p[0], cy: p[1], r,
      fill: i === dyed ? "#1e64ff" : "none", stroke: "#fff", "stroke-width": r / 4 });
    // both labels below their ends (the core's name is above it), on two lines so that they never overlap, each
    // running towards the image's middle and kept inside it, so that the image edge never cuts it
    const inward = p[0] > sw / 2;
    const y = p[1] + r * (i === 0 ? 2.6 : 4.3);
    const x = inward ? Math.min(p[0] + r, sw) : Math.max(p[0] - r, 0);
    const t = el(g, "text", { x, y: Math.min(Math.max(y, r * 2), sh - r / 2),
      fill: "#fff", "font-size": r * 1.4, "text-anchor": inward ? "end" : "start", stroke: "#000",
      "stroke-width": r / 12, "paint-order": "stroke" });
    t.textContent = `${endSide(i)} end: ${i === dyed ? "dyed" : "not dyed"} (dye ${Math.round(S.dye_mass[i] || 0)} px)`;
  });
  drawTiles();
  const side = state.flipped ? D.orient.other_side : D.orient.found_side;
  $("slide-legend").textContent = `dyed end: ${side}` +
    (state.flipped ? ` (your flip; the pipeline found the ${D.orient.found_side} end)` : " (as the pipeline found it)") +
    `; orientation ${STATE_WORDS[D.orient.state] || D.orient.state}, confidence ${D.orient.confidence.toFixed(2)}`;
}
// each end is named by the side of the slide it lies on, which a flip does not change
function endSide(i) { return i === D.orient.dyed ? D.orient.found_side : D.orient.other_side; }
const STATE_WORDS = { review: "held for review", accepted: "accepted by the pipeline",
  override: "set in biopsies.tsv or by a review", failed: "failed" };

// ---------------------------------------------------------------- full-resolution tiles at the core's ends
const tiles = { level: S.level, views: [null, null] };
function drawTiles() {
  const dyed = dyedEnd();
  [0, 1].forEach((i) => {
    const svg = $(`tile-${i}`);
    // the tile of the slide's left (or top) end on the left
    svg.parentNode.style.order = ["right", "bottom"].includes(endSide(i)) ? 2 : 1;
    const box = S.tiles[String(tiles.level)][i];
    const [w, h] = box.size;
    if (!tiles.views[i] || tiles.views[i].level !== tiles.level) tiles.views[i] = { level: tiles.level, vb: [0, 0, w, h] };
    svg.setAttribute("viewBox", tiles.views[i].vb.join(" "));
    const img = svg.querySelector("image");
    const href = `/tile/${encodeURIComponent(D.participant_id)}/${encodeURIComponent(D.biopsy_id)}/${i}/${tiles.level}`;
    if (img.getAttribute("href") !== href) {
      img.setAttribute("href", href);
      img.setAttribute("width", w);
      img.setAttribute("height", h);
    }
    const g = svg.querySelector(".mark");
    g.replaceChildren();
    const [x, y] = box.end;
    const r = Math.max(w, h) / 25;
    const colour = i === dyed ? "#1e64ff" : "#ffffff";
    el(g, "circle", { cx: x, cy: y, r, fill: "none", stroke: colour, "stroke-width": r / 5 });
    el(g, "line", { x1: x - 2 * r, y1: y, x2: x - r, y2: y, stroke: colour, "stroke-width": r / 5 });
    el(g, "line", { x1: x + r, y1: y, x2: x + 2 * r, y2: y, stroke: colour, "stroke-width": r / 5 });
    const was = i === D.orient.dyed ? "dyed" : "not dyed";
    const now = i === dyed ? "dyed" : "not dyed";
    $(`tile-${i}-label`).textContent = `${endSide(i)} end: ${now}` +
      (now !== was ? ` (changed by your flip; the pipeline found it ${was})` : "") +
      `. ${Math.round(w * box.um_per_px)} µm across, ${box.um_per_px.toPrecision(3)} µm/px (level ${tiles.level})`;
    $(`tile-${i}-label`).className = now !== was ? "changed" : "";
  });
}
function levelButtons() {
  const span = $("levels");
  for (const lv of S.levels) {
    const b = document.createElement("button");
    b.textContent = `${lv.um_per_px.toPrecision(3)} µm/px`;
    b.dataset.level = lv.level;
    b.onclick = () => { tiles.level = lv.level; markLevel(); drawTiles(); };
    span.appendChild(b);
  }
  markLevel();
}
function markLevel() {
  for (const b of $("levels").children) b.className = Number(b.dataset.level) === tiles.level ? "on" : "";
}

// ---------------------------------------------------------------- ultrasound: pre-fire, post-fire, blended
const slideView = { vb: [0, 0, SW, SH] };
const view = { blend: 0, vb: [0, 0, W, H] };
function drawUS() {
  const svg = $("us");
  svg.setAttribute("viewBox", view.vb.join(" "));
  // T0/T1 are pre-fire px; the post-fire frame is laid where the run aligned the two frames, over the pre-fire
  const s = T.post_shift;
  const post = $("us-post");
  post.setAttribute("transform", `translate(${-s[0]} ${-s[1]})`);
  post.setAttribute("opacity", view.blend / 100);
  $("us-pre").setAttribute("opacity", view.blend === 100 ? 0 : 1);
  $("blend").value = view.blend;
  $("show-pre").className = view.blend === 0 ? "on" : "";
  $("show-post").className = view.blend === 100 ? "on" : "";
  const r = Math.max(3, view.vb[2] / 70);
  const [p0, p1] = [state.t0, state.t1];
  for (const [id, p] of [["t0", p0], ["t1", p1]]) {
    const c = $(id);
    c.setAttribute("cx", p[0]); c.setAttribute("cy", p[1]); c.setAttribute("r", r);
    c.setAttribute("stroke-width", r / 4);
    const t = $(`${id}-label`);
    t.setAttribute("x", p[0] + r * 1.2); t.setAttribute("y", p[1] - r * 1.2); t.setAttribute("font-size", r * 2.2);
  }
  const ax = $("axis");
  ax.setAttribute("x1", p0[0]); ax.setAttribute("y1", p0[1]); ax.setAttribute("x2", p1[0]); ax.setAttribute("y2", p1[1]);
  ax.setAttribute("stroke-width", r / 3);
  const v = tractValues();
  $("tract-values").textContent = `T0 at (${v.tip_x.toFixed(1)}, ${v.tip_y.toFixed(1)}) DICOM px, axis ` +
    `${v.axis_deg.toFixed(1)} deg, sampled length ${v.override_length_mm.toFixed(2)} mm` +
    (state.moved ? " (moved by you, not saved yet)" :
      ` (as the pipeline found it; the tract is ${STATE_WORDS[T.state] || T.state})`);
}

function draw() {
  drawSlide();
  drawUS();
  $("save").disabled = !state.moved;
  $("stroke").value = state.stroke;
  markStroke();
  const d = D.decision;
  $("current").textContent = d
    ? `Decision: ${d.decision} by ${d.reviewer} at ${d.decided_at}` + (d.exclude ? ` (${d.exclude})` : "")
    : "No decision yet.";
  $("keeps").textContent = keeps();
  $("flip").textContent = D.held.includes("orient") ? "Flip dyed end (f)" : "Flip the accepted dyed end (f)";
}

// what a save keeps besides the action's own change: every held step as the page shows it, said before saving
function keeps() {
  const v = values("confirm");
  const parts = [];
  if (v.dye_end) parts.push(`the dyed end at ${v.dye_end}` + (D.held.includes("orient") ? " (orientation held)" : ""));
  if (v.override_length_mm !== undefined) {
    parts.push(`T0 to T1 ${v.override_length_mm.toFixed(2)} mm as shown` + (D.held.includes("tract") ? " (tract held)" : ""));
  }
  if (v.stroke_mm !== undefined) parts.push(`a gun stroke of ${v.stroke_mm} mm`);
  const label = D.held.includes("transfer") ? " The label's own evidence is held: a save decides both steps as shown." : "";
  return (parts.length ? `Confirm, Flip and Save T0/T1 also keep ${parts.join(", ")}.` : "") + label;
}

// ---------------------------------------------------------------- values sent
function tractValues() {
  const [sx, sy] = T.mm_per_px;
  const dx = (state.t1[0] - state.t0[0]) * sx;
  const dy = (state.t1[1] - state.t0[1]) * sy;
  const round = (x, n) => Math.round(x * 10 ** n) / 10 ** n;
  return {
    tip_x: round(state.t0[0] + T.origin[0], 2),
    tip_y: round(state.t0[1] + T.origin[1], 2),
    axis_deg: round((Math.atan2(dy, dx) * 180) / Math.PI, 3),
    override_length_mm: round(Math.hypot(dx, dy), 3),
  };
}

function values(decision) {
  const v = { ...ids, decision };
  if (decision === "exclude") {
    v.exclude = $("exclude-reason").value;
    return v;
  }
  // a label held for its own evidence (step transfer: the core's length, tissue left over) is confirmed by
  // deciding both steps as shown
  const label = D.held.includes("transfer");
  if (D.held.includes("orient") || label || state.flipped) v.dye_end = state.flipped ? D.orient.other_side : D.orient.found_side;
  if (D.held.includes("tract") || label || state.moved) Object.assign(v, tractValues());
  if (state.stroke !== "") v.stroke_mm = Number(state.stroke);
  return v;
}

const kind = () => (state.moved ? "correct" : state.flipped ? "flip" : "confirm");

// ---------------------------------------------------------------- server
function say(text, kind) {
  $("status").textContent = text;
  $("status").className = kind === true ? "error" : kind || "";
}

class Refusal extends Error {
  constructor(status, body) {
    super(body.error || `the app answered ${status}`);
    Object.assign(this, { status, body });
  }
}

// a write names the version of the decision the page shows (If-Match); the answer's ETag is the next one
async function post(path, body, write) {
  const headers = { "Content-Type": "application/json" };
  if (write) headers["If-Match"] = D.version;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  if (!r.ok) throw new Refusal(r.status, await r.json().catch(() => ({ error: r.statusText })));
  if (write && r.headers.get("ETag")) D.version = r.headers.get("ETag");
  return r;
}

// a refusal, said on the page: a stale page offers a reload; the pipeline's warnings offer "save anyway"
function refused(e, what, onCancel) {
  if (e.status === 422 && e.body.warnings) return warn(e.body, onCancel);
  say(`${what}: ${e.message}`, true);
  $("reload").hidden = !(e.body && e.body.reload);
  if (onCancel) onCancel();
}

let pending = null; // the values waiting for "save anyway", and how to take the change back on cancel
function warn(body, onCancel) {
  const list = $("warning-list");
  list.replaceChildren(...body.warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  $("warnings").hidden = false;
  pending.seen = body.seen;
  pending.onCancel = onCancel;
  say("Not saved yet: the pipeline's own checks warn (above). Save anyway, or cancel and change it.", "note");
  $("save-anyway").focus();
}

function clearWarning() {
  $("warnings").hidden = true;
  pending = null;
}

async function save(decision, onCancel) {
  const v = values(decision);
  if (pending && pending.seen && pending.decision === decision) v.warnings_seen = pending.seen;
  pending = { decision };
  try {
    const r = await post("/api/decision", v, true);
    D.decision = await r.json();
    clearWarning();
    $("reload").hidden = true;
    draw();
    const changed = r.headers.get("X-Tractmap-Normalised");
    say(`Saved: ${D.decision.decision}.` + (changed ? ` Tabs and line breaks in the ${changed === "exclude" ?
      "reason" : changed} were saved as single spaces.` : "") +
      (D.decision.warnings_seen ? " The warning is kept with the decision." : ""), changed ? "note" : "");
    if (changed === "exclude") $("exclude-reason").value = D.decision.exclude;
  } catch (e) {
    if (!(e instanceof Refusal)) return say(`Not saved: ${e.message}`, true);
    refused(e, "Not saved", onCancel);
  }
}

let previewing = 0;
async function preview() {
  const n = ++previewing;
  try {
    const r = await post("/api/preview", values(kind()), false);
    const url = URL.createObjectURL(await r.blob());
    if (n === previewing) {
      $("preview").src = url;
      $("preview-label").textContent = "preview of these T0/T1 (not saved yet: Save)";
      const said = JSON.parse(r.headers.get("X-Tractmap-Warnings") || "[]");
      $("preview-warnings").hidden = !said.length;
      $("preview-warnings").textContent = said.join(" ");
    }
  } catch (e) {
    say(`No preview: ${e.message}`, true);
  }
}

// the decision before is current again; the page shows it without a reload (nothing in flight is cut off)
async function undo() {
  try {
    const r = await post("/api/undo", ids, true);
    D.decision = await r.json();
    state = fromDecision(D.decision);
    clearWarning();
    draw();
    $("preview").src = `${base}/crop`;
    $("preview-label").textContent = "as the run made it";
    $("preview-warnings").hidden = true;
    if (state.moved) preview();
    say(D.decision ? `Undone: the ${D.decision.decision} before it is current again.` : "Undone: no decision now.");
  } catch (e) {
    if (!(e instanceof Refusal)) return say(`Nothing undone: ${e.message}`, true);
    refused(e, "Nothing undone");
  }
}

// ---------------------------------------------------------------- interaction
function svgPoint(evt, node) {
  const m = node.getScreenCTM().inverse();
  const p = new DOMPoint(evt.clientX, evt.clientY).matrixTransform(m);
  return [Math.min(Math.max(p.x, 0), W - 1), Math.min(Math.max(p.y, 0), H - 1)];
}

for (const id of ["t0", "t1"]) {
  const c = $(id);
  c.addEventListener("pointerdown", (e) => {
    c.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  c.addEventListener("pointermove", (e) => {
    if (!c.hasPointerCapture(e.pointerId)) return;
    state[id] = svgPoint(e, $("us-overlay"));
    state.moved = true;
    drawUS();
  });
  c.addEventListener("pointerup", (e) => {
    if (!c.hasPointerCapture(e.pointerId)) return;
    c.releasePointerCapture(e.pointerId);
    draw();
    preview();
  });
}

// zoom: the view box of an SVG shrinks or grows about a point (the centre, or the pointer)
function zoom(v, size, redraw, f, cx, cy) {
  const [x, y, w, h] = v.vb;
  cx = cx === undefined ? x + w / 2 : cx;
  cy = cy === undefined ? y + h / 2 : cy;
  const k = Math.min(size[0] * 2, Math.max(8, w * f)) / w;
  v.vb = [cx - (cx - x) * k, cy - (cy - y) * k, w * k, h * k];
  redraw();
}
function wheelZoom(svg, v, size, redraw) {
  svg.addEventListener("wheel", (e) => {
    e.preventDefault();
    const p = new DOMPoint(e.clientX, e.clientY).matrixTransform(svg.getScreenCTM().inverse());
    zoom(v, size, redraw, e.deltaY < 0 ? 0.8 : 1.25, p.x, p.y);
  });
}
wheelZoom($("us"), view, [W, H], drawUS);
wheelZoom($("slide"), slideView, [SW, SH], drawSlide);
$("zoom-in").onclick = () => zoom(view, [W, H], drawUS, 0.5);
$("zoom-out").onclick = () => zoom(view, [W, H], drawUS, 2);
$("zoom-reset").onclick = () => { view.vb = [0, 0, W, H]; drawUS(); };
const blend = (v) => { view.blend = v; drawUS(); };
$("show-pre").onclick = () => blend(0);
$("show-post").onclick = () => blend(100);
$("blend").oninput = () => blend(Number($("blend").value));
for (const i of [0, 1]) {
  const v = { get vb() { return tiles.views[i].vb; }, set vb(x) { tiles.views[i].vb = x; } };
  wheelZoom($(`tile-${i}`), v, [1024, 1024], drawTiles);
}
const evidence = (on) => {
  $("show-evidence").checked = on;
  $("slide-evidence").style.display = on ? "" : "none";
};
$("show-evidence").onchange = () => evidence($("show-evidence").checked);

const unflip = () => { state.flipped = !state.flipped; draw(); };
const actions = {
  confirm: () => save(kind()),
  // on an orientation the pipeline accepted, the app answers with its call and confidence first (save anyway)
  flip: () => { state.flipped = !state.flipped; draw(); save(kind(), unflip); },
  save: () => state.moved && save("correct"),
  undo,
  exclude: () => {
    if (!$("exclude-reason").value.trim()) return say("give a reason to exclude", true);
    save("exclude");
  },
  next: () => { if (D.next) location.href = D.next; },
  blend: () => blend(view.blend < 50 ? 100 : 0),
  evidence: () => evidence(!$("show-evidence").checked),
};
for (const id of ["confirm", "flip", "save", "undo", "exclude"]) $(id).onclick = actions[id];
$("save-anyway").onclick = () => pending && save(pending.decision, pending.onCancel);
$("cancel-warning").onclick = () => {
  const back = pending && pending.onCancel;
  clearWarning();
  if (back) back();
  say("Not saved.");
};
$("reload").onclick = () => location.reload();
$("stroke").oninput = () => { state.stroke = $("stroke").value.trim(); markStroke(); $("keeps").textContent = keeps(); };
// one-click gun strokes (this biopsy's, the config's, the usual guns'); a second click clears the choice
function markStroke() {
  for (const b of $("strokes").children) b.className = b.dataset.mm === state.stroke ? "on" : "";
}
for (const mm of T.strokes) {
  const b = document.createElement("button");
  b.textContent = `${mm} mm`;
  b.dataset.mm = String(mm);
  b.onclick = () => {
    state.stroke = state.stroke === b.dataset.mm ? "" : b.dataset.mm;
    $("stroke").value = state.stroke;
    markStroke();
    $("keeps").textContent = keeps();
  };
  $("strokes").appendChild(b);
}
document.addEventListener("keydown", (e) => {
  const typing = e.target.tagName === "INPUT" && !["range", "checkbox"].includes(e.target.type);
  if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
  const a = { c: "confirm", f: "flip", s: "save", u: "undo", n: "next", b: "blend", e: "evidence" }[e.key];
  if (a) { e.preventDefault(); actions[a](); }
});

$("position").textContent = `${D.position[0]} of ${D.position[1]}`;
for (const k of ["prev", "next"]) if (D[k]) $(k).href = D[k]; else $(k).style.visibility = "hidden";
const reasons = $("reasons");
for (const r of D.reasons) {
  const li = document.createElement("li");
  li.textContent = `${r.step}: ${r.reason}`;
  reasons.appendChild(li);
}
$("preview").src = `${base}/crop`;
for (const [id, name, w, h] of [["slide-img", "wsi", SW, SH], ["slide-evidence", "evidence", SW, SH],
  ["us-pre", "prefire", W, H], ["us-post", "postfire", T.post_shape[1], T.post_shape[0]]]) {
  const img = $(id);
  img.setAttribute("href", `${base}/${name}`);
  img.setAttribute("width", w);
  img.setAttribute("height", h);
}
if (D.calibration.length) {
  $("calibration").hidden = false;
  $("calibration").textContent = `Ultrasound calibration: ${D.calibration.join("; ")}. Confirm (c) keeps this ` +
    "spacing with the tract as shown; to use the DICOM's instead, remove us_mm_per_px from biopsies.tsv and rerun.";
}
drawCores();
levelButtons();
$("oriented").src = `${base}/oriented`;
state = fromDecision(D.decision);
draw();
if (state.moved) preview();
// the page is drawn and its actions bound: ms since the navigation began (benchmarks/review_app_speed.py)
document.body.dataset.ready = String(performance.now());
