// The tollgate dashboard: reads the admin API with this browser's session
// every second and renders it with DOM calls only (never HTML strings), so
// nothing a plugin or license names can run as code here.
"use strict";

const state = { role: null, csrf: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replaceRows(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
}

function seats(s) {
  return s === "unlimited" || s == null ? "unlimited" : String(s.counted ?? s);
}

function sum(counts) {
  return Object.values(counts || {}).reduce((a, b) => a + b, 0);
}

function reasons(counts) {
  const parts = Object.entries(counts || {}).filter(([, n]) => n > 0).map(([r, n]) => `${r} ${n}`);
  return parts.length ? parts.join(", ") : "0";
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function expiry(secs) {
  if (secs == null) return "never";
  const left = secs * 1000 - Date.now();
  if (left <= 0) return "expired";
  const days = Math.floor(left / 86400000);
  const hours = Math.floor((left % 86400000) / 3600000);
  return days > 0 ? `in ${days}d ${hours}h` : `in ${hours}h ${Math.floor((left % 3600000) / 60000)}m`;
}

function ms(v) {
  return v == null ? "–" : `${v.toFixed(1)} ms`;
}

async function api(path, options) {
  const init = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
  if (init.method && init.method !== "GET") init.headers["x-csrf-token"] = state.csrf;
  const r = await fetch(path, init);
  if (r.status === 401) {
    location.assign("/ui/login");
    throw new Error("logged out");
  }
  const text = await r.text();
  const body = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error((body && body.message) || `${path}: HTTP ${r.status}`);
  return body;
}

// Shows `message` (none: hides it); a sticky one (a failed action) stays
// until the next action, while a failed refresh clears at the next good one.
function problem(message, sticky) {
  const p = document.getElementById("problem");
  p.textContent = message || "";
  p.hidden = !message;
  p.dataset.sticky = sticky ? "1" : "";
}

async function act(question, path, options) {
  if (!window.confirm(question)) return;
  try {
    await api(path, Object.assign({ method: "POST" }, options || {}));
    problem("");
    await refresh();
  } catch (e) {
    problem(e.message, true);
  }
}

function renderLicenses(licenses) {
  replaceRows("licenses", licenses.map((l) => el("tr", { "data-license": l.id },
    el("td", {}, l.id, l.revoked ? el("span", { class: "firing" }, " revoked") : ""),
    el("td", { class: "seats" }, seats(l.seats)),
    el("td", { class: "in-use" }, l.counters.in_use),
    el("td", {}, l.counters.peak),
    el("td", {}, l.waiting),
    el("td", {}, reasons(l.counters.denials)),
    el("td", {}, expiry(l.expires_at)),
    el("td", { class: "admin-only" }, l.revoked ? "" : el("button", {
      class: "danger revoke",
      onclick: () => act(`Revoke license ${l.id}? Calls holding it now are withheld and new ones refused.`,
        `/v1/admin/licenses/${encodeURIComponent(l.id)}/revoke`),
    }, "Revoke")))));
  replaceRows("grants", licenses.flatMap((l) => (l.grants || []).map((g) => el("tr", {},
    el("td", {}, l.id), el("td", { title: g.id }, g.id.slice(0, 12)), el("td", {}, seats(g.terms.seats)),
    el("td", {}, g.counters.in_use), el("td", {}, g.counters.peak),
    el("td", { class: g.in_force ? "" : "firing" }, g.revoked ? "revoked" : g.in_force ? "in force" : "not in force"),
    el("td", {}, expiry(g.terms.expires_at))))));
  const holders = licenses.flatMap((l) => (l.holders || []).map((h) => el("tr", {},
    el("td", {}, l.id), el("td", {}, h.seat), el("td", {}, h.plugin), el("td", {}, h.invocation),
    el("td", {}, h.lease == null ? "sent back" : h.lease), el("td", {}, ago(h.since_ms)))));
  replaceRows("holders", holders.length ? holders : [el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No seat is held."))]);
}

function renderPlugins(plugins, latency) {
  replaceRows("plugins", plugins.map((p) => {
    const l = (latency || {})[p.name] || {};
    return el("tr", { "data-plugin": p.name },
      el("td", {}, p.name), el("td", {}, p.invocations), el("td", {}, p.ok), el("td", {}, p.unlicensed),
      el("td", {}, p.failed), el("td", {}, ms(l.p50_ms)), el("td", {}, ms(l.p95_ms)), el("td", {}, ms(l.p99_ms)),
      el("td", { class: "admin-only" }, el("button", {
        onclick: () => act(`Reload plugin ${p.name} from its component file?`,
          `/v1/admin/plugins/${encodeURIComponent(p.name)}/reload`),
      }, "Reload")));
  }));
}

// The chart's slots, oldest first: the last 48 hours or 30 days (UTC),
// labelled as the usage API labels them.
function slots(per) {
  const now = Date.now();
  if (per === "hour") {
    return Array.from({ length: 48 }, (_, i) => new Date(now - (47 - i) * 3600000).toISOString().slice(0, 13) + ":00Z");
  }
  return Array.from({ length: 30 }, (_, i) => new Date(now - (29 - i) * 86400000).toISOString().slice(0, 10));
}

function fillSelect(id, values) {
  const select = document.getElementById(id);
  const have = new Set([...select.options].map((o) => o.value));
  for (const v of values) if (!have.has(v)) select.append(el("option", { value: v }, v));
}

function renderUsage(rows, per) {
  const license = document.getElementById("usage-license").value;
  const plugin = document.getElementById("usage-plugin").value;
  const totals = new Map();
  for (const r of rows) {
    if ((license && r.license_id !== license) || (plugin && r.plugin !== plugin)) continue;
    totals.set(r.day, (totals.get(r.day) || 0) + r.checkouts);
  }
  const series = slots(per).map((label) => [label, totals.get(label) || 0]);
  const max = Math.max(1, ...series.map(([, n]) => n));
  const width = 600 / series.length;
  const svg = document.getElementById("usage");
  svg.replaceChildren(...series.map(([label, n], i) => {
    const h = n > 0 ? Math.max(2, (n / max) * 150) : 2;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", String(i * width + 1));
    rect.setAttribute("y", String(160 - h));
    rect.setAttribute("width", String(Math.max(1, width - 2)));
    rect.setAttribute("height", String(h));
    if (n === 0) rect.setAttribute("class", "empty");
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${label}: ${n}`;
    rect.append(title);
    return rect;
  }));
  const total = series.reduce((a, [, n]) => a + n, 0);
  document.getElementById("usage-legend").textContent =
    `${series[0][0]} to ${series[series.length - 1][0]} (UTC): ${total} checkouts, at most ${max} ${per === "hour" ? "an hour" : "a day"}`;
}

function renderAlerts(view) {
  const firing = view.firing || [];
  document.getElementById("alerts-section").hidden = firing.length === 0;
  document.getElementById("alerts").replaceChildren(...firing.map((a) =>
    el("li", { class: "firing" }, `${a.license_id}: ${a.alert} — ${a.detail} (since ${ago(a.since_ms)})`)));
  replaceRows("deliveries", (view.deliveries || []).slice(0, 10).map((d) => el("tr", {},
    el("td", {}, d.id), el("td", {}, new Date(d.created_ms).toLocaleString()), el("td", {}, d.attempts),
    el("td", {}, d.delivered_ms ? "delivered" : `waiting${d.last_error ? ": " + d.last_error : ""}`))));
}

function renderAudit(audit) {
  const line = document.getElementById("audit");
  const problems = document.getElementById("audit-problems");
  if (!audit) {
    line.textContent = "The first check of the ledger's hash chain is running.";
    problems.replaceChildren();
    return;
  }
  const when = new Date(audit.at_ms).toLocaleString();
  const full = audit.full_at_ms ? new Date(audit.full_at_ms).toLocaleString() : "not yet";
  line.textContent = audit.ok
    ? `Verified: every row up to ${audit.verified_to} (checked ${when}; whole chain checked ${full}).`
    : `PROBLEMS found (checked ${when}); run tollgate audit verify for all of them.`;
  line.className = audit.ok ? "muted" : "firing";
  problems.replaceChildren(...(audit.problems || []).map((p) => el("li", {}, p)));
}

// Usage is read from the ledger's rows, so it is fetched every 30 s (and
// when its filters change), not on every tick: hourly totals move slowly.
const USAGE_EVERY_MS = 30000;
let usageAt = 0;

async function refreshUsage() {
  const per = document.getElementById("usage-per").value;
  const since = Math.floor(Date.now() / 1000) - (per === "hour" ? 48 * 3600 : 30 * 86400);
  usageAt = Date.now();
  renderUsage((await api(`/v1/admin/usage?per=${per}&since=${since}`)) || [], per);
}

async function refresh() {
  const [status, alerts] = await Promise.all([
    api("/v1/admin/status"), api("/v1/admin/alerts"),
    Date.now() - usageAt >= USAGE_EVERY_MS ? refreshUsage() : null,
  ]);
  renderLicenses(status.host.licenses);
  renderPlugins(status.host.plugins, status.latency);
  renderAlerts(alerts);
  renderAudit(status.audit);
  fillSelect("usage-license", status.host.licenses.map((l) => l.id));
  fillSelect("usage-plugin", status.host.plugins.map((p) => p.name));
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

async function install(event) {
  event.preventDefault();
  const file = document.getElementById("license-file").files[0];
  if (!file) return problem("Choose a license file first.");
  await act(`Install the license file ${file.name}?`, "/v1/admin/licenses", { body: await file.text() });
}

async function start() {
  const session = await api("/ui/session");
  state.role = session.role;
  state.csrf = session.csrf;
  document.getElementById("role").textContent = session.role;
  document.body.classList.toggle("viewer", session.role !== "admin");
  document.getElementById("install").addEventListener("submit", install);
  for (const id of ["usage-per", "usage-license", "usage-plugin"]) {
    document.getElementById(id).addEventListener("change", () => refreshUsage().catch((e) => problem(e.message)));
  }
  const tick = async () => {
    try {
      await refresh();
      if (!document.getElementById("problem").dataset.sticky) problem("");
    } catch (e) {
      problem(e.message);
    }
  };
  await tick();
  setInterval(tick, 1000);
}

start().catch((e) => problem(e.message));
