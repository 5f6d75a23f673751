// The moat console (docs/console.md). Plain JavaScript, no build step, no
// network beyond this origin. Every call goes to the console service:
//   /api/state          the supervisor's state (long poll)
//   /api/svc/NAME/PATH  a service's own API, read as the operator
//   /api/gw/PATH        the gateway's /api/v1/PATH with a customer's token
"use strict";

// ---- small helpers ----

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "style") Object.assign(e.style, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) {
    if (kid === undefined || kid === null || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return e;
}

function bytes(n) {
  if (!n) return "0";
  const u = ["B", "K", "M", "G"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + u[i];
}

function when(t) {
  if (t === null || t === undefined) return "";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

const view = () => document.getElementById("view");
function show(...kids) { view().replaceChildren(...kids); }

class HttpError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.title)) || "HTTP " + status);
    this.status = status;
    this.body = body;
  }
}

async function call(method, path, body, headers) {
  const opts = { method, headers: Object.assign({}, headers || {}), credentials: "same-origin" };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const text = await r.text();
  let data = text;
  try { data = text ? JSON.parse(text) : null; } catch (e) { /* not JSON */ }
  if (r.status === 401 && r.headers.get("www-authenticate") === "MoatConsole") {
    needLogin();
    throw new HttpError(401, data);
  }
  if (!r.ok) throw new HttpError(r.status, data);
  return data;
}
const svcGet = (name, path) => call("GET", `/api/svc/${name}/${path}`);

// ---- login ----

function needLogin() {
  document.getElementById("nav").hidden = true;
  document.getElementById("login").hidden = false;
  view().replaceChildren();
  stopLive();
}

async function login(ev) {
  ev.preventDefault();
  const pw = document.getElementById("password").value;
  const err = document.getElementById("login-error");
  err.textContent = "";
  try {
    await call("POST", "/api/login", { password: pw });
    document.getElementById("password").value = "";
    start();
  } catch (e) {
    err.textContent = e.status === 401 ? "Wrong password." : e.status === 429 ? "Too many wrong passwords: wait a second." : String(e.message);
  }
}

// ---- live state: the supervisor's (long poll) and the services' metrics ----

const live = { version: -1, state: null, metrics: {}, prev: {}, running: false, timer: null };

function stopLive() {
  live.running = false;
  clearInterval(live.timer);
}

async function pollState() {
  while (live.running) {
    try {
      const r = await call("GET", `/api/state?after=${live.version}&wait=20`);
      live.version = r.version;
      live.state = r.state;
      document.getElementById("deployment").textContent =
        r.state ? `deployment "${r.state.deployment}" · ${r.state.status}` : "no supervisor state yet";
      if (route().page === "map") drawMap();
    } catch (e) {
      if (e.status === 401) return;
      await new Promise((res) => setTimeout(res, 1000));
    }
  }
}

// Prometheus text -> {name: [{labels, value}]}
function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]] = l[2];
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
  }
  return out;
}
const metric = (ms, name) => ((ms && ms[name]) || []);
const one = (ms, name) => (metric(ms, name)[0] || {}).value;

async function pollMetrics() {
  if (!live.state) return;
  const now = Date.now();
  await Promise.all(live.state.services.map(async (s) => {
    if (s.status !== "ready") return;
    try {
      const text = await call("GET", `/api/svc/${s.name}/metrics`);
      const ms = parseMetrics(typeof text === "string" ? text : "");
      const head = one(ms, "moat_outbox_head_seq");
      const prev = live.prev[s.name];
      ms.rate = prev && head !== undefined ? Math.max(0, (head - prev.head) / ((now - prev.at) / 1000)) : 0;
      live.prev[s.name] = { head, at: now };
      live.metrics[s.name] = ms;
    } catch (e) { /* the map shows the supervisor's view meanwhile */ }
  }));
  if (route().page === "map") drawMap();
}

// ---- the map ----

// A restart the supervisor did between two looks (it restarts a killed
// service within ~200 ms) still shows: red for RESTART_FLASH_MS after the
// pid or the restart count changed.
const RESTART_FLASH_MS = 2000;
const seen = {};
function health(s) {
  const was = seen[s.name];
  if (was && (was.restarts !== s.restarts || (s.pid && was.pid && was.pid !== s.pid)))
    was.downUntil = Date.now() + RESTART_FLASH_MS;
  seen[s.name] = { restarts: s.restarts, pid: s.pid || (was && was.pid), downUntil: was ? was.downUntil : 0 };
  if (s.status !== "ready" && s.status !== "starting" && s.status !== "pending") return "down";
  if (Date.now() < seen[s.name].downUntil) return "down";
  if (s.status === "ready") return "ready";
  if (s.status === "starting" || s.status === "pending") return "starting";
  return "down";
}

