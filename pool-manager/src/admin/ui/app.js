// Status page of the mm-gateway pool-manager. Plain JavaScript, no dependencies: every
// 2 s it reads the admin API (the same calls a script would make) and redraws. All text
// from the API goes into the DOM as text nodes, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const EVENTS_SHOWN = 50;

// ---- small helpers -------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)) + " " + units[i];
}

function seconds(s) {
  if (s === undefined || s === null) return "–";
  if (s < 1) return Math.round(s * 1000) + " ms";
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
  if (s < 3600) return Math.floor(s / 60) + "m " + Math.round(s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.round((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.round((s % 86400) / 3600) + "h";
}

function percent(x) {
  return x === undefined || x === null ? "–" : (x * 100).toFixed(x >= 0.999 || x === 0 ? 0 : 1) + "%";
}

function age(time) {
  const t = Date.parse(time);
  if (Number.isNaN(t)) return "";
  const s = Math.max(0, Math.round((Date.now() - t) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store", headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

// ---- state ---------------------------------------------------------------------------

const state = { replicas: [], models: [], more: false, events: [], summary: null, filter: "" };

async function refresh() {
  const [replicas, models, events, summary] = await Promise.all([
    getJSON("/api/v1/replicas"),
    getJSON("/api/v1/models?limit=1000"),
    getJSON("/api/v1/events?limit=" + EVENTS_SHOWN),
    getJSON("/api/v1/summary"),
  ]);
  state.replicas = replicas.replicas || [];
  state.models = models.models || [];
  state.more = Boolean(models.next);
  state.events = (events.events || []).slice().reverse();
  state.summary = summary;
}

// ---- rendering -----------------------------------------------------------------------

function renderStats() {
  const s = state.summary ? state.summary.metrics : null;
  const healthy = state.replicas.filter((r) => r.healthy).length;
  const replicasEl = document.getElementById("stat-replicas");
  replicasEl.textContent = healthy + " / " + state.replicas.length;
  replicasEl.className = "value" + (healthy < state.replicas.length ? " bad" : "");
  const loaded = state.models.filter((m) => m.state === "Loaded").length;
  document.getElementById("stat-models").textContent =
    loaded + " / " + state.models.length + (state.more ? "+" : "");
  const count = (s) => state.models.filter((m) => m.state === s).length;
  document.getElementById("stat-models-sub").textContent =
    count("Pending") + " cold · " + count("Loading") + " loading · " + count("Failed") + " failed";
  if (!s) return;
  document.getElementById("stat-hit-rate").textContent = percent(s.hitRate);
  document.getElementById("stat-requests").textContent =
    s.requests + " requests · " + s.routeCalls.miss + " cold";
  document.getElementById("stat-load").textContent =
    seconds(s.loadSeconds.mean) + " · " + seconds(s.loadSeconds.p99);
  document.getElementById("stat-loads").textContent = s.loads + " loads";
  document.getElementById("stat-cold").textContent =
    seconds(s.coldWaitSeconds.p50) + " · " + seconds(s.coldWaitSeconds.p99);
  document.getElementById("stat-cold-count").textContent = s.coldWaitSeconds.count + " cold requests";
  const ev = document.getElementById("stat-evictions");
  ev.textContent = s.evictions + " · " + s.loadFailures;
  ev.className = "value" + (s.loadFailures > 0 ? " warn" : "");
  document.getElementById("stat-mass").textContent =
    s.massEvictions + " mass evictions · " + s.placementFailures + " placement failures";
  const order = state.summary.eviction;
  document.getElementById("stat-eviction-order").textContent = !order ? "" :
    "victim order: " + order.policy +
    (order.aging ? " · " + order.aging + " · half-life " + order.halfLifeRequests + " requests" : "");
}

// The copies on each replica (the replica view lists every model there), with their state
// and size from the models' views where the page has them (the first 1000 models).
function copiesByReplica() {
  const byName = new Map(state.models.map((m) => [m.name, m]));
  const out = new Map();
  for (const r of state.replicas) {
    const list = (r.models || []).map((name) => {
      const m = byName.get(name) || { name };
      const copy = (m.copies || []).find((c) => c.replica === r.name);
      return {
        model: m,
        state: copy ? copy.state : "Loaded",
        size: Math.max(m.memory || 0, m.measuredMemory || 0),
        gpu: Math.max(m.gpuMemory || 0, m.measuredGpuMemory || 0),
      };
    });
    list.sort((a, b) => b.size - a.size || a.model.name.localeCompare(b.model.name));
    out.set(r.name, list);
  }
  return out;
}

function bar(label, used, capacity, copies, sizeOf, marks) {
  if (!capacity) {
    return h("div", { class: "bar-row none" },
      h("div", { class: "bar-label" }, h("span", { text: label }), h("span", { class: "muted", text: "none" })));
  }
  const fraction = used / capacity;
  const track = h("div", { class: "bar", role: "img", "aria-label": label + " " + bytes(used) + " of " + bytes(capacity) });
  let offset = 0;
  copies.forEach((c, i) => {
    const size = sizeOf(c);
    if (!size) return;
    const seg = h("div", { class: "seg state-" + c.state + " shade-" + (i % 3), title: c.model.name + " · " + bytes(size) + " · " + c.state });
    seg.style.left = (Math.min(offset / capacity, 1) * 100) + "%";
    seg.style.width = (Math.min(size / capacity, 1 - Math.min(offset / capacity, 1)) * 100) + "%";
    offset += size;
    track.append(seg);
  });
  if (marks) {
    for (const [name, value] of [["low", marks.low], ["high", marks.high]]) {
      const m = h("div", { class: "mark mark-" + name, title: name + " watermark " + percent(value) });
      m.style.left = (value * 100) + "%";
      track.append(m);
    }
  }
  const over = marks && fraction > marks.high;
  return h("div", { class: "bar-row" },
    h("div", { class: "bar-label" },
      h("span", { text: label }),
      h("span", { class: over ? "warn" : "" }, bytes(used) + " / " + bytes(capacity) + " · " + percent(fraction))),
    track);
}

function renderReplicas() {
  const root = document.getElementById("replicas");
  const copies = copiesByReplica();
  const marks = state.summary ? state.summary.watermarks : null;
  const cards = state.replicas.map((r) => {
    const list = copies.get(r.name) || [];
    const badges = [
      h("span", { class: "badge " + (r.healthy ? "ok" : "bad"), text: r.healthy ? "healthy" : "unhealthy" }),
      r.draining ? h("span", { class: "badge drain", text: "draining" }) : null,
    ];
    const chips = list.length
      ? list.map((c) => h("span", {
          class: "chip state-" + c.state,
          "data-placement": r.name + "/" + c.model.name,
          "data-model": c.model.name,
          "data-state": c.state,
          title: c.model.name + " · " + c.state + " · " + bytes(c.size),
        }, h("span", { class: "chip-name", text: c.model.name }), c.size ? h("span", { class: "chip-size", text: bytes(c.size) }) : null))
      : [h("span", { class: "muted small", text: "no models" })];
    return h("article", { class: "replica" + (r.healthy ? "" : " down") + (r.draining ? " draining" : ""), id: "replica-" + r.name, "data-replica": r.name },
      h("header", {},
        h("div", { class: "replica-name" }, h("h3", { text: r.name }), ...badges),
        h("div", { class: "muted small", text: (r.address || r.url) + " · " + r.inFlight + " in flight · " + list.length + " models" })),
      bar("Memory", r.usedBytes, r.capacityBytes, list, (c) => c.size, marks),
      bar("GPU memory", r.gpuUsedBytes, r.gpuCapacityBytes, list, (c) => c.gpu, marks),
      h("div", { class: "chips" }, chips));
  });
  root.replaceChildren(...(cards.length ? cards : [h("p", { class: "muted", text: "no replicas configured" })]));
}

const STATE_LABEL = { Pending: "cold", Loading: "loading", Loaded: "loaded", Failed: "failed" };

function renderModels() {
  const body = document.getElementById("models-body");
  const f = state.filter.trim().toLowerCase();
  const rows = state.models
    .filter((m) => !f || m.name.toLowerCase().includes(f) || (m.replicas || []).some((r) => r.includes(f)))
    .map((m) => h("tr", { "data-model": m.name, "data-state": m.state },
      h("td", { class: "name" }, h("span", { text: m.name }),
        m.minCopies > 0 ? h("span", { class: "tag", title: "pinned: minCopies " + m.minCopies, text: "pinned" }) : null),
      h("td", {}, h("span", { class: "badge state-" + m.state, text: STATE_LABEL[m.state] || m.state })),
      h("td", { class: "small", text: (m.copies || []).map((c) => c.state === "Loaded" ? c.replica : c.replica + " (" + c.state.toLowerCase() + ")").join(", ") || "–" }),
      h("td", { class: "num", text: bytes(Math.max(m.memory || 0, m.measuredMemory || 0)) + (m.gpuMemory ? " + " + bytes(m.gpuMemory) + " GPU" : "") }),
      h("td", { class: "num", text: (m.requestRate || 0).toFixed(1) }),
      h("td", { class: "num", text: String(m.inFlight || 0) }),
      h("td", { class: "num", text: m.idleSeconds === null || m.idleSeconds === undefined ? "never used" : seconds(m.idleSeconds) }),
      h("td", { class: "error small", title: m.lastError || "", text: m.lastError || "" })));
  body.replaceChildren(...(rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted", text: state.models.length ? "no model matches" : "no models registered" }))]));
  document.getElementById("models-more").textContent = state.more ? "showing the first 1000 models" : "";
}

function eventDetail(e) {
  const parts = [];
  if (e.bytes !== undefined) parts.push(bytes(e.bytes) + (e.gpuBytes ? " + " + bytes(e.gpuBytes) + " GPU" : ""));
  if (e.seconds !== undefined) parts.push(e.kind === "evicted" ? "loaded for " + seconds(e.seconds) : seconds(e.seconds));
  if (e.reason) parts.push(e.reason);
  return parts.join(" · ");
}

function renderEvents() {
  const list = document.getElementById("events");
  const items = state.events.map((e) => h("li", { class: "event kind-" + e.kind, "data-seq": e.seq },
    h("span", { class: "when", title: e.time, text: age(e.time) }),
    h("span", { class: "kind", text: e.kind.replace(/_/g, " ") }),
    h("span", { class: "what" },
      e.model ? h("b", { text: e.model }) : null,
      e.model && e.replica ? " on " : null,
      e.replica ? h("span", { class: "replica-ref", text: e.replica }) : null),
    h("span", { class: "detail muted", text: eventDetail(e) })));
  list.replaceChildren(...(items.length ? items : [h("li", { class: "muted", text: "no events yet" })]));
}

function setStatus(ok, text) {
  const el = document.getElementById("status");
  el.dataset.state = ok ? "live" : "down";
  document.getElementById("status-text").textContent = text;
}

let timer = null;

async function tick() {
  clearTimeout(timer);
  try {
    await refresh();
    renderStats();
    renderReplicas();
    renderModels();
    renderEvents();
    setStatus(true, "live · updated " + new Date().toLocaleTimeString());
  } catch (err) {
    setStatus(false, "cannot reach the pool-manager: " + err.message);
  }
  timer = setTimeout(tick, REFRESH_MS);
}

document.getElementById("filter").addEventListener("input", (e) => {
  state.filter = e.target.value;
  renderModels();
});
document.addEventListener("visibilitychange", () => { if (!document.hidden) tick(); });
tick();
