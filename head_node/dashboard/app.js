// zcompute dashboard: polls /api/state once a second and draws it; #job/ID shows one job's timeline.
// No libraries: tables are built with the DOM (textContent only, names come from peers) and charts
// are drawn on <canvas>.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // samples kept per chart: two minutes
const MAX_JOB_ROWS = 200;
const MAX_EVENT_ROWS = 2000;

// -- token: ?token= once, then sessionStorage, sent as a header (kept out of the address bar) ----------

const token = (() => {
  const url = new URL(window.location.href);
  const given = url.searchParams.get("token");
  if (given) {
    sessionStorage.setItem("zcompute-token", given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  return sessionStorage.getItem("zcompute-token");
})();

async function getJSON(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) {
    const text = (await response.text()).trim();
    throw new Error(text || response.status + " " + response.statusText);
  }
  return response.json();
}

// -- small helpers ---------------------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function seconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "–";
  if (s < 10) return s.toFixed(2) + " s";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + "m " + String(Math.floor(s % 60)).padStart(2, "0") + "s";
  return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + units[i];
}

const percent = (r) => (r === null || r === undefined ? "–" : (100 * r).toFixed(1) + " %");
const fixed = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

// -- charts ----------------------------------------------------------------------------------------------

class Series {
  constructor() { this.points = []; }
  push(t, v) {
    this.points.push([t, v]);
    if (this.points.length > HISTORY) this.points.shift();
  }
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function fitCanvas(canvas, height) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 200;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return [ctx, width];
}

function drawSpark(canvas, series, fixedMax) {
  const height = 44;
  const [ctx, width] = fitCanvas(canvas, height);
  const pts = series.points.filter(([, v]) => v !== null && isFinite(v));
  ctx.strokeStyle = css("--grid");
  ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(0, height - 0.5); ctx.lineTo(width, height - 0.5); ctx.stroke();
  if (pts.length < 2) return;
  const t1 = pts[pts.length - 1][0];
  const t0 = Math.max(pts[0][0], t1 - (HISTORY * POLL_MS) / 1000); // a young head's chart fills the card
  const max = fixedMax || Math.max(...pts.map(([, v]) => v)) || 1;
  const x = (t) => ((t - t0) / (t1 - t0)) * width;
  const y = (v) => height - 3 - (v / max) * (height - 8);
  ctx.beginPath();
  pts.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.strokeStyle = css("--accent");
  ctx.lineWidth = 1.5;
  ctx.stroke();
  ctx.lineTo(x(t1), height); ctx.lineTo(x(pts[0][0]), height); ctx.closePath();
  ctx.fillStyle = css("--accent-soft");
  ctx.fill();
}

// -- cluster figures ---------------------------------------------------------------------------------------

// Each card: a headline, a small text, and the value its chart follows (null: not measured).
const CARDS = [
  { id: "tps", title: "Tasks per second",
    value: (f, r) => fixed(r.tps, 1), sub: (f) => f.tasks_completed + " shards done", chart: (f, r) => r.tps },
  { id: "latency", title: "Job latency",
    value: (f) => seconds(f.job_latency_seconds.mean),
    sub: (f) => "p50 " + seconds(f.job_latency_seconds.p50) + " · p95 " + seconds(f.job_latency_seconds.p95),
    chart: (f) => f.job_latency_seconds.mean },
  { id: "success", title: "Success rate", max: 1,
    value: (f) => percent(f.task_success_ratio),
    sub: (f) => (f.job_success_ratio === null ? "no job finished yet" : percent(f.job_success_ratio) + " of jobs"),
    chart: (f) => f.task_success_ratio },
  { id: "util", title: "Utilization", max: 1,
    value: (f) => percent(f.utilization), sub: (f) => f.slots_in_use + " of " + f.slots + " slots",
    chart: (f) => f.utilization },
  { id: "reassign", title: "Reassignments",
    value: (f) => f.reassignments, sub: (f) => f.speculative_launches + " speculative launch" + (f.speculative_launches === 1 ? "" : "es"),
    chart: (f) => f.reassignments },
  { id: "auth", title: "Auth failures",
    value: (f) => f.auth_failures, sub: (f) => f.http_auth_failures + " on HTTP", chart: (f) => f.auth_failures },
  { id: "bytes", title: "Bytes moved",
    value: (f) => (f.bytes_sent === null ? "not measured" : bytes(f.bytes_sent + f.bytes_received)),
    sub: (f, r) => (r.bps === null ? "sent + received" : bytes(r.bps) + "/s"), chart: (f, r) => r.bps },
  { id: "compression", title: "Compression ratio",
    value: (f) => (f.compression_ratio === null ? "not measured" : fixed(f.compression_ratio, 2) + "×"),
    sub: (f) => (f.array_bytes_raw === null ? "raw / wire array bytes" : bytes(f.array_bytes_raw) + " raw"),
    chart: (f) => f.compression_ratio },
];

