// The operator's page: polls /queue/status about once a second with the key typed in (kept in this tab's
// sessionStorage only, sent as a Bearer token) and draws queue depth timelines, deployment usage and a job
// lookup. No secret is ever written into the page.
"use strict";

const STORE = "llm-scheduler-key";
const HISTORY = 120; // samples kept per group (about two minutes)
const COLORS = ["#3867d6", "#b3261e", "#1d7a3c", "#9a5b00", "#6c3fb5", "#0a7d8c", "#5b6470", "#c2185b"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4", "12 2"];
const samples = new Map(); // group -> [{t, depths: Map(priority -> waiting)}]
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, String(v));
    else node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function key() { return sessionStorage.getItem(STORE); }

function secs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function num(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"); }

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: `Bearer ${key()}` }, cache: "no-store" });
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const msg = body && body.error && body.error.message ? body.error.message : `HTTP ${r.status}`;
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return body;
}

function showError(text) {
  const e = $("error");
  e.hidden = !text;
  e.textContent = text || "";
}

function loggedIn(yes) {
  $("login").hidden = yes;
  $("logout").hidden = !yes;
}

async function refresh() {
  if (!key()) return;
  try {
    const status = await api("/queue/status");
    showError("");
    render(status);
  } catch (e) {
    if (e.status === 401) {
      logout();
      showError("The key was refused. Log in again.");
    } else {
      showError(`Could not read /queue/status: ${e.message}`);
    }
  }
}

function render(status) {
  const when = new Date(status.now_ms || Date.now());
  $("meta").textContent = `backend ${status.backend} · updated ${when.toLocaleTimeString("en-GB")}` +
    (status.scope === "key" ? " · this key's view" : ` · window ${status.usage_window_secs} s`);
  $("key-section").hidden = status.scope !== "key";
  $("queues-section").hidden = status.scope === "key";
  $("deployments-section").hidden = status.scope === "key";
  if (status.scope === "key") {
    renderKey(status.key);
    return;
  }
  renderQueues(status.groups, status.now_ms || Date.now());
  renderDeployments(status.deployments);
}

function renderKey(k) {
  const dl = $("key-view");
  dl.replaceChildren();
  const row = (name, value) => dl.append(el("dt", {}, name), el("dd", {}, value));
  row("Token (SHA-256)", k.token);
  if (k.key_alias) row("Alias", k.key_alias);
  row("In flight", `${num(k.in_flight)}${k.max_parallel_requests ? " / " + num(k.max_parallel_requests) : ""}`);
  row("rpm", `${num(k.rpm_used)}${k.rpm_limit ? " / " + num(k.rpm_limit) : ""}`);
  row("tpm", `${num(k.tpm_used)}${k.tpm_limit ? " / " + num(k.tpm_limit) : ""}`);
  row("Models", k.models && k.models.length ? k.models.join(", ") : "all");
}

function renderQueues(groups, now) {
  const box = $("queues");
  box.replaceChildren();
  if (!groups.length) box.append(el("p", { class: "muted" }, "No model groups."));
  for (const g of groups) {
    const depths = new Map(g.by_priority.map((b) => [b.priority, b.waiting]));
    const h = samples.get(g.model_group) || [];
    h.push({ t: now, depths });
    while (h.length > HISTORY) h.shift();
    samples.set(g.model_group, h);
    const card = el("article", { class: "group", "data-group": g.model_group, "data-depth": g.depth });
    card.append(el("h3", {}, g.model_group));
    card.append(el("p", { class: "figures" },
      el("span", {}, "waiting ", el("b", { class: "depth" }, num(g.depth))),
      el("span", {}, "oldest ", el("b", { class: "oldest" }, secs(g.oldest_wait_secs))),
      el("span", {}, "admitted ", el("b", {}, `${g.admitted_per_sec.toFixed(2)}/s`)),
      el("span", {}, "replicas ", el("b", {}, num(g.live_replicas))),
      el("span", {}, "jobs ", el("b", {}, `${num(g.jobs.queued)} queued, ${num(g.jobs.running)} running`))));
    card.append(timeline(h));
    const table = el("table", { class: "bands" },
      el("thead", {}, el("tr", {}, el("th", {}, "Priority"), el("th", {}, "Waiting"), el("th", {}, "Oldest wait"))));
    const body = el("tbody");
    if (!g.by_priority.length) body.append(el("tr", {}, el("td", { colspan: 3, class: "muted" }, "Nobody waits.")));
    for (const b of g.by_priority) {
      body.append(el("tr", { "data-priority": b.priority, "data-waiting": b.waiting },
        el("td", {}, b.priority), el("td", { class: "waiting" }, num(b.waiting)), el("td", {}, secs(b.oldest_wait_secs))));
    }
    table.append(body);
    card.append(table);
    if (g.more_priorities) card.append(el("p", { class: "muted" }, "More priorities wait than are listed (counted in the total)."));
    const grants = Object.entries(g.grants_pending_by_replica || {});
    if (grants.length) {
      card.append(el("p", { class: "muted" }, "Grants not yet taken: " + grants.map(([r, n]) => `${r.slice(0, 8)}… ${n}`).join(", ")));
    }
    box.append(card);
  }
}

