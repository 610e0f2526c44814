// n0m1 dashboard: plain DOM, no framework. Every value from the server goes in with
// textContent, never as HTML.
"use strict";

const TOKEN_KEY = "n0m1-token";
const state = { readsNeedToken: false, charts: {}, lastEvent: null, refreshTimer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function duration(secs) {
  if (secs === null || secs === undefined) return "-";
  secs = Math.floor(secs);
  if (secs < 60) return secs + "s";
  if (secs < 3600) return Math.floor(secs / 60) + "m" + String(secs % 60).padStart(2, "0") + "s";
  if (secs < 86400) return Math.floor(secs / 3600) + "h" + String(Math.floor(secs % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(secs / 86400) + "d" + String(Math.floor(secs % 86400 / 3600)).padStart(2, "0") + "h";
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

// Resolves with a token, asking for one in the dialog when none is stored.
function askToken(message) {
  return new Promise((resolve, reject) => {
    const dialog = document.getElementById("token-dialog");
    document.getElementById("token-error").textContent = message || "";
    const input = document.getElementById("token-input");
    input.value = "";
    dialog.onclose = () => {
      if (dialog.returnValue === "save" && input.value.trim()) {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        resolve(input.value.trim());
      } else {
        reject(new Error("no token given"));
      }
    };
    dialog.showModal();
    input.focus();
  });
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const mutation = options.method && options.method !== "GET";
  if ((mutation || state.readsNeedToken) && !token()) await askToken();
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (!mutation) state.readsNeedToken = true;
    await askToken("That token was refused; paste the one in web.token.");
    return api(path, options);
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function flash(text, isError) {
  const note = document.getElementById("note");
  if (!note) return;
  note.textContent = text;
  note.className = isError ? "error" : "muted";
}

async function act(id, action) {
  try {
    const answer = await api(`/api/v1/components/${encodeURIComponent(id)}/${action}`, { method: "POST" });
    flash(answer.message, false);
  } catch (error) {
    flash(error.message, true);
  }
  scheduleRefresh();
}

function actionButtons(c) {
  const cell = el("td", { class: "actions" });
  const button = (action, label) =>
    el("button", { type: "button", "data-action": action, "data-component": c.component_id, onclick: () => act(c.component_id, action) }, label);
  if (c.desired === "active") cell.append(button("disable", "Disable"), button("restart", "Restart"));
  else cell.append(button("enable", "Enable"));
  return cell;
}

function stateCell(actual) {
  return el("td", { class: "state state-" + actual }, actual);
}

function processTable(view) {
  const body = el("tbody");
  for (const p of [view.boot, ...view.managers]) {
    body.append(el("tr", {},
      el("td", {}, p.name), stateCell(p.state), el("td", { class: "num" }, p.pid ?? "-"),
      el("td", { class: "num" }, duration(p.uptime_secs)),
      el("td", { class: "num" }, p.heartbeat_age_secs == null ? "-" : p.heartbeat_age_secs.toFixed(1) + "s ago"),
      el("td", { class: "num" }, p.rss_kib == null ? "-" : (p.rss_kib / 1024).toFixed(1) + " MB")));
  }
  return el("table", {}, el("thead", {}, el("tr", {}, ...["process", "state", "pid", "uptime", "heartbeat", "rss"].map(h => el("th", {}, h)))), body);
}

function componentTable(components) {
  const body = el("tbody", { id: "components" });
  for (const c of components) {
    const note = c.problem || (c.waiting_for ? "waiting for " + c.waiting_for : null) || c.status_text || c.last_exit || "-";
    body.append(el("tr", { "data-component": c.component_id, "data-actual": c.actual },
      el("td", {}, el("a", { href: "/components/" + encodeURIComponent(c.component_id) }, c.component_id)),
      el("td", {}, c.manager), el("td", {}, c.desired), stateCell(c.actual),
      el("td", {}, c.pid == null ? "-" : (c.ready ? "yes" : "no")),
      el("td", { class: "num" }, c.pid ?? "-"), el("td", { class: "num" }, duration(c.uptime_secs)),
      el("td", { class: "num" }, c.restarts),
      el("td", { class: "num" }, c.rss_kib == null ? "-" : (c.rss_kib / 1024).toFixed(1) + " MB"),
      el("td", { class: "num" }, c.cpu_percent == null ? "-" : c.cpu_percent + "%"),
      el("td", {}, note), actionButtons(c)));
  }
  const heads = ["component", "manager", "desired", "actual", "ready", "pid", "uptime", "restarts", "rss", "cpu", "status / last exit", ""];
  return el("table", {}, el("thead", {}, el("tr", {}, ...heads.map(h => el("th", {}, h)))), body);
}

// Draws (or redraws) a uPlot chart; an empty series shows why instead.
function chart(container, key, title, series, missing) {
  container.setAttribute("data-points", String(series.length ? series[0].length : 0));
  const xs = series.length ? series[0] : [];
  if (!xs.length) {
    container.replaceChildren(el("h2", {}, title), el("div", { class: "na" }, "N/A: " + (missing || "no samples")));
    delete state.charts[key];
    return;
  }
  const existing = state.charts[key];
  if (existing && existing.root.isConnected && existing.series.length === series.length) {
    existing.setData(series);
    return;
  }
  container.replaceChildren(el("h2", {}, title));
  const labels = series.slice(1).map((_, i) => ({ label: (title.split(",")[i] || title).trim(), stroke: ["#2563eb", "#d97706"][i], width: 2 }));
  const opts = { width: Math.max(300, container.clientWidth - 10), height: 180, series: [{}, ...labels], scales: { x: { time: true } } };
  state.charts[key] = new uPlot(opts, series, container);
}

async function machineCharts(root) {
  const names = [["cpu_usage", "CPU usage %"], ["memory", "Memory %"], ["cpu_temperature", "CPU temperature °C"]];
  // All boxes first: the grid then gives each its column before a chart measures it.
  for (const [name] of names) {
    if (!root.querySelector(`[data-chart="${name}"]`)) root.append(el("div", { class: "chart", id: "chart-" + name, "data-chart": name }));
  }
  for (const [name, title] of names) {
    const box = root.querySelector(`[data-chart="${name}"]`);
    try {
      const answer = await api(`/api/v1/metrics/${name}`);
      const missing = name === "cpu_temperature" && !answer.points.length ? "no sensor or no samples yet" : answer.missing;
      chart(box, name, title, answer.points.length ? [answer.points.map(p => p[0]), answer.points.map(p => p[1])] : [], missing);
    } catch (error) {
      box.replaceChildren(el("h2", {}, title), el("div", { class: "na error" }, error.message));
    }
  }
}

function rowsList(rows, field) {
  if (!rows.length) return el("p", { class: "muted" }, "none yet");
  return el("ul", { class: "events" }, ...rows.map(r => el("li", {}, `${r.timestamp || r.created_timestamp || ""} ${r[field] ?? ""}`)));
}

async function modelLoop(root) {
  const tables = [["cpu_usage_summary", "CPU usage summaries"], ["memory_usage_summary", "Memory summaries"], ["cpu_temp_summary", "Temperature summaries"], ["llm_outputs", "Main model outputs"]];
  const parts = [];
  for (const [table, title] of tables) {
    const rows = await api(`/api/v1/outputs/${table}?limit=3`).catch(() => []);
    parts.push(el("h2", {}, title), rowsList(rows, "content"));
  }
  const notes = await api("/api/v1/notifications?limit=5").catch(() => []);
  parts.push(el("h2", {}, "Notifications"), rowsList(notes.map(n => Object.assign({}, n, { text: `${n.llm_id} ${n.notification_type} ${n.processed ? "processed" : "pending"}` })), "text"));
  parts.push(el("button", { type: "button", id: "send-run", onclick: async () => {
    try {
      const answer = await api("/api/v1/notifications", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ llm_id: "main_llm_processor", notification_type: "RUN" }) });
      flash(answer.message, false);
      modelLoop(root);
    } catch (error) { flash(error.message, true); }
  } }, "Send RUN to main_llm_processor"));
  root.replaceChildren(el("h2", {}, "Model loop"), ...parts);
}

async function decide(id, decision) {
  try {
    const answer = await api(`/api/v1/proposals/${id}/${decision}`, { method: "POST" });
    flash(answer.message, false);
  } catch (error) {
    flash(error.message, true);
  }
  scheduleRefresh();
}

// Open incidents with their diagnosis, and the proposals waiting for an operator.
async function incidentPanel(root) {
  const [incidents, proposals] = await Promise.all([
    api("/api/v1/incidents").catch(() => []),
    api("/api/v1/proposals").catch(() => []),
  ]);
  const parts = [el("h2", {}, "Incidents")];
  if (!incidents.length) parts.push(el("p", { class: "muted" }, "no open incident"));
  for (const i of incidents) {
    parts.push(el("div", { class: "incident", "data-incident": i.id, "data-component": i.component_id },
      el("h3", {}, `#${i.id} ${i.kind} — `, el("a", { href: "/components/" + encodeURIComponent(i.component_id) }, i.component_id)),
      el("p", { class: "diagnosis" }, i.diagnosis || i.summary),
      el("p", { class: "muted" }, `diagnosis by ${i.diagnosis_source || "rules"}; suggested: ${i.suggested_action || "none"}`)));
  }
  parts.push(el("h2", {}, "Proposed actions"));
  if (!proposals.length) parts.push(el("p", { class: "muted" }, "none waiting for approval"));
  for (const p of proposals) {
    const what = `${p.action} ${p.component_id || ""}${p.argument ? " memory=" + p.argument : ""}`;
    parts.push(el("div", { class: "proposal", "data-proposal": p.id },
      el("span", {}, `#${p.id} ${what} (from ${p.source}) `),
      el("button", { type: "button", "data-decision": "approve", onclick: () => decide(p.id, "approve") }, "Approve"),
      el("button", { type: "button", "data-decision": "reject", onclick: () => decide(p.id, "reject") }, "Reject")));
  }
  root.replaceChildren(...parts);
}

function eventLine(e) {
  return el("li", { "data-event-id": e.id }, `${e.id} ${e.timestamp} ${e.component_id} ${e.event_type}${e.pid ? " pid " + e.pid : ""}: ${e.message || ""}`);
}

async function overview() {
  const main = document.getElementById("main");
  const view = await api("/api/v1/status");
  const sys = document.getElementById("system-state");
  sys.textContent = "boot " + view.boot.state;
  let layout = document.getElementById("overview");
  if (!layout) {
    layout = el("div", { id: "overview" },
      el("p", { id: "warnings", class: "error" }),
      el("p", { id: "note", class: "muted" }),
      el("section", { id: "processes" }), el("section", { id: "component-section" }),
      el("section", { id: "incident-section" }),
      el("section", {}, el("h2", {}, "Machine"), el("div", { class: "charts", id: "machine" })),
      el("section", { id: "model-loop" }),
      el("section", {}, el("h2", {}, "Lifecycle events"), el("ul", { class: "events", id: "events" })));
    main.replaceChildren(layout);
    const events = await api("/api/v1/events?tail=50");
    const list = document.getElementById("events");
    for (const e of events.reverse()) list.append(eventLine(e));
    modelLoop(document.getElementById("model-loop"));
  }
  document.getElementById("warnings").replaceChildren(...(view.warnings || []).map(w => el("strong", {}, "Warning: " + w)));
  document.getElementById("processes").replaceChildren(el("h2", {}, "Boot, log writer and managers"), processTable(view));
  document.getElementById("component-section").replaceChildren(el("h2", {}, "Components"), componentTable(view.components));
  await incidentPanel(document.getElementById("incident-section"));
  await machineCharts(document.getElementById("machine"));
}

async function componentPage(id) {
  const main = document.getElementById("main");
  const detail = await api(`/api/v1/components/${encodeURIComponent(id)}`);
  const c = detail.component;
  document.getElementById("system-state").textContent = c.component_id;
  let layout = document.getElementById("component-page");
  if (!layout) {
    layout = el("div", { id: "component-page" },
      el("p", { id: "note", class: "muted" }),
      el("section", { id: "summary" }),
      el("section", {}, el("h2", {}, "Resources"), el("div", { class: "charts", id: "resources" })),
      el("section", {}, el("h2", {}, "Log"), el("pre", { class: "log", id: "log" })),
      el("section", {}, el("h2", {}, "Lifecycle history"), el("ul", { class: "events", id: "events" })));
    main.replaceChildren(layout);
    const tails = await api(`/api/v1/logs/${encodeURIComponent(id)}?lines=50`).catch(() => []);
    const log = document.getElementById("log");
    log.textContent = tails.map(t => `==> ${t.path} <==\n` + t.lines.join("\n")).join("\n") + "\n";
    followLog(id, log);
    const events = await api(`/api/v1/events?tail=50&component=${encodeURIComponent(id)}`);
    const list = document.getElementById("events");
    for (const e of events.reverse()) list.append(eventLine(e));
  }
  const rows = [["manager", c.manager], ["desired", c.desired], ["actual", c.actual], ["ready", c.pid == null ? "-" : (c.ready ? "yes" : "no")],
    ["pid", c.pid ?? "-"], ["uptime", duration(c.uptime_secs)], ["restarts", c.restarts], ["last exit", c.last_exit || "-"],
    ["status", c.status_text || "-"], ["waiting for", c.waiting_for || "-"], ["problem", c.problem || "-"],
    ...limitRows(c.limits), ...scheduleRows(c.schedule)];
  const table = el("table", {}, el("tbody", {}, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), k === "actual" ? stateCell(v) : el("td", {}, v)))));
  document.getElementById("summary").replaceChildren(el("h2", {}, c.component_id), table,
    el("table", {}, el("tbody", {}, el("tr", { "data-component": c.component_id, "data-actual": c.actual }, actionButtons(c)))));
  const samples = await api(`/api/v1/resources/${encodeURIComponent(id)}`).catch(() => []);
  const box = document.getElementById("resources");
  let mem = box.querySelector('[data-chart="rss"]'), cpu = box.querySelector('[data-chart="cpu"]');
  if (!mem) { mem = el("div", { class: "chart", "data-chart": "rss" }); cpu = el("div", { class: "chart", "data-chart": "cpu" }); box.append(mem, cpu); }
  const xs = samples.map(s => s.sampled_at);
  chart(mem, "rss", "RSS MB", xs.length ? [xs, samples.map(s => s.rss_bytes / 1048576)] : [], "no samples yet (the manager samples every resources.interval seconds)");
  // CPU % between consecutive samples (a drop means a process of the tree exited).
  const pct = samples.slice(1).map((s, i) => Math.max(0, (s.cpu_seconds - samples[i].cpu_seconds) / Math.max(1e-3, s.sampled_at - samples[i].sampled_at) * 100));
  chart(cpu, "cpu", "CPU %", pct.length ? [xs.slice(1), pct] : [], "needs two samples");
}