const cardViews = {};
const cardSeries = {};

function buildCards() {
  const box = $("figures");
  for (const card of CARDS) {
    const value = el("div", { class: "value" });
    const sub = el("div", { class: "sub muted" });
    const canvas = el("canvas", { class: "spark" });
    box.append(el("div", { class: "card", id: "card-" + card.id }, el("div", { class: "title" }, card.title),
      value, sub, canvas));
    cardViews[card.id] = { value, sub, canvas };
    cardSeries[card.id] = new Series();
  }
}

let previous = null; // the last state drawn
let lastSample = null; // the last {time, figures} put on the charts
let lastRates = { tps: null, bps: null };

function rates(sample, before) {
  const r = { tps: null, bps: null };
  if (!before || sample.time <= before.time) return r;
  const f = sample.figures;
  const b = before.figures;
  const dt = sample.time - before.time;
  r.tps = Math.max(0, f.tasks_completed - b.tasks_completed) / dt;
  if (f.bytes_sent !== null && b.bytes_sent !== null) {
    r.bps = Math.max(0, f.bytes_sent + f.bytes_received - b.bytes_sent - b.bytes_received) / dt;
  }
  return r;
}

function record(sample) {
  if (lastSample && sample.time <= lastSample.time) return;
  lastRates = rates(sample, lastSample);
  for (const card of CARDS) cardSeries[card.id].push(sample.time, card.chart(sample.figures, lastRates));
  lastSample = sample;
}

async function loadHistory() {
  try {
    for (const sample of (await getJSON("/api/history")).samples) record(sample);
  } catch (err) {
    // the first poll reports what is wrong
  }
}

function renderFigures(state) {
  for (const card of CARDS) {
    const view = cardViews[card.id];
    view.value.textContent = card.value(state.figures, lastRates);
    view.sub.textContent = card.sub(state.figures, lastRates);
    drawSpark(view.canvas, cardSeries[card.id], card.max);
  }
}

// -- tables ------------------------------------------------------------------------------------------------

function badge(state) {
  return el("span", { class: "badge " + state }, state);
}

function renderProviders(state) {
  const rows = [...state.providers].sort((a, b) => a.name.localeCompare(b.name));
  $("provider-count").textContent = rows.length ? "(" + rows.length + ")" : "";
  $("providers-empty").hidden = rows.length > 0;
  $("providers").querySelector("tbody").replaceChildren(...rows.map((p) => {
    const inUse = Math.max(0, p.slots - p.free_slots);
    const memory = p.memory_bytes ? bytes(p.memory_used) + " / " + bytes(p.memory_bytes) : bytes(p.memory_used);
    return el("tr", { "data-provider-id": p.provider_id },
      el("td", {}, p.name), el("td", {}, p.platform), el("td", {}, p.device || "–"),
      el("td", {}, p.local ? "this machine" : p.link_mbit ? p.link_mbit + " Mbit/s" : "–"), el("td", {}, badge(p.state)),
      el("td", {}, el("meter", { min: 0, max: p.slots || 1, value: inUse }), " " + inUse + " / " + p.slots),
      el("td", { class: "num" }, fixed(p.load, 2)), el("td", {}, memory),
      el("td", { class: "num" }, p.shards_done),
      el("td", { class: "num" }, seconds(Math.max(0, state.time - p.last_seen)) + " ago"));
  }));
}

