// The status page: polls the JSON beside it (relative URLs, so it works at / of the debug
// listener and under /_cistern/ of the main one) and fills the page. No library, no build
// step; text goes in through textContent only, never as HTML.
"use strict";

const POLL_MS = { summary: 2000, fills: 1000, problems: 5000, repositories: 10000, history: 30000 };
const PER_PAGE = 50;
let range = "24h";
let repoPage = 1;
let lastHistory = null;

const $ = (id) => document.getElementById(id);

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : 1)) + " " + units[i];
}
function count(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
function percent(r) { return r == null ? "–" : (r * 100).toFixed(1) + " %"; }
function duration(s) {
  if (s < 60) return Math.round(s) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function ago(iso) {
  if (!iso) return "–";
  const s = (Date.now() - Date.parse(iso)) / 1000;
  return s < 5 ? "just now" : duration(Math.max(s, 0)) + " ago";
}

// Sets a figure's text, and its raw number in data-value (what tests compare with metrics).
function figure(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function every(ms, task) {
  const run = async () => {
    try { await task(); } catch (e) { $("updated").textContent = "error: " + e.message; $("updated").classList.add("bad"); }
    setTimeout(run, ms);
  };
  run();
}

async function summary() {
  const s = await getJSON("api/summary");
  const a = s.answers;
  figure("hit-ratio", percent(a.hit_ratio), a.hit_ratio == null ? "" : a.hit_ratio);
  figure("hit-detail", count(a.from_cache) + " of " + count(a.requests) + " from storage");
  figure("requests", count(a.requests), a.requests);
  figure("requests-detail", count(a.hit) + " hit · " + count(a.miss) + " miss · " + count(a.joined) + " joined · " + count(a.revalidated) + " reval. · " + count(a.stale) + " stale");
  figure("avoided", count(a.upstream_requests_avoided), a.upstream_requests_avoided);
  figure("bytes-cache", bytes(s.served_bytes_from_cache), s.served_bytes_from_cache);
  figure("bytes-upstream", bytes(s.served_bytes_from_upstream), s.served_bytes_from_upstream);
  const served = s.served_bytes_from_cache + s.served_bytes_from_upstream;
  figure("bytes-share", served ? percent(s.served_bytes_from_cache / served) + " of bytes served" : "nothing served yet");
  const st = s.storage;
  figure("storage-used", bytes(st.used_bytes), st.used_bytes);
  $("storage-bar").style.width = st.budget_bytes ? Math.min(100, 100 * st.used_bytes / st.budget_bytes) + "%" : "0";
  figure("storage-detail", (st.budget_bytes ? "of " + bytes(st.budget_bytes) + " budget" : "no budget") +
    " · " + count(st.objects) + " objects · pinned " + bytes(st.pinned_bytes) + (st.full ? " · FULL" : ""));
  $("storage-detail").classList.toggle("bad", st.full);
  figure("evicted", count(st.evicted_images) + " images", st.evicted_images);
  figure("evicted-detail", bytes(st.evicted_bytes) + " freed");
  const p = s.prewarm;
  figure("prewarm", count(p.images_checked) + " checks", p.images_checked);
  figure("prewarm-detail", p.runs ? count(p.runs) + " runs · " + count(p.images_moved) + " moved · " + bytes(p.fetched_bytes) + " fetched · " + count(p.errors) + " errors · last " + new Date(p.last_run * 1000).toLocaleTimeString() : "no pre-warm run yet");
  $("prewarm-detail").classList.toggle("bad", p.errors > 0);
  figure("fills-count", count(s.fills_in_flight), s.fills_in_flight);
  figure("uptime", "up " + duration(s.uptime_seconds));
  registries(s.registries);
  $("updated").textContent = "updated " + new Date(s.time).toLocaleTimeString();
  $("updated").classList.remove("bad");
}

function registries(list) {
  const body = $("registries").tBodies[0];
  body.replaceChildren();
  for (const r of list) {
    const row = body.insertRow();
    row.dataset.registry = r.registry;
    cell(row, r.registry);
    cell(row, count(r.answers.requests), "n");
    cell(row, percent(r.answers.hit_ratio), "n");
    cell(row, count(r.upstream_requests), "n");
    cell(row, count(r.upstream_errors), "n" + (r.upstream_errors ? " bad" : ""));
    cell(row, count(r.stale_serves), "n");
    cell(row, bytes(r.upstream_fetched_bytes), "n");
    cell(row, r.ratelimit_remaining == null ? "not reported" : count(r.ratelimit_remaining) + " / " + count(r.ratelimit_limit), "n");
  }
}

async function fills() {
  const { fills } = await getJSON("api/fills");
  const body = $("fills").tBodies[0];
  body.replaceChildren();
  for (const f of fills) {
    const row = body.insertRow();
    row.className = "fill";
    row.dataset.digest = f.digest;
    row.dataset.bytes = String(f.bytes);
    cell(row, f.repository);
    cell(row, f.digest.replace(/^sha256:/, "").slice(0, 12)).title = f.digest;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = f.total ? (100 * f.bytes / f.total).toFixed(1) + "%" : "0";
    const label = document.createElement("em");
    label.textContent = bytes(f.bytes) + " of " + (f.total == null ? "?" : bytes(f.total)) + (f.state === "connecting" ? " (connecting)" : "");
    bar.append(fill, label);
    row.insertCell().append(bar);
    cell(row, bytes(f.bytes_per_second) + "/s", "n");
    cell(row, count(f.clients), "n");
  }
  $("fills-empty").hidden = fills.length > 0;
}

async function problems() {
  const { problems } = await getJSON("api/problems");
  const body = $("problems").tBodies[0];
  body.replaceChildren();
  for (const p of problems.slice(0, 50)) {
    const row = body.insertRow();
    cell(row, new Date(p.time).toLocaleString()).title = p.time;
    const kind = document.createElement("span");
    kind.className = "kind " + p.kind;
    kind.textContent = p.kind.replace("_", " ");
    row.insertCell().append(kind);
    cell(row, p.repository || "–");
    cell(row, p.message, "msg");
  }
  $("problems-empty").hidden = problems.length > 0;
}

async function repositories() {
  const q = $("search").value;
  const params = new URLSearchParams({ q, page: String(repoPage), per_page: String(PER_PAGE) });
  const answer = await getJSON("api/repositories?" + params);
  const body = $("repositories").tBodies[0];
  body.replaceChildren();
  for (const r of answer.repositories) {
    const row = body.insertRow();
    row.className = "repository";
    row.dataset.name = r.name;
    cell(row, r.name);
    const tags = row.insertCell();
    tags.className = "tags";
    for (const t of r.tags.slice(0, 12)) {
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = t;
      tags.append(tag);
    }
    if (r.tags.length > 12) tags.append(" +" + (r.tags.length - 12));
    if (!r.tags.length) tags.textContent = "(by digest)";
    cell(row, bytes(r.bytes), "n");
    cell(row, ago(r.last_pulled), "n").title = r.last_pulled || "";
    cell(row, count(r.pulls), "n");
  }
  const pages = Math.max(1, Math.ceil(answer.total / PER_PAGE));
  $("page-info").textContent = count(answer.total) + " repositories · page " + repoPage + " of " + pages + (answer.complete ? "" : " (index still building)");
  $("prev").disabled = repoPage <= 1;
  $("next").disabled = repoPage >= pages;
}

// --- plots -------------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
const H = 160, PAD = 18;

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

// The points of the chosen range, oldest first, with the current figures last.
function rangePoints(h) {
  const span = { "3h": 3 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 }[range];
  const source = span > 86400 ? h.hours : h.minutes;
  const from = h.now.time - span;
  return source.filter((p) => p.time >= from && p.time < h.now.time).concat([h.now]);
}

// Differences between successive cumulative points (counters restart at 0 with the process).
function deltas(points, key) {
  const out = [];
  for (let i = 1; i < points.length; i++) {
    const d = points[i][key] - points[i - 1][key];
    out.push({ time: points[i].time, value: d >= 0 ? d : points[i][key] });
  }
  return out;
}

function plot(svg, series, opts) {
  svg.replaceChildren();
  // Drawn at the size it is shown, so text and lines keep their proportions.
  const W = Math.max(200, Math.round(svg.getBoundingClientRect().width) || 600);
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const all = series.flatMap((s) => s.data);
  if (all.length < 1) {
    svg.append(Object.assign(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "label" }), { textContent: "collecting data (a point a minute)…" }));
    return;
  }
  const t0 = Math.min(...all.map((p) => p.time)), t1 = Math.max(...all.map((p) => p.time));
  const max = opts.max ?? Math.max(1, ...all.map((p) => p.value));
  const x = (t) => (t1 === t0 ? W - PAD : PAD + (W - 2 * PAD) * (t - t0) / (t1 - t0));
  const y = (v) => H - PAD - (H - 2 * PAD) * (v / max);
  for (const f of [0, 0.5, 1]) {
    svg.append(svgEl("line", { x1: PAD, x2: W - PAD, y1: y(max * f), y2: y(max * f), class: "grid" }));
    svg.append(Object.assign(svgEl("text", { x: 2, y: y(max * f) - 2, class: "label" }), { textContent: opts.format(max * f) }));
  }
  for (const s of series) {
    if (!s.data.length) continue;
    const d = s.data.map((p, i) => (i ? "L" : "M") + x(p.time).toFixed(1) + "," + y(p.value).toFixed(1)).join(" ");
    if (s.area) svg.append(svgEl("path", { d: d + ` L${x(s.data[s.data.length - 1].time)},${y(0)} L${x(s.data[0].time)},${y(0)} Z`, class: "area " + s.cls }));
    svg.append(svgEl("path", { d: s.data.length === 1 ? d + " h1" : d, class: "line " + s.cls }));
  }
  const when = (t) => new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  svg.append(Object.assign(svgEl("text", { x: PAD, y: H - 4, class: "label" }), { textContent: when(t0) }));
  svg.append(Object.assign(svgEl("text", { x: W - PAD, y: H - 4, "text-anchor": "end", class: "label" }), { textContent: when(t1) }));
}

function drawHistory() {
  if (!lastHistory) return;
  const points = rangePoints(lastHistory);
  const requests = deltas(points, "requests"), fromCache = deltas(points, "from_cache");
  const ratio = requests.map((r, i) => ({ time: r.time, value: r.value ? fromCache[i].value / r.value * 100 : 0 })).filter((_, i) => requests[i].value > 0);
  plot($("plot-ratio"), [{ data: ratio, cls: "cache", area: true }], { max: 100, format: (v) => v.toFixed(0) + "%" });
  plot($("plot-bytes"), [
    { data: deltas(points, "served_bytes_from_cache"), cls: "cache", area: true },
    { data: deltas(points, "served_bytes_from_upstream"), cls: "upstream" },
  ], { format: bytes });
  const registries = [...new Set(points.flatMap((p) => Object.keys(p.ratelimit_remaining)))];
  plot($("plot-quota"), registries.map((r, i) => ({
    data: points.filter((p) => r in p.ratelimit_remaining).map((p) => ({ time: p.time, value: p.ratelimit_remaining[r] })),
    cls: i % 2 ? "upstream" : "cache",
  })), { format: count });
}

async function loadHistory() {
  lastHistory = await getJSON("api/history");
  drawHistory();
}

window.addEventListener("resize", () => drawHistory());

// --- wiring ------------------------------------------------------------------------------

function wire() {
  const url = new URL(location.href);
  $("search").value = url.searchParams.get("q") || "";
  let typing;
  $("search").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      repoPage = 1;
      const u = new URL(location.href);
      if ($("search").value) u.searchParams.set("q", $("search").value); else u.searchParams.delete("q");
      window.history.replaceState(null, "", u);
      repositories().catch(() => {});
    }, 250);
  });
  $("prev").addEventListener("click", () => { repoPage = Math.max(1, repoPage - 1); repositories().catch(() => {}); });
  $("next").addEventListener("click", () => { repoPage += 1; repositories().catch(() => {}); });
  for (const button of $("ranges").querySelectorAll("button")) {
    button.addEventListener("click", () => {
      range = button.dataset.range;
      for (const b of $("ranges").querySelectorAll("button")) b.classList.toggle("on", b === button);
      drawHistory();
    });
  }
  every(POLL_MS.summary, summary);
  every(POLL_MS.fills, fills);
  every(POLL_MS.problems, problems);
  every(POLL_MS.repositories, repositories);
  every(POLL_MS.history, loadHistory);
}

document.addEventListener("DOMContentLoaded", wire);