/** Its schedule and next run (`n0m1ctl schedule`), if it runs on one. */
function scheduleRows(schedule) {
  if (!schedule) return [];
  const rules = `${schedule.spec} (overlap ${schedule.overlap}, missed ${schedule.missed})`;
  return [["schedule", rules], ["next run", schedule.problem ? "not followed: " + schedule.problem : (schedule.next_run_text || "never")]];
}

/** Limits and what the component's cgroup says it uses now (`n0m1ctl limit`). */
function limitRows(limits) {
  if (!limits) return [["limits", "none"]];
  const mib = bytes => bytes == null ? null : (bytes / 1048576).toFixed(1) + " MiB";
  const use = [mib(limits.memory_bytes) && "memory " + mib(limits.memory_bytes) + (limits.memory_peak_bytes != null ? " (peak " + mib(limits.memory_peak_bytes) + ")" : ""),
    limits.cpu_seconds != null && "cpu " + limits.cpu_seconds.toFixed(1) + " s",
    limits.tasks != null && limits.tasks + " processes"].filter(Boolean);
  return [["limits", limits.summary], ["usage", use.length ? use.join(", ") : "-"], ["cgroup", limits.cgroup || "-"]];
}

function followLog(id, pre) {
  if (state.readsNeedToken) return;
  const source = new EventSource(`/api/v1/logs/${encodeURIComponent(id)}/stream`);
  source.addEventListener("log", (message) => {
    const line = JSON.parse(message.data);
    pre.textContent += line.line + "\n";
    pre.scrollTop = pre.scrollHeight;
  });
}