const ORDER = { running: 0, queued: 1, failed: 2, cancelled: 3, succeeded: 4 };

function renderJobs(state) {
  const jobs = [...state.jobs].sort((a, b) =>
    (ORDER[a.status] ?? 9) - (ORDER[b.status] ?? 9) || b.submitted_at - a.submitted_at);
  $("job-count").textContent = jobs.length ? "(" + jobs.length + (jobs.length > MAX_JOB_ROWS
    ? ", newest " + MAX_JOB_ROWS + " shown)" : ")") : "";
  $("jobs-empty").hidden = jobs.length > 0;
  $("jobs").querySelector("tbody").replaceChildren(...jobs.slice(0, MAX_JOB_ROWS).map((j) =>
    el("tr", { "data-job-id": j.job_id },
      el("td", { class: "mono" }, el("a", { href: "#job/" + encodeURIComponent(j.job_id) }, j.job_id)),
      el("td", {}, j.task_type), el("td", {}, j.owner), el("td", {}, badge(j.status)),
      el("td", { class: "progress" }, el("progress", { max: j.progress_total || 1, value: j.progress_done }),
        el("span", { class: "muted" }, " " + j.progress_done + " / " + j.progress_total + " " + j.progress_unit
          + (j.progress_total === 1 ? "" : "s"))),
      el("td", { class: "num" }, seconds(j.elapsed)), el("td", { class: "num" }, j.reruns),
      el("td", { class: "num" }, j.speculated))));
}

// -- one job's page ----------------------------------------------------------------------------------------

const jobView = { id: null, events: [], offset: 0, loading: false, finished: false };

function openJob(id) {
  Object.assign(jobView, { id, events: [], offset: 0, loading: false, finished: false });
  $("events").querySelector("tbody").replaceChildren();
}

async function loadEvents() {
  if (!jobView.id || jobView.loading || jobView.finished) return;
  const id = jobView.id;
  jobView.loading = true;
  try {
    for (;;) {
      const page = await getJSON("/api/jobs/" + encodeURIComponent(id) + "/events?offset=" + jobView.offset);
      if (jobView.id !== id) return;
      jobView.events.push(...page.events);
      jobView.offset = page.next_offset;
      if (page.events.some((e) => e.event === "finish")) jobView.finished = true;
      if (page.events.length < 1000) break;
    }
  } finally {
    if (jobView.id === id) jobView.loading = false;
  }
}

function providerNames(state) {
  const names = {};
  for (const p of state.providers) names[p.provider_id] = p.name;
  return (id) => names[id] || (id ? id.slice(0, 8) : "–");
}

function renderJob(state) {
  const job = state.jobs.find((j) => j.job_id === jobView.id);
  $("job-id").textContent = jobView.id;
  if (!job) {
    $("job-state").replaceChildren();
    $("job-facts").replaceChildren(el("dd", {}, "No such job on this head."));
    return;
  }
  $("job-state").replaceChildren(badge(job.status));
  const facts = [["Type", job.task_type], ["Owner", job.owner], ["Shards", job.done + " / " + job.total],
    ["Round", job.round], ["Elapsed", seconds(job.elapsed)], ["Re-run", job.reruns], ["Speculated", job.speculated],
    ["Submitted", new Date(job.submitted_at * 1000).toLocaleString()]];
  $("job-facts").replaceChildren(...facts.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, v))));
  $("job-progress").max = job.progress_total || 1;
  $("job-progress").value = job.progress_done;
  $("job-progress-text").textContent = " " + job.progress_done + " / " + job.progress_total + " " + job.progress_unit
    + (job.progress_total === 1 ? "" : "s");
  $("job-error").hidden = !job.error;
  $("job-error").textContent = job.error || "";
  const name = providerNames(state);
  renderEvents(name);
  drawTimeline(spans(jobView.events, state.time), name);
}