function timeline(points) {
  const W = 360, H = 100, PAD = 18;
  const s = svg("svg", { class: "timeline", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const priorities = [...new Set(points.flatMap((x) => [...x.depths.keys()]))].sort((a, b) => a - b).slice(0, COLORS.length);
  const max = Math.max(1, ...points.flatMap((x) => [...x.depths.values()]));
  s.setAttribute("aria-label", `queue depth over the last ${points.length} seconds, by priority; at most ${max}`);
  s.append(svg("line", { x1: PAD, y1: H - PAD, x2: W, y2: H - PAD, stroke: "#d5dae0" }));
  const top = svg("text", { x: 2, y: 10 });
  top.textContent = String(max);
  const zero = svg("text", { x: 2, y: H - PAD });
  zero.textContent = "0";
  s.append(top, zero);
  // The newest sample at the right edge; a second per step.
  const x = (i) => PAD + ((W - PAD) * (HISTORY - points.length + i)) / (HISTORY - 1);
  const y = (v) => (H - PAD) - (H - PAD - 12) * (v / max);
  priorities.forEach((p, k) => {
    const line = points.map((smp, i) => `${x(i).toFixed(1)},${y(smp.depths.get(p) || 0).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { points: line, fill: "none", stroke: COLORS[k], "stroke-width": 2, "stroke-dasharray": DASHES[k], "vector-effect": "non-scaling-stroke" }));
    const last = points[points.length - 1];
    if (last) s.append(svg("circle", { cx: x(points.length - 1).toFixed(1), cy: y(last.depths.get(p) || 0).toFixed(1), r: 2.5, fill: COLORS[k] }));
  });
  const wrap = el("div");
  wrap.append(s);
  const legend = el("div", { class: "legend" });
  priorities.forEach((p, k) => {
    const swatch = el("i", { style: `border-top: 3px ${DASHES[k] ? "dashed" : "solid"} ${COLORS[k]}` });
    legend.append(el("span", {}, swatch, `priority ${p}`));
  });
  wrap.append(legend);
  return wrap;
}

function usage(used, limit, label) {
  const full = limit !== null && limit !== undefined && used >= limit;
  const cell = el("td", { class: `usage${full ? " full" : ""}`, "data-label": label });
  if (limit === null || limit === undefined) {
    cell.append(el("small", {}, `${num(used)} (no limit)`));
    return cell;
  }
  const pct = Math.min(100, limit > 0 ? (100 * used) / limit : 100);
  const bar = el("div", { class: "bar", role: "meter", "aria-valuemin": 0, "aria-valuemax": limit, "aria-valuenow": used, "aria-label": `${label} ${used} of ${limit}` });
  bar.append(el("span", { style: `width: ${pct.toFixed(1)}%` }));
  cell.append(bar, el("small", {}, `${num(used)} / ${num(limit)}${full ? " (at limit)" : ""}`));
  return cell;
}

function renderDeployments(deployments) {
  const body = $("deployments").querySelector("tbody");
  body.replaceChildren();
  for (const d of deployments) {
    const state = el("td", { class: "state", "data-label": "State" });
    if (d.cooling_down) state.append(el("span", { class: "badge cooling" }, `cooling down ${secs(d.cooldown_remaining_secs)}`));
    for (const l of d.at_limit) state.append(el("span", { class: "badge limit" }, `at ${l} limit`));
    if (!d.cooling_down && !d.at_limit.length) state.append(el("span", { class: "badge ok" }, "ok"));
    const latency = d.latency_ms_per_token === null ? "–" : `${d.latency_ms_per_token.toFixed(1)} ms/token`;
    body.append(el("tr", { "data-deployment": d.id, "data-at-limit": d.at_limit.join(","), "data-cooling": d.cooling_down },
      el("td", { "data-label": "Deployment" }, d.id),
      el("td", { "data-label": "Group" }, d.model_group),
      usage(d.rpm_used, d.rpm_limit, "rpm"),
      usage(d.tpm_used, d.tpm_limit, "tpm"),
      usage(d.in_flight, d.max_parallel_requests, "in flight"),
      state,
      el("td", { "data-label": "Failures" }, `${num(d.failures_in_window)} of ${num(d.failures_in_window + d.successes_in_window)}`),
      el("td", { "data-label": "Latency" }, latency)));
  }
}

async function lookupJob(id) {
  const out = $("job");
  out.replaceChildren();
  if (!id) return;
  try {
    const job = await api(`/queue/response/${encodeURIComponent(id)}`);
    const dl = el("dl", { id: "job-view" });
    for (const field of ["id", "status", "status_code", "position", "eta", "model", "attempts", "created_at", "started_at", "finished_at"]) {
      if (job[field] !== undefined && job[field] !== null) dl.append(el("dt", {}, field), el("dd", {}, String(job[field])));
    }
    out.append(dl);
    const rest = job.result || job.error;
    if (rest) out.append(el("pre", {}, JSON.stringify(rest, null, 2)));
  } catch (e) {
    out.append(el("p", { role: "alert" }, e.status === 404 ? "No such job (or not yours)." : `Lookup failed: ${e.message}`));
  }
}

function start() {
  loggedIn(true);
  refresh();
  if (timer === null) timer = setInterval(refresh, 1000);
}

function logout() {
  sessionStorage.removeItem(STORE);
  if (timer !== null) clearInterval(timer);
  timer = null;
  samples.clear();
  loggedIn(false);
  $("meta").textContent = "not logged in";
}

document.addEventListener("DOMContentLoaded", () => {
  // A key handed over in the fragment (#key=...) never reaches the server; it is moved to sessionStorage
  // and removed from the address bar at once.
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("key")) {
    sessionStorage.setItem(STORE, fragment.get("key"));
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = $("key").value.trim();
    $("key").value = "";
    if (!value) return;
    sessionStorage.setItem(STORE, value);
    start();
  });
  $("logout").addEventListener("click", () => { logout(); showError(""); });
  $("job-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    lookupJob($("job-id").value.trim());
  });
  if (key()) start(); else loggedIn(false);
});