function drawMap() {
  const host = document.getElementById("map-host");
  if (!host || !live.state) return;
  const svcs = live.state.services;
  const cols = Math.min(5, Math.ceil(Math.sqrt(svcs.length * 1.6)));
  const W = 190, H = 96, GX = 80, GY = 70;
  const pos = {};
  svcs.forEach((s, i) => {
    const r = Math.floor(i / cols), c = i % cols;
    pos[s.name] = { x: 30 + c * (W + GX) + (r % 2 ? (W + GX) / 2 : 0), y: 30 + r * (H + GY) };
  });
  const width = 60 + cols * (W + GX) + (W + GX) / 2;
  const height = 60 + Math.ceil(svcs.length / cols) * (H + GY);
  const root = svg("svg", { id: "map", viewBox: `0 0 ${width} ${height}`, role: "img" });
  root.append(svg("defs", {}, svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#98a2b3" }))));
  // Feeds: an arrow from each source to each service consuming it.
  const feeds = [];
  for (const s of svcs) {
    for (const lag of metric(live.metrics[s.name], "moat_consumer_lag_events")) {
      const src = lag.labels.source;
      if (!pos[src] || src === s.name) continue;
      const secs = metric(live.metrics[s.name], "moat_consumer_lag_seconds").find((m) => m.labels.source === src);
      const srcMs = live.metrics[src];
      feeds.push({ from: src, to: s.name, lag: lag.value, lagS: secs ? secs.value : 0,
        rate: srcMs ? srcMs.rate : 0, backlog: one(srcMs, "moat_outbox_events") });
    }
  }
  for (const f of feeds) {
    const a = pos[f.from], b = pos[f.to];
    const x1 = a.x + W / 2, y1 = a.y + H / 2, x2 = b.x + W / 2, y2 = b.y + H / 2;
    const len = Math.hypot(x2 - x1, y2 - y1) || 1;
    // Start and end at the boxes' edges (roughly), bent a little.
    const ux = (x2 - x1) / len, uy = (y2 - y1) / len;
    const sx = x1 + ux * 60, sy = y1 + uy * 50, ex = x2 - ux * 70, ey = y2 - uy * 55;
    const mx = (sx + ex) / 2 - uy * 25, my = (sy + ey) / 2 + ux * 25;
    const g = svg("g", { "data-feed": `${f.from}->${f.to}` });
    g.append(svg("path", { class: "feed" + (f.lag > 0 ? " lagging" : ""), d: `M ${sx} ${sy} Q ${mx} ${my} ${ex} ${ey}`, "marker-end": "url(#arrow)" }));
    const label = `${f.from} → ${f.to}: ${f.rate.toFixed(1)} events/s · outbox ${f.backlog ?? "?"} · lag ${f.lag}${f.lagS ? " (" + f.lagS.toFixed(1) + " s)" : ""}`;
    g.append(svg("title", {}, label));
    // Idle feeds stay quiet (the tooltip has the figures); busy or
    // lagging ones say so on the map.
    if (f.rate >= 0.05 || f.lag > 0)
      g.append(svg("text", { class: "feed-label", x: mx, y: my, "text-anchor": "middle" },
        `${f.rate.toFixed(1)}/s · lag ${f.lag}${f.lagS ? " (" + f.lagS.toFixed(1) + "s)" : ""}`));
    root.append(g);
  }
  for (const s of svcs) {
    const p = pos[s.name], h = health(s);
    const ms = live.metrics[s.name];
    const rss = s.rss_bytes || one(ms, "process_resident_memory_bytes");
    const g = svg("g", { class: `svc ${h}`, "data-service": s.name, "data-health": h, transform: `translate(${p.x},${p.y})` });
    g.append(svg("rect", { width: W, height: H, rx: 8 }));
    g.append(svg("text", { class: "name", x: 10, y: 20 }, s.name));
    g.append(svg("text", { x: W - 10, y: 20, "text-anchor": "end" }, h === "ready" ? "● up" : h === "down" ? "● DOWN" : "● starting"));
    g.append(svg("text", { x: 10, y: 40 }, `${s.engine}${s.engine !== "none" ? " · db " + bytes(s.db_bytes) : ""}`));
    g.append(svg("text", { x: 10, y: 58 }, `RSS ${bytes(rss)} · restarts ${s.restarts}`));
    g.append(svg("text", { x: 10, y: 76 }, s.pid ? `pid ${s.pid} · ${s.listen}` : (s.last_exit || s.status)));
    g.addEventListener("click", () => { location.hash = `#/events/${s.name}`; });
    root.append(g);
  }
  host.replaceChildren(root);
  const flash = Math.max(0, ...Object.values(seen).map((v) => v.downUntil || 0)) - Date.now();
  if (flash > 0) { clearTimeout(live.flash); live.flash = setTimeout(drawMap, flash + 50); }
}

function pageMap() {
  show(el("h1", {}, "Map"),
    el("p", { class: "muted" }, "Every service of the deployment, with its own database; arrows are event feeds (rate of the source, its outbox backlog, the consumer's lag). Red: down; the supervisor restarts it."),
    el("div", { id: "map-host" }));
  drawMap();
}

// ---- sagas ----

async function pageSagas(params) {
  const status = params.get("status") || "";
  const reason = params.get("reason") || "";
  const q = new URLSearchParams({ limit: "100" });
  if (status) q.set("status", status);
  const filter = el("form", { class: "row", onsubmit: (e) => {
    e.preventDefault();
    const f = new URLSearchParams();
    const st = e.target.status.value, re = e.target.reason.value.trim();
    if (st) f.set("status", st);
    if (re) f.set("reason", re);
    location.hash = "#/sagas?" + f;
  } },
  el("label", {}, "Status ", el("select", { name: "status" },
    ["", "pending", "confirmed", "cancelled"].map((s) => el("option", { value: s, selected: s === status }, s || "any")))),
  el("label", {}, "Reason ", el("input", { name: "reason", value: reason, placeholder: "e.g. out_of_stock" })),
  el("button", { type: "submit" }, "Filter"));
  show(el("h1", {}, "Sagas"), filter, el("p", { class: "muted" }, "Loading…"));
  const [list, summary] = await Promise.all([
    svgGetSafe("orders", "v1/orders?" + q),
    svgGetSafe("orders", "v1/admin/sagas"),
  ]);
  let orders = (list && list.orders) || [];
  if (reason) orders = orders.filter((o) => (o.cancel_reason || "").includes(reason));
  const table = el("table", { id: "sagas" },
    el("tr", {}, ["order", "status", "step", "reason", "total", "customer", "updated", "trace"].map((h) => el("th", {}, h))),
    orders.map((o) => el("tr", { dataset: { order: o.id, status: o.status } },
      el("td", {}, el("a", { href: `#/order/${o.id}` }, o.id)),
      el("td", {}, el("span", { class: `pill ${o.status}` }, o.status)),
      el("td", {}, o.step), el("td", {}, o.cancel_reason || ""),
      el("td", {}, `${(o.total / 100).toFixed(2)} ${o.currency}`),
      el("td", { class: "mono" }, o.customer_id),
      el("td", {}, when(o.updated_at)),
      el("td", {}, o.trace_id ? el("a", { href: `#/trace/${o.trace_id}` }, "trace") : ""))));
  show(el("h1", {}, "Sagas"), filter,
    summary ? el("pre", { class: "card" }, JSON.stringify(summary, null, 1)) : "",
    orders.length ? table : el("p", {}, "No orders match."));
}

async function svgGetSafe(name, path) {
  try { return await svcGet(name, path); } catch (e) { if (e.status === 401) throw e; return null; }
}

// Every event of the services' feeds that carries this trace (the last
// `window` events of each feed): the saga's commands and replies.
async function eventsOfTrace(traceId, window) {
  const names = (live.state ? live.state.services : []).filter((s) => s.status === "ready").map((s) => s.name);
  const found = [];
  await Promise.all(names.map(async (n) => {
    const first = await svgGetSafe(n, "v1/events?after=0&limit=1");
    if (!first || first.head === undefined) return;
    const after = Math.max(0, first.head - window);
    const page = await svgGetSafe(n, `v1/events?after=${after}&limit=${Math.min(window, 1000)}`);
    for (const ev of (page && page.events) || [])
      if ((ev.traceparent || "").includes(traceId)) found.push(Object.assign({ service: n }, ev));
  }));
  return found.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
}

async function spansOfTrace(traceId) {
  const names = (live.state ? live.state.services : []).filter((s) => s.status === "ready").map((s) => s.name);
  const spans = [];
  await Promise.all(names.map(async (n) => {
    const r = await svgGetSafe(n, `v1/admin/spans?trace_id=${traceId}`);
    for (const rs of (r && r.resourceSpans) || [])
      for (const ss of rs.scopeSpans || [])
        for (const sp of ss.spans || []) spans.push(Object.assign({ service: n }, sp));
  }));
  return spans;
}

async function pageOrder(id) {
  show(el("h1", {}, "Order ", el("span", { class: "mono" }, id)), el("p", { class: "muted" }, "Loading…"));
  const o = await svcGet("orders", `v1/orders/${encodeURIComponent(id)}`);
  const events = o.trace_id ? await eventsOfTrace(o.trace_id, 500) : [];
  const steps = el("table", { id: "steps" },
    el("tr", {}, ["time", "service", "kind", "message", "detail"].map((h) => el("th", {}, h))),
    events.map((ev) => {
      const kind = ev.service === "orders" ? (/^(Order)/.test(ev.type) ? "state" : "command") : "reply";
      const comp = /Release|Void|Refund|Cancel|Compensat/.test(ev.type);
      return el("tr", { dataset: { type: ev.type } },
        el("td", {}, when(ev.time)), el("td", {}, ev.service),
        el("td", {}, comp ? "compensation" : kind),
        el("td", { class: "mono" }, ev.type),
        el("td", {}, el("pre", {}, JSON.stringify(ev.data))));
    }));
  show(el("h1", {}, "Order ", el("span", { class: "mono" }, id)),
    el("div", { class: "card row" },
      el("span", { id: "order-status", class: `pill ${o.status}` }, o.status),
      el("span", {}, `step ${o.step}`),
      o.cancel_reason ? el("span", { class: "error" }, o.cancel_reason) : "",
      el("span", {}, `${(o.total / 100).toFixed(2)} ${o.currency}`),
      o.trace_id ? el("a", { id: "order-trace", href: `#/trace/${o.trace_id}` }, "trace " + o.trace_id) : ""),
    el("h2", {}, "Steps (every command, reply and state change of the saga)"),
    events.length ? steps : el("p", { class: "muted" }, "No events of this trace in the feeds' recent window."),
    el("h2", {}, "Order"), el("pre", { class: "card" }, JSON.stringify(o, null, 2)));
}

// ---- traces ----

function waterfall(spans) {
  if (!spans.length) return el("p", { class: "muted" }, "No spans recorded (each service keeps its last 2048).");
  const ns = (s) => Number(BigInt(s) / 1000n) / 1000; // ms
  const t0 = Math.min(...spans.map((s) => ns(s.startTimeUnixNano)));
  const t1 = Math.max(...spans.map((s) => ns(s.endTimeUnixNano)));
  const total = Math.max(1, t1 - t0);
  // Depth-first from the roots: children under their parent span.
  const byParent = {};
  const ids = new Set(spans.map((s) => s.spanId));
  for (const s of spans) {
    const p = ids.has(s.parentSpanId) ? s.parentSpanId : "";
    (byParent[p] = byParent[p] || []).push(s);
  }
  const rows = [];
  const walk = (p, depth) => {
    for (const s of (byParent[p] || []).sort((a, b) => ns(a.startTimeUnixNano) - ns(b.startTimeUnixNano))) {
      rows.push([s, depth]);
      walk(s.spanId, depth + 1);
    }
  };
  walk("", 0);
  return el("div", { class: "wf card", id: "waterfall" }, rows.map(([s, depth]) => {
    const start = ns(s.startTimeUnixNano) - t0, dur = ns(s.endTimeUnixNano) - ns(s.startTimeUnixNano);
    const left = (start / total) * 100, width = Math.max(0.3, (dur / total) * 100);
    const err = s.status && s.status.code === 2;
    return el("div", { class: "wf-row", dataset: { service: s.service } },
      el("div", { class: "wf-name", title: s.name, style: { paddingLeft: depth * 14 + "px" } },
        el("strong", {}, s.service), " ", s.name),
      el("div", { class: "wf-track" },
        el("div", { class: "wf-bar" + (s.kind === 5 ? " consumer" : "") + (err ? " error" : ""), style: { left: left + "%", width: width + "%" } }),
        el("span", { class: "wf-time", style: { left: Math.min(left + width, 90) + 1 + "%" } }, dur.toFixed(1) + " ms")));
  }));
}

async function pageTrace(id) {
  show(el("h1", {}, "Trace ", el("span", { class: "mono" }, id)), el("p", { class: "muted" }, "Loading…"));
  const spans = await spansOfTrace(id);
  const services = [...new Set(spans.map((s) => s.service))];
  show(el("h1", {}, "Trace ", el("span", { class: "mono" }, id)),
    el("p", {}, `${spans.length} spans across ${services.length} services: ${services.join(", ")}. Blue: HTTP requests; purple: events applied by a consumer.`),
    waterfall(spans));
}

async function pageTraces() {
  show(el("h1", {}, "Traces"), el("p", { class: "muted" }, "Loading…"));
  const names = live.state ? live.state.services.filter((s) => s.status === "ready").map((s) => s.name) : [];
  const traces = {};
  await Promise.all(names.map(async (n) => {
    const r = await svgGetSafe(n, "v1/admin/spans?limit=200");
    for (const rs of (r && r.resourceSpans) || [])
      for (const ss of rs.scopeSpans || [])
        for (const sp of ss.spans || []) {
          const t = (traces[sp.traceId] = traces[sp.traceId] || { id: sp.traceId, spans: 0, services: new Set(), start: sp.startTimeUnixNano, root: "" });
          t.spans++;
          t.services.add(n);
          if (BigInt(sp.startTimeUnixNano) <= BigInt(t.start)) { t.start = sp.startTimeUnixNano; t.root = `${n}: ${sp.name}`; }
        }
  }));
  const list = Object.values(traces).sort((a, b) => (BigInt(b.start) > BigInt(a.start) ? 1 : -1)).slice(0, 100);
  show(el("h1", {}, "Traces"),
    el("p", { class: "muted" }, "The latest traces in the services' span rings, newest first."),
    el("table", {}, el("tr", {}, ["trace", "first span", "spans", "services", "start"].map((h) => el("th", {}, h))),
      list.map((t) => el("tr", {},
        el("td", { class: "mono" }, el("a", { href: `#/trace/${t.id}` }, t.id)),
        el("td", {}, t.root), el("td", {}, t.spans), el("td", {}, [...t.services].join(", ")),
        el("td", {}, when(new Date(Number(BigInt(t.start) / 1000000n))))))));
}

// ---- events, dead letters, replay verification ----

async function pageEvents(name) {
  const names = live.state ? live.state.services.map((s) => s.name) : [];
  name = name || "orders";
  const pick = el("select", { id: "feed-pick", onchange: (e) => { location.hash = `#/events/${e.target.value}`; } },
    names.map((n) => el("option", { value: n, selected: n === name }, n)));
  const head = el("div", { class: "row" }, el("label", {}, "Feed of ", pick));
  show(el("h1", {}, "Events"), head, el("p", { class: "muted" }, "Loading…"));
  const first = await svgGetSafe(name, "v1/events?after=0&limit=1");
  let feed = null;
  if (first && first.head !== undefined)
    feed = await svgGetSafe(name, `v1/events?after=${Math.max(0, first.head - 50)}&limit=50`);
  const consumer = await svgGetSafe(name, "v1/admin/consumer");
  const dead = consumer ? await svgGetSafe(name, "v1/admin/dead-letters?limit=50") : null;
  const verifyOut = el("pre", { id: "verify-result", class: "card", hidden: true });
  const parts = [el("h1", {}, "Events"), head];
  if (feed) {
    parts.push(el("h2", {}, `Feed of ${name}: the last ${feed.events.length} of ${feed.head} (personal data redacted)`),
      el("table", { id: "feed" }, el("tr", {}, ["seq", "type", "aggregate", "time", "payload"].map((h) => el("th", {}, h))),
        feed.events.slice().reverse().map((ev) => el("tr", {},
          el("td", {}, ev.sequence), el("td", { class: "mono" }, ev.type), el("td", { class: "mono" }, ev.subject),
          el("td", {}, when(ev.time)), el("td", {}, el("pre", {}, JSON.stringify(ev.data)))))));
  } else {
    parts.push(el("p", { class: "muted" }, `${name} publishes no feed.`));
  }
  if (consumer) {
    parts.push(el("h2", {}, `What ${name} consumes`),
      el("table", {}, el("tr", {}, ["source", "cursor", "head", "lag", "state", "failed", "blocked"].map((h) => el("th", {}, h))),
        consumer.sources.map((s) => el("tr", {}, el("td", {}, s.source), el("td", {}, s.cursor), el("td", {}, s.head),
          el("td", {}, `${s.lag_events} (${s.lag_seconds.toFixed(1)} s)`), el("td", {}, s.state),
          el("td", {}, s.dead_letters.failed), el("td", {}, s.dead_letters.blocked)))),
      el("h2", {}, "Dead letters"),
      dead && dead.dead_letters.length
        ? el("table", { id: "dead-letters" }, el("tr", {}, ["source", "seq", "type", "aggregate", "state", "attempts", "error", ""].map((h) => el("th", {}, h))),
          dead.dead_letters.map((d) => el("tr", { dataset: { subject: d.subject } },
            el("td", {}, d.source), el("td", {}, d.seq), el("td", { class: "mono" }, d.type), el("td", { class: "mono" }, d.subject),
            el("td", {}, d.state), el("td", {}, d.attempts), el("td", {}, d.error),
            el("td", {}, d.state === "failed" ? el("button", { class: "redrive", onclick: async (e) => {
              e.target.disabled = true;
              try {
                const r = await call("POST", `/api/svc/${name}/v1/admin/dead-letters/redrive?source=${encodeURIComponent(d.source)}&subject=${encodeURIComponent(d.subject)}`);
                e.target.replaceWith(el("span", { class: "redrive-result" }, `applied ${r.applied}, remaining ${r.remaining}`));
              } catch (err) { e.target.replaceWith(el("span", { class: "error" }, err.message)); }
            } }, "Redrive") : ""))))
        : el("p", { id: "no-dead-letters" }, "None."),
      el("h2", {}, "Replay verification"),
      el("p", { class: "muted" }, "Rebuilds the view from the feeds in a scratch database and compares (moat events replay --verify)."),
      el("button", { id: "verify", onclick: async () => {
        verifyOut.hidden = false;
        verifyOut.textContent = "verifying…";
        try { verifyOut.textContent = JSON.stringify(await call("POST", `/api/svc/${name}/v1/admin/replay?verify=1`), null, 2); } catch (e) { verifyOut.textContent = e.message; }
      } }, "Verify"), verifyOut);
  }
  show(...parts);
}

// ---- the audit (`moat audit`, run by the supervisor) ----

async function pageAudit() {
  const out = el("div", { id: "audit-result" });
  const render = (a) => {
    const r = a.report;
    const sum = (r && r.summary) || {};
    out.replaceChildren(
      el("p", { id: "audit-state" }, `state: ${a.state}`, a.finished_at ? ` · last report ${when(a.finished_at)}` : ""),
      r ? el("div", {},
        el("p", { id: "audit-summary", class: r.ok ? "" : "error" },
          r.ok ? `No violations: ${sum.orders} orders and ${sum.skus} SKUs checked in ${Number(sum.seconds ?? r.seconds ?? 0).toFixed(1)} s.`
            : `${r.violation_count} violations among ${sum.orders} orders.`),
        r.violations.length ? el("table", { id: "violations" },
          el("tr", {}, ["kind", "order", "sku", "detail", "trace"].map((h) => el("th", {}, h))),
          r.violations.map((v) => el("tr", {},
            el("td", {}, v.kind),
            el("td", {}, v.order_id ? el("a", { href: `#/order/${v.order_id}` }, v.order_id) : ""),
            el("td", {}, v.sku || ""), el("td", {}, v.detail),
            el("td", {}, v.trace_id ? el("a", { href: `#/trace/${v.trace_id}` }, "trace") : "")))) : "",
        el("h2", {}, "Summary"), el("pre", { class: "card" }, JSON.stringify(r.summary, null, 1))) : "");
  };
  const run = el("button", { id: "run-audit", onclick: async () => {
    run.disabled = true;
    const before = (await call("GET", "/api/audit")).finished_at || 0;
    await call("POST", "/api/audit");
    for (let i = 0; i < 240; i++) {
      const a = await call("GET", "/api/audit");
      render(a);
      if (a.state === "idle" && (a.finished_at || 0) > before - 1 && a.report && i > 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    run.disabled = false;
  } }, "Run the audit");
  show(el("h1", {}, "Audit"),
    el("p", { class: "muted" }, "Checks the order saga's promises across services (money, stock, notifications, deadlines) through their APIs, as `moat audit` does; best on a quiet deployment."),
    run, out);
  render(await call("GET", "/api/audit"));
}

// ---- the storefront (the gateway's public API, as a customer) ----

const customer = {
  get token() { return sessionStorage.getItem("moat_customer_token"); },
  set token(v) { if (v) sessionStorage.setItem("moat_customer_token", v); else sessionStorage.removeItem("moat_customer_token"); },
};
const gw = (method, path, body, headers) =>
  call(method, `/api/gw/${path}`, body, Object.assign(customer.token ? { Authorization: `Bearer ${customer.token}` } : {}, headers || {}));

function accountForm(onDone) {
  const msg = el("p", { class: "error", id: "account-msg" });
  const form = el("form", { class: "card", id: "account" },
    el("h2", {}, "Your account"),
    el("div", { class: "row" },
      el("input", { name: "email", type: "email", placeholder: "email", required: true }),
      el("input", { name: "password", type: "password", placeholder: "password (12+ characters)", required: true }),
      el("input", { name: "display_name", placeholder: "display name" }),
      el("button", { type: "button", id: "signup", onclick: () => submit(true) }, "Sign up"),
      el("button", { type: "button", id: "signin", class: "secondary", onclick: () => submit(false) }, "Log in")), msg);
  async function submit(signup) {
    msg.textContent = "";
    const f = form.elements;
    try {
      // users answers 503 while too many password hashes are queued:
      // a busy moment, worth a few more tries.
      for (let i = 0; signup; i++) {
        try {
          await gw("POST", "users", { email: f.email.value, password: f.password.value, display_name: f.display_name.value || f.email.value });
          break;
        } catch (e) {
          if (e.status !== 503 || i >= 10) throw e;
          msg.textContent = "users is busy, trying again…";
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
      const r = await gw("POST", "auth/login", { email: f.email.value, password: f.password.value });
      customer.token = r.access_token;
      sessionStorage.setItem("moat_customer", JSON.stringify(r.user));
      onDone();
    } catch (e) { msg.textContent = e.message; }
  }
  return form;
}

async function pageShop(params) {
  const q = params.get("q") || "";
  const me = JSON.parse(sessionStorage.getItem("moat_customer") || "null");
  const search = el("form", { class: "row", onsubmit: (e) => { e.preventDefault(); location.hash = "#/shop?q=" + encodeURIComponent(e.target.q.value); } },
    el("input", { name: "q", id: "shop-search", value: q, placeholder: "search products" }), el("button", { type: "submit" }, "Search"));
  const who = me
    ? el("p", { id: "customer" }, `Signed in as ${me.id} `, el("button", { class: "secondary", onclick: () => { customer.token = null; sessionStorage.removeItem("moat_customer"); route().render(); } }, "Sign out"))
    : accountForm(() => route().render());
  show(el("h1", {}, "Storefront"), who, search, el("p", { class: "muted" }, "Loading…"));
  let items = [];
  try {
    const r = q ? await gw("GET", `search?q=${encodeURIComponent(q)}`) : await gw("GET", "products?limit=50");
    items = r.items || [];
  } catch (e) { items = []; }
  const status = el("div", { id: "order-box" });
  const grid = el("div", { class: "grid", id: "products" }, items.map((p) => {
    const qty = el("input", { type: "number", min: "1", max: "99", value: "1", style: { width: "4rem" } });
    const price = p.price ? `${(p.price.amount / 100).toFixed(2)} ${p.price.currency}` : "";
    return el("div", { class: "card product", dataset: { sku: p.sku || "" } },
      el("h3", {}, p.name || p.sku), el("div", { class: "muted" }, p.sku, " · ", price),
      me ? el("div", { class: "row" }, qty, el("button", { class: "order", onclick: () => order(p.product_id || p.id, Number(qty.value), status) }, "Order")) : "");
  }));
  show(el("h1", {}, "Storefront"), who, search, status, items.length ? grid : el("p", {}, "No products."));
}

async function order(productId, quantity, box) {
  box.replaceChildren(el("p", { class: "card" }, "Placing the order…"));
  try {
    const o = await gw("POST", "orders", { lines: [{ product_id: productId, quantity }], card_token: "tok_ok" },
      { "Idempotency-Key": "console-" + crypto.randomUUID() });
    const line = el("p", { class: "card", id: "placed", dataset: { order: o.id } }, "Order ", el("a", { href: `#/order/${o.id}` }, o.id), ": ",
      el("span", { class: `pill ${o.status}`, id: "placed-status" }, o.status));
    box.replaceChildren(line);
    // Watch it confirm: the saga runs on, the page reads the order again.
    for (let i = 0; i < 60 && o.status === "pending"; i++) {
      await new Promise((r) => setTimeout(r, 500));
      const now = await gw("GET", `orders/${o.id}`);
      o.status = now.status;
      const pill = document.getElementById("placed-status");
      if (pill) { pill.textContent = `${now.status} (${now.step})`; pill.className = `pill ${now.status}`; }
    }
  } catch (e) {
    box.replaceChildren(el("p", { class: "card error" }, e.message));
  }
}

// ---- the social page (the social deployment's gateway, as a member) ----

async function pageSocial() {
  const me = JSON.parse(sessionStorage.getItem("moat_customer") || "null");
  if (!me) {
    show(el("h1", {}, "Social"), el("p", {}, "Sign up or log in as a member first."), accountForm(() => route().render()));
    return;
  }
  const out = el("pre", { class: "card", id: "social-out" });
  const act = (f) => async (e) => {
    e.preventDefault();
    try { out.textContent = JSON.stringify(await f(e.target.elements || {}), null, 2); } catch (err) { out.textContent = err.message; }
  };
  const timeline = el("div", { id: "timeline" });
  const loadTimeline = async () => {
    try {
      const r = await gw("GET", "timeline/home?limit=20");
      timeline.replaceChildren(...(r.posts || []).map((p) => el("div", { class: "card" }, el("strong", {}, p.author_id || ""), " ", when(p.created_at), el("p", {}, p.text))));
      if (!(r.posts || []).length) timeline.replaceChildren(el("p", { class: "muted" }, "Nothing yet: follow someone."));
    } catch (e) { timeline.replaceChildren(el("p", { class: "error" }, e.message)); }
  };
  show(el("h1", {}, "Social"), el("p", {}, `Signed in as ${me.id}`),
    el("form", { class: "row", id: "post", onsubmit: act(async (f) => { const r = await gw("POST", "posts", { text: f.text.value }); loadTimeline(); return r; }) },
      el("input", { name: "text", placeholder: "what's new?", style: { width: "30rem" } }), el("button", {}, "Post")),
    el("form", { class: "row", id: "follow", onsubmit: act((f) => gw("POST", "follows", { user_id: f.user.value })) },
      el("input", { name: "user", placeholder: "user id to follow" }), el("button", {}, "Follow")),
    el("form", { class: "row", id: "degree", onsubmit: act((f) => gw("GET", `connections/degree?from=${me.id}&to=${encodeURIComponent(f.user.value)}`)) },
      el("input", { name: "user", placeholder: "user id" }), el("button", {}, "Degree of connection")),
    el("form", { class: "row", id: "message", onsubmit: act(async (f) => {
      const c = await gw("POST", "conversations", { kind: "direct", members: [f.user.value] });
      await gw("POST", `conversations/${c.id}/messages`, { text: f.text.value });
      return gw("GET", `conversations/${c.id}/messages?limit=20`);
    }) },
      el("input", { name: "user", placeholder: "user id" }), el("input", { name: "text", placeholder: "message" }), el("button", {}, "Send")),
    out, el("h2", {}, "Home timeline ", el("button", { id: "refresh-timeline", class: "secondary", onclick: loadTimeline }, "Refresh")), timeline);
  loadTimeline();
}

// ---- routing ----

function route() {
  const h = location.hash.replace(/^#\/?/, "");
  const [path, qs] = h.split("?");
  const parts = path.split("/");
  const params = new URLSearchParams(qs || "");
  const page = parts[0] || "map";
  const render = () => {
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#/" + page);
    const pages = {
      map: pageMap, sagas: () => pageSagas(params), order: () => pageOrder(parts[1]),
      traces: pageTraces, trace: () => pageTrace(parts[1]), events: () => pageEvents(parts[1]),
      shop: () => pageShop(params), social: pageSocial, audit: pageAudit,
    };
    Promise.resolve((pages[page] || pageMap)()).catch((e) => {
      if (e.status !== 401) show(el("h1", {}, "Error"), el("p", { class: "error" }, e.message));
    });
  };
  return { page, render };
}

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  live.running = true;
  live.version = -1;
  pollState().then(() => {});
  clearInterval(live.timer);
  live.timer = setInterval(pollMetrics, 2000);
  // First paint once the state is in.
  call("GET", "/api/state").then((r) => {
    live.state = r.state;
    live.version = Math.max(live.version, r.version);
    pollMetrics();
    route().render();
  }).catch(() => {});
}

window.addEventListener("hashchange", () => route().render());
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", async () => {
    await call("POST", "/api/logout").catch(() => {});
    needLogin();
  });
  call("GET", "/api/state").then(start).catch(() => {});
});