function renderEvents(name) {
  const events = jobView.events;
  const t0 = events.length ? events[0].time : 0;
  $("event-count").textContent = "(" + events.length + (events.length > MAX_EVENT_ROWS
    ? ", last " + MAX_EVENT_ROWS + " shown)" : ")");
  const tbody = $("events").querySelector("tbody");
  if (tbody.childElementCount === Math.min(events.length, MAX_EVENT_ROWS) && events.length <= MAX_EVENT_ROWS) return;
  tbody.replaceChildren(...events.slice(-MAX_EVENT_ROWS).map((e) => {
    const known = new Set(["time", "event", "job_id", "task_id", "attempt", "provider_id"]);
    const detail = Object.entries(e).filter(([k, v]) => !known.has(k) && v !== null)
      .map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join("  ");
    return el("tr", { class: "ev-" + e.event },
      el("td", { class: "num" }, "+" + (e.time - t0).toFixed(3) + " s"), el("td", {}, e.event),
      el("td", { class: "num" }, e.task_id ? e.task_id.slice(e.task_id.lastIndexOf(".") + 1) : ""),
      el("td", { class: "num" }, e.attempt ?? ""), el("td", {}, e.provider_id ? name(e.provider_id) : ""),
      el("td", { class: "muted" }, detail));
  }));
}

// Each attempt of a shard as a span on its provider's lane: from assign (waiting in the provider's queue,
// a thin line) through compute (a bar: the result's own compute time) to its result, retry or loss.
// A speculative copy keeps the attempt number, so a span is keyed by task, attempt and provider.
function spans(events, now) {
  const open = new Map();
  const out = [];
  let start = null;
  let end = null;
  const close = (key, span, time, kind) => { span.end = time; span.kind = kind; open.delete(key); };
  for (const e of events) {
    if (start === null) start = e.time;
    const key = e.task_id + "/" + e.attempt + "/" + e.provider_id;
    if (["assign", "speculate", "republish"].includes(e.event) && e.provider_id) {
      if (open.has(key)) continue; // re-sent after a lost ack: still one attempt
      const span = { task: e.task_id, provider: e.provider_id, start: e.time, compute: e.time, end: null,
        kind: e.event === "speculate" ? "spec" : "run" };
      open.set(key, span);
      out.push(span);
    } else if (e.event === "result") {
      for (const [k, span] of open) {
        if (span.task !== e.task_id) continue;
        if (k !== key) close(k, span, e.time, "lost"); // the other copy lost the race
        else {
          span.compute = Math.max(span.start, e.time - (e.elapsed || 0));
          close(k, span, e.time, span.kind === "spec" ? "spec" : "ok");
        }
      }
    } else if (e.event === "drop" && open.has(key)) {
      close(key, open.get(key), e.time, "lost");
    } else if (e.event === "retry") {
      for (const [k, span] of open) {
        if (span.task === e.task_id && !k.startsWith(e.task_id + "/" + e.attempt + "/")) close(k, span, e.time, "lost");
      }
    } else if (e.event === "finish") {
      end = e.time;
    }
  }
  for (const span of open.values()) {
    span.end = end ?? now;
    if (end !== null) span.kind = "lost";
  }
  return { spans: out, start: start ?? now, end: end ?? now };
}