function refresh() {
  const path = location.pathname;
  const page = path.startsWith("/components/") ? componentPage(decodeURIComponent(path.slice("/components/".length))) : overview();
  return page.catch(error => flash(error.message, true));
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, 150);
}

function onEvent(e) {
  const list = document.getElementById("events");
  const path = location.pathname;
  const only = path.startsWith("/components/") ? decodeURIComponent(path.slice("/components/".length)) : null;
  if (list && (!only || e.component_id === only) && !list.querySelector(`[data-event-id="${e.id}"]`)) {
    list.prepend(eventLine(e));
    while (list.children.length > 200) list.lastChild.remove();
  }
  state.lastEvent = e.id;
  scheduleRefresh();
}

// Live updates: the lifecycle stream (EventSource resumes with Last-Event-ID by itself after
// a reconnect). When reads need the token, EventSource cannot send it: poll instead.
function live() {
  const badge = document.getElementById("live");
  if (state.readsNeedToken) {
    badge.textContent = "polling";
    setInterval(async () => {
      const after = state.lastEvent ?? 0;
      const events = await api(`/api/v1/events?after=${after}&limit=200`).catch(() => []);
      events.forEach(onEvent);
    }, 2000);
    return;
  }
  const source = new EventSource("/api/v1/events/stream");
  source.onopen = () => { badge.textContent = "live"; };
  source.onerror = () => { badge.textContent = "reconnecting"; };
  source.addEventListener("lifecycle", (message) => onEvent(JSON.parse(message.data)));
}

document.getElementById("token-button").addEventListener("click", () => askToken().then(refresh, () => {}));
document.getElementById("token-cancel").addEventListener("click", () => { document.getElementById("token-dialog").close("cancel"); });
fetch("/api/v1/status").then(r => {
  if (r.status === 401) state.readsNeedToken = true;
}).finally(() => {
  refresh().then(live);
  setInterval(refresh, 5000);
});