function drawTimeline(view, name) {
  const canvas = $("timeline");
  const lanes = new Map(); // provider -> rows of spans, packed greedily by their compute bars
  for (const span of [...view.spans].sort((a, b) => a.compute - b.compute)) {
    if (!lanes.has(span.provider)) lanes.set(span.provider, []);
    const rows = lanes.get(span.provider);
    let row = rows.find((r) => r[r.length - 1].end <= span.compute);
    if (!row) rows.push((row = []));
    row.push(span);
  }
  canvas.dataset.lanes = lanes.size; // for tests and curious readers of the DOM
  canvas.dataset.spans = view.spans.length;
  const rowHeight = 12;
  const labelWidth = 110;
  const laneGap = 12;
  const totalRows = [...lanes.values()].reduce((n, rows) => n + rows.length, 0);
  const height = Math.max(70, 26 + totalRows * rowHeight + lanes.size * laneGap);
  canvas.style.height = height + "px";
  const [ctx, width] = fitCanvas(canvas, height);
  const plot = width - labelWidth - 8;
  const duration = Math.max(0.001, view.end - view.start);
  const x = (t) => labelWidth + ((t - view.start) / duration) * plot;
  ctx.font = "11px " + css("--font");
  ctx.fillStyle = css("--muted");
  ctx.strokeStyle = css("--grid");
  for (let i = 0; i <= 4; i++) { // time axis
    const t = view.start + (duration * i) / 4;
    ctx.beginPath(); ctx.moveTo(x(t), 14); ctx.lineTo(x(t), height); ctx.stroke();
    ctx.textAlign = i === 4 ? "right" : i === 0 ? "left" : "center";
    ctx.fillText(seconds(t - view.start), x(t), 10);
  }
  if (!view.spans.length) {
    ctx.textAlign = "left";
    ctx.fillText("no shard assigned yet", labelWidth, 36);
    return;
  }
  const colors = { ok: css("--ok"), spec: css("--spec"), lost: css("--bad"), run: css("--accent") };
  let y = 22;
  const ordered = [...lanes.entries()].sort((a, b) => name(a[0]).localeCompare(name(b[0])));
  for (const [provider, rows] of ordered) {
    ctx.fillStyle = css("--text");
    ctx.textAlign = "left";
    ctx.fillText(name(provider), 4, y + rowHeight - 2);
    rows.forEach((row, i) => { // waits first, beneath the bars they overlap
      ctx.globalAlpha = 0.45;
      for (const span of row) {
        ctx.fillStyle = colors[span.kind];
        ctx.fillRect(x(span.start), y + i * rowHeight + rowHeight / 2 - 1, x(span.compute) - x(span.start), 2);
      }
      ctx.globalAlpha = 1;
      for (const span of row) {
        ctx.fillStyle = colors[span.kind];
        ctx.fillRect(x(span.compute), y + i * rowHeight + 1, Math.max(1.5, x(span.end) - x(span.compute) - 0.5),
          rowHeight - 2);
      }
    });
    y += rows.length * rowHeight + laneGap;
  }
}

// -- the loop ----------------------------------------------------------------------------------------------

function route() {
  const match = window.location.hash.match(/^#job\/(.+)$/);
  const id = match ? decodeURIComponent(match[1]) : null;
  $("overview").hidden = id !== null;
  $("job-page").hidden = id === null;
  if (id !== jobView.id) openJob(id);
  if (previous) render(previous);
}

function render(state) {
  $("epoch").textContent = "head epoch " + state.epoch;
  if (jobView.id) renderJob(state);
  else {
    renderProviders(state);
    renderJobs(state);
  }
}

function setStatus(ok, text) {
  $("status").textContent = text;
  $("status").className = "status " + (ok ? "live" : "down");
}

async function poll() {
  try {
    const state = await getJSON("/api/state");
    if (jobView.id) await loadEvents();
    $("banner").hidden = true;
    record({ time: state.time, figures: state.figures });
    renderFigures(state);
    previous = state;
    render(state);
    setStatus(true, "live · " + new Date(state.time * 1000).toLocaleTimeString());
  } catch (err) {
    setStatus(false, "disconnected");
    $("banner").textContent = String(err.message || err);
    $("banner").hidden = false;
  }
  setTimeout(poll, POLL_MS);
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", () => previous && (renderFigures(previous), render(previous)));
buildCards();
route();
loadHistory().then(poll);
